import pytest
import torch

from zoomorph.data.augment import (
    SEED_TRANSFORMS,
    build_augment,
    dihedral,
    dihedral_per_image,
    inverse_dihedral,
    kaggle_augment,
    scale_augment,
    seed_augment,
    sky_level,
    sky_sigma,
    survey_augment,
    translate,
    zoom,
)

NO_CHANGE = dict(rotation=0.0, shift=0.0, zoom_range=(1.0, 1.0), flip=False, colour=0.0)


def images(n=6, side=16, seed=0):
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def blob(radius: float, side=64, sky=0.1, level=0.9):
    """A centred disc of `radius` px on a flat sky, (1, 3, side, side)."""
    centre = (side - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(side) - centre, torch.arange(side) - centre, indexing="ij")
    disc = ((yy**2 + xx**2) <= radius**2).float()
    return (sky + (level - sky) * disc).expand(1, 3, side, side).clone()


def radius_of(x, threshold=0.5):
    """Radius of the bright region, from its area."""
    area = (x[0, 0] > threshold).sum().item()
    return (area / torch.pi) ** 0.5


def test_dihedral_quarter_turn_matches_rot90_per_image():
    x = images()
    expected = torch.stack([torch.rot90(image, 1, dims=(1, 2)) for image in x])
    assert torch.equal(dihedral(x, 1), expected)


def test_dihedral_transforms_are_distinct_and_form_the_group():
    x = images(n=1)
    outs = [dihedral(x, k) for k in range(8)]
    for i in range(8):
        for j in range(i + 1, 8):
            assert not torch.equal(outs[i], outs[j])
    for k in range(8):
        assert torch.equal(dihedral(dihedral(x, k), inverse_dihedral(k)), x)
        for j in range(8):  # closed under composition
            assert any(torch.equal(dihedral(outs[k], j), out) for out in outs)
    assert torch.equal(dihedral(x, 4), x.flip(-1)) and torch.equal(dihedral(x, 6), x.flip(-2))


def test_dihedral_rejects_bad_index():
    with pytest.raises(ValueError):
        dihedral(images(), 8)


def test_dihedral_per_image_applies_each_images_own_transform():
    x = (images(n=8) * 255).to(torch.uint8)
    ks = torch.tensor([3, 0, 7, 1, 1, 5, 2, 6])
    out = dihedral_per_image(x, ks)
    assert out.dtype == torch.uint8
    for image, result, k in zip(x, out, ks.tolist()):
        assert torch.equal(result, dihedral(image, k))


def test_seed_augment_gives_each_image_one_of_the_five_transforms():
    x = images(n=64)
    out = seed_augment(x, torch.Generator().manual_seed(1))
    used = set()
    for image, result in zip(x, out):
        matches = [k for k in SEED_TRANSFORMS if torch.equal(result, dihedral(image, k))]
        assert len(matches) == 1
        used.add(matches[0])
    assert used == set(SEED_TRANSFORMS)


@pytest.mark.parametrize("augment", [kaggle_augment, scale_augment])
def test_random_affine_keeps_shape_dtype_and_range(augment):
    x = images(n=8, side=32)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, x, atol=0.05)
    as_bytes = augment((x * 255).to(torch.uint8), torch.Generator().manual_seed(0))
    assert as_bytes.dtype == torch.uint8 and as_bytes.shape == x.shape


def test_kaggle_augment_is_reproducible_with_a_seeded_generator():
    x = images(n=8, side=32)
    first = kaggle_augment(x, torch.Generator().manual_seed(5))
    again = kaggle_augment(x, torch.Generator().manual_seed(5))
    other = kaggle_augment(x, torch.Generator().manual_seed(6))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_kaggle_augment_without_change_is_identity():
    x = images(n=4, side=32)
    assert torch.allclose(kaggle_augment(x, **NO_CHANGE), x, atol=1e-5)


def test_kaggle_augment_fixed_zoom_matches_zoom():
    x = blob(10)
    fixed = {**NO_CHANGE, "zoom_range": (0.5, 0.5)}
    assert torch.allclose(kaggle_augment(x, **fixed), zoom(x, 0.5), atol=1e-5)


