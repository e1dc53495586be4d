"""The synthetic Galaxy Zoo set: Kaggle layout, tree-valid votes, pictures that show the truth."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zoomorph.data import synthetic
from zoomorph.data.synthetic import TYPES, draw_truth, make_synthetic, vote_fractions
from zoomorph.labels import assign, hubble_preset
from zoomorph.schema import ANSWER_COLUMNS, ID_COLUMN, to_conditional, validate

N, SEED = 40, 3


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    assert make_synthetic(out, N, seed=SEED, workers=1) == out / "solutions.csv"
    return out


@pytest.fixture(scope="module")
def solutions(synth) -> pd.DataFrame:
    return pd.read_csv(synth / "solutions.csv", index_col=ID_COLUMN)


@pytest.fixture(scope="module")
def truth(synth) -> pd.DataFrame:
    return pd.read_csv(synth / "truth.csv", index_col=ID_COLUMN, keep_default_na=False)


def pixels(synth: Path, galaxy_id: int) -> np.ndarray:
    return np.asarray(Image.open(synth / "images" / f"{galaxy_id}.jpg"), dtype=float)


def test_kaggle_layout_and_exact_header(synth):
    assert sorted(p.name for p in synth.iterdir()) == ["images", "solutions.csv", "truth.csv"]
    header = (synth / "solutions.csv").read_text().splitlines()[0]
    assert header == ",".join([ID_COLUMN, *ANSWER_COLUMNS])


def test_every_row_obeys_the_decision_tree(solutions):
    assert len(solutions) == N
    assert validate(solutions) == []
    assert ((solutions >= 0) & (solutions <= 1)).all().all()


def test_ids_are_unique_six_digits_and_name_the_images(synth, solutions, truth):
    ids = solutions.index.to_numpy()
    assert len(set(ids)) == N
    assert ((ids >= 100_000) & (ids <= 999_999)).all()
    assert {int(p.stem) for p in (synth / "images").glob("*.jpg")} == set(ids)
    assert list(truth.index) == list(ids)


def test_images_are_rgb_jpegs_of_the_kaggle_size(synth):
    for path in (synth / "images").iterdir():
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (424, 424))


def test_same_seed_same_bytes_other_seed_differs(synth, tmp_path):
    first = files(synth)
    make_synthetic(tmp_path / "again", N, seed=SEED, workers=1)
    assert files(tmp_path / "again") == first
    make_synthetic(tmp_path / "other", N, seed=SEED + 1, workers=1)
    other = files(tmp_path / "other")
    assert other["solutions.csv"] != first["solutions.csv"]
    assert not (set(other) & set(first)) - {"solutions.csv", "truth.csv"}  # other IDs, so other images


def test_rewrites_its_own_set_but_refuses_to_mix_sets(tmp_path):
    make_synthetic(tmp_path, 5, seed=1, size=64)
    before = files(tmp_path)
    make_synthetic(tmp_path, 5, seed=1, size=64)
    assert files(tmp_path) == before
    with pytest.raises(FileExistsError, match="another set"):
        make_synthetic(tmp_path, 5, seed=2, size=64)


def test_worker_processes_write_the_same_set(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "PARALLEL_MIN", 1)
    make_synthetic(tmp_path / "serial", 6, seed=1, size=96, workers=1)
    make_synthetic(tmp_path / "parallel", 6, seed=1, size=96, workers=2)
    assert files(tmp_path / "serial") == files(tmp_path / "parallel")


def test_other_sizes(tmp_path):
    make_synthetic(tmp_path, 4, size=128)
    for path in (tmp_path / "images").iterdir():
        with Image.open(path) as image:
            assert image.size == (128, 128)


def test_rejects_an_empty_set(tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        make_synthetic(tmp_path, 0)


def test_every_type_is_drawn_in_balance(truth):
    counts = truth["type"].value_counts()
    assert set(counts.index) == set(TYPES)
    assert counts.min() >= 0.15 * N


def test_votes_follow_the_rendered_truth(solutions, truth):
    shares = to_conditional(solutions)
    kind = truth["type"]
    edge_on, ellipticals = shares[kind == "edge-on"], shares[kind == "elliptical"]
    assert (edge_on["Class1.2"] > 0.5).all() and (edge_on["Class2.1"] > 0.5).all()
    assert (ellipticals[["Class1.1", "Class1.2", "Class1.3"]].idxmax(axis=1) == "Class1.1").all()
    assert (shares.loc[kind == "spiral", "Class4.1"] > 0.5).all()
    assert (shares.loc[kind == "lenticular", "Class4.2"] > 0.5).all()


def test_a_hubble_preset_recovers_the_drawn_type():
    truth = draw_truth(3000, seed=5)
    labels = assign(vote_fractions(truth, seed=5), hubble_preset(edge_on=True)).labels
    agree = labels.to_numpy() == truth["type"].to_numpy()
    assert agree.mean() > 0.95
    assert labels.notna().mean() > 0.95


def test_votes_on_the_details_follow_the_parameters():
    truth = draw_truth(3000, seed=6)
    shares = to_conditional(vote_fractions(truth, seed=6))
    ell = truth["type"].to_numpy() == "elliptical"
    q = truth["axis_ratio"].to_numpy()
    q7 = shares[["Class7.1", "Class7.2", "Class7.3"]].to_numpy().argmax(1)
    assert (q7[ell & (q > 0.9)] == 0).mean() > 0.9  # completely round
    assert (q7[ell & (q < 0.4)] == 2).mean() > 0.9  # cigar-shaped
    spiral = truth["type"].to_numpy() == "spiral"
    q11 = shares.loc[spiral, [f"Class11.{i}" for i in range(1, 7)]].to_numpy().argmax(1) + 1
    assert (q11 == truth.loc[spiral, "arms"].to_numpy()).mean() > 0.9


def second_moment_axis_ratio(image: np.ndarray) -> float:
    """Minor/major axis of the light above the sky in the central half of the frame."""
    grey = image.mean(-1)
    s = grey.shape[0]
    centre = grey[s // 4: 3 * s // 4, s // 4: 3 * s // 4]
    weight = np.clip(centre - np.median(grey) - 15, 0, None)
    y, x = np.indices(weight.shape)
    mean_x, mean_y = (weight * x).sum() / weight.sum(), (weight * y).sum() / weight.sum()
    cov = np.cov(np.stack([x.ravel() - mean_x, y.ravel() - mean_y]), aweights=weight.ravel())
    low, high = np.linalg.eigvalsh(cov)
    return float(np.sqrt(low / high))


def test_pictures_show_the_truth(synth, truth):
    # Edge-on disks look thin.
    ratio = pd.Series({gid: second_moment_axis_ratio(pixels(synth, gid)) for gid in truth.index})
    by_type = ratio.groupby(truth["type"]).mean()
    assert by_type["edge-on"] < by_type["spiral"] - 0.3
    # Drawn elongation shows in the picture, galaxy by galaxy.
    assert np.corrcoef(ratio, truth["axis_ratio"])[0, 1] > 0.7
    # Spiral arms are blue, ellipticals red: compare blue/red light inside the galaxy.
    centre = {gid: pixels(synth, gid)[190:234, 190:234].sum((0, 1)) for gid in truth.index}
    blue_to_red = pd.Series({gid: rgb[2] / rgb[0] for gid, rgb in centre.items()})
    colour = blue_to_red.groupby(truth["type"]).mean()
    assert colour["spiral"] > colour["elliptical"] + 0.1