def test_kaggle_augment_rotation_keeps_a_centred_disc():
    x = blob(12).expand(8, 3, 64, 64)
    out = kaggle_augment(x, torch.Generator().manual_seed(0), **{**NO_CHANGE, "rotation": 180.0})
    assert torch.allclose(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=2e-3)


def test_kaggle_augment_flip_mirrors_some_images_and_keeps_others():
    x = images(n=16, side=32)
    out = kaggle_augment(x, torch.Generator().manual_seed(0), **{**NO_CHANGE, "flip": True})
    mirrored = [torch.allclose(o, i.flip(-1), atol=1e-5) for o, i in zip(out, x)]
    kept = [torch.allclose(o, i, atol=1e-5) for o, i in zip(out, x)]
    assert all(m != k for m, k in zip(mirrored, kept))
    assert any(mirrored) and any(kept)


def test_kaggle_augment_colour_scales_each_channel_by_one_factor():
    x = images(n=4, side=32) * 0.5  # dim enough that no scaled pixel clips at 1
    out = kaggle_augment(x, torch.Generator().manual_seed(0), **{**NO_CHANGE, "colour": 0.1})
    gains = out / x
    per_channel = gains.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(gains, per_channel.expand_as(gains), atol=1e-4)
    assert not torch.allclose(per_channel, torch.ones_like(per_channel), atol=1e-3)


def test_zoom_by_one_is_identity():
    x = images(side=32)
    assert torch.allclose(zoom(x, 1.0), x, atol=1e-5)


@pytest.mark.parametrize("factor", [0.5, 1.5])
def test_zoom_scales_a_centred_blob(factor):
    out = zoom(blob(12), factor)
    assert radius_of(out) == pytest.approx(12 * factor, rel=0.1)


def test_zoom_out_fills_the_frame_with_sky_not_a_reflection():
    x = blob(12, sky=0.1)
    out = zoom(x, 0.5)
    border = torch.cat([out[..., :8, :].flatten(), out[..., -8:, :].flatten(),
                        out[..., :, :8].flatten(), out[..., :, -8:].flatten()])
    assert torch.allclose(border, torch.tensor(0.1), atol=1e-5)
    assert torch.allclose(sky_level(x).flatten(), torch.tensor(0.1))


def test_sky_level_is_the_border_median_per_image_and_channel():
    x = torch.zeros(2, 3, 8, 8)
    x[0, 1] = 0.3
    x[1, 2] = 0.7
    x[:, :, 3:5, 3:5] = 1.0  # the galaxy does not count
    assert torch.equal(sky_level(x).flatten(), torch.tensor([0, 0.3, 0, 0, 0, 0.7]))


def test_zoom_rejects_non_positive_factor():
    with pytest.raises(ValueError):
        zoom(images(), 0.0)


def test_build_augment_by_name():
    x = images(side=32)
    assert torch.equal(build_augment(None)(x), x)
    assert torch.equal(build_augment("none")(x), x)
    seeded = build_augment("seed", generator=torch.Generator().manual_seed(3))(x)
    assert torch.equal(seeded, seed_augment(x, torch.Generator().manual_seed(3)))
    assert torch.allclose(build_augment("kaggle", **NO_CHANGE)(x), x, atol=1e-5)
    scaled = build_augment("scale", generator=torch.Generator().manual_seed(2))(x)
    assert torch.equal(scaled, scale_augment(x, torch.Generator().manual_seed(2)))
    per_call = build_augment("kaggle")(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(per_call, kaggle_augment(x, torch.Generator().manual_seed(4)))
    with pytest.raises(ValueError, match="kaggle"):
        build_augment("bogus")
    with pytest.raises(ValueError):
        build_augment("none", rotation=10)


def test_geometric_augmentation_needs_square_images():
    with pytest.raises(ValueError):
        kaggle_augment(torch.rand(2, 3, 16, 24))


def test_survey_augment_is_deterministic_for_a_seeded_generator_and_changes_the_images():
    x = blob(12).expand(8, 3, 64, 64) * 0.8 + 0.02 * images(n=8, side=64)
    first = survey_augment(x, torch.Generator().manual_seed(7))
    again = survey_augment(x, torch.Generator().manual_seed(7))
    other = survey_augment(x, torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.allclose(first, other, atol=1e-3)
    assert first.shape == x.shape and first.min() >= 0 and first.max() <= 1
    assert all(not torch.allclose(o, i, atol=0.02) for o, i in zip(first, x))
    as_bytes = survey_augment((x * 255).to(torch.uint8), torch.Generator().manual_seed(7))
    assert as_bytes.dtype == torch.uint8
    scaled = build_augment("survey", generator=torch.Generator().manual_seed(7))(x)
    assert torch.equal(scaled, first)


def test_survey_augment_draws_each_of_its_shifts():
    x = blob(12).expand(64, 3, 64, 64) * 0.8 + 0.01 * images(n=64, side=64)
    geometry_off = dict(rotation=0.0, shift=0.0, zoom_range=(1.0, 1.0), flip=False, colour=0.0)
    g = torch.Generator().manual_seed(1)
    # noise only: the sky noise grows, by different amounts per image
    noisy = survey_augment(x, g, **geometry_off, blur_share=0.0, resolutions=(1.0,), sky=0.0, grey_share=0.0)
    growth = (sky_sigma(noisy) / sky_sigma(x)).flatten()
    assert growth.max() > 2 and growth.std() > 0.3
    # grey only, for every image
    grey = survey_augment(x, g, **geometry_off, blur_share=0.0, resolutions=(1.0,), noise=0.0, sky=0.0,
                          grey_share=1.0)
    assert torch.allclose(grey[:, 0], grey[:, 2], atol=1e-6)
    # blur only, for every image: sharp edges soften
    blurred = survey_augment(blob(12).expand(64, 3, 64, 64), g, **geometry_off, blur=1.5, blur_share=1.0,
                             resolutions=(1.0,), noise=0.0, sky=0.0, grey_share=0.0)
    assert (blurred[:, 0].diff(dim=-1).abs().amax(dim=(1, 2)) < 0.75).float().mean() > 0.5


def test_survey_lite_is_survey_with_milder_defaults_that_a_caller_may_override():
    x = blob(12).expand(8, 3, 64, 64) * 0.8 + 0.02 * images(n=8, side=64)
    lite = build_augment("survey-lite", generator=torch.Generator().manual_seed(3))(x)
    assert not torch.allclose(lite, x, atol=0.02) and lite.min() >= 0 and lite.max() <= 1
    # the same draws as survey with the lite strengths spelled out
    spelled = survey_augment(x, torch.Generator().manual_seed(3), zoom_range=(0.5, 1.5), shift=4 / 64,
                             colour=0.07, blur=0.8, blur_share=0.5, resolutions=(1.0, 1.0, 1.0, 1.5, 2.0),
                             noise=2.0, sky=2.0, grey_share=0.2)
    assert torch.equal(lite, spelled)
    # milder than survey: its images stay closer to the originals on average
    strong = build_augment("survey", generator=torch.Generator().manual_seed(3))(x)
    geometry_off = dict(rotation=0.0, flip=False)
    lite_still = build_augment("survey-lite", generator=torch.Generator().manual_seed(4), **geometry_off)(x)
    strong_still = build_augment("survey", generator=torch.Generator().manual_seed(4), **geometry_off)(x)
    assert (lite_still - x).abs().mean() < (strong_still - x).abs().mean()
    assert not torch.equal(strong, lite)


def test_translate_moves_an_image_by_the_offset():
    x = blob(6)
    out = translate(x, torch.tensor([[0.25, -0.125]]))
    moved = (out[0, 0] > 0.5).nonzero().float().mean(0)
    here = (x[0, 0] > 0.5).nonzero().float().mean(0)
    assert torch.allclose(moved - here, torch.tensor([-8.0, 16.0]), atol=0.5)  # (row, column): up 8, right 16
