import pandas as pd
import pytest
import torch
from torch import nn

from zoomorph.data.augment import dihedral
from zoomorph.models import VotesHead, create_model, list_models, model_spec, register_model, registry
from zoomorph.schema import ANSWER_COLUMNS, validate

MODELS = list_models()
RECIPE_KEYS = {"optimizer", "lr", "betas", "eps", "weight_decay", "scheduler", "label_smoothing", "batch_size",
               "augment"}


def count(model: nn.Module) -> int:
    """Parameters the way Keras counts them: BatchNorm's moving mean and variance included."""
    moving = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return sum(p.numel() for p in model.parameters()) + moving


def test_seed_model1_has_the_keras_parameter_count():
    # Keras model.summary() at 150x150x3, 'valid' 3x3 convs, each followed by a 2x2 max-pool:
    #   conv 3->32: 3*3*3*32+32 = 896        BN 32: 4*32 = 128    150 -> 148 -> 74
    #   conv 32->32: 3*3*32*32+32 = 9,248    BN 32: 128           74 -> 72 -> 36
    #   conv 32->64: 3*3*32*64+64 = 18,496   BN 64: 256           36 -> 34 -> 17
    #   conv 64->64: 3*3*64*64+64 = 36,928   BN 64: 256           17 -> 15 -> 7
    #   conv 64->128: 3*3*64*128+128 = 73,856                     7 -> 5 -> 2, flatten 2*2*128 = 512
    #   dense 512->512: 262,656   dense 512->128: 65,664   dense 128->3: 387
    # total 468,899 (of which 384 BN moving means/variances are non-trainable)
    assert count(create_model("seed-model1", image_size=150)) == 468_899


def test_seed_model2_has_the_keras_parameter_count():
    #   conv 3->64: 1,792   conv 64->64: 36,928   conv 64->128: 73,856   conv 128->128: 147,584 (x2)
    #   150 -> 74 -> 36 -> 17 -> 7 -> 2, flatten 512; dense 512->512: 262,656; dense 512->3: 1,539
    # total 671,939, no BatchNorm
    assert count(create_model("seed-model2", image_size=150)) == 671_939


def test_seed_models_reject_images_too_small_for_their_convs():
    with pytest.raises(ValueError, match="too small"):
        create_model("seed-model1", image_size=64)


def test_model_spec_recipe_cannot_be_changed_in_place():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        model_spec("resnet").recipe.lr = 123.0
    assert model_spec("resnet").recipe.lr != 123.0
    changed = model_spec("resnet").recipe.but(lr=123.0, epochs=None)  # None: keep the recipe's
    assert changed.lr == 123.0 and changed.epochs == model_spec("resnet").recipe.epochs


def test_a_recipe_round_trips_through_json_and_refuses_nonsense():
    import json

    from zoomorph.models.recipe import Recipe

    recipe = model_spec("seed-model2").recipe
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    assert Recipe.from_dict({"lr": 0.1}) == Recipe(lr=0.1)  # a run made before a field existed
    for bad in (dict(optimizer="sgd"), dict(scheduler="step"), dict(lr=0), dict(batch_size=-1)):
        with pytest.raises(ValueError):
            Recipe(**bad)


def test_seed_models_declare_their_own_image_size_and_field_of_view():
    assert (model_spec("seed-model2").default_image_size, model_spec("seed-model2").default_fov) == (150, 150)
    assert (model_spec("convnet-lite").default_image_size, model_spec("convnet-lite").default_fov) == (64, "auto")


def test_registry_lists_at_least_the_required_models():
    assert {"seed-model1", "seed-model2", "resnet", "rotinv", "convnet", "convnet-lite"} <= set(MODELS)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="seed-model1.*seed-model2"):
        create_model("alexnet")


def test_unknown_head_raises():
    with pytest.raises(ValueError, match="votes"):
        create_model("resnet", head="boxes")


@pytest.mark.parametrize("name", MODELS)
def test_spec_has_a_full_recipe(name):
    spec = model_spec(name)
    assert spec.name == name and spec.description and spec.default_image_size > 0
    assert RECIPE_KEYS <= set(spec.recipe.to_dict())
    assert spec.recipe.optimizer in ("adam", "adamw")


@pytest.mark.parametrize("name", MODELS)
def test_model_runs_both_heads_at_two_sizes(name):
    default = model_spec(name).default_image_size
    for size in (default, 96 if default != 96 else 128):
        x = torch.rand(2, 3, size, size)
        model = create_model(name, num_classes=5, image_size=size).eval()
        with torch.no_grad():
            logits = model(x)
            votes = create_model(name, head="votes", image_size=size).eval()(x)
        assert logits.shape == (2, 5) and torch.isfinite(logits).all()
        assert votes.shape == (2, 37) and torch.isfinite(votes).all()


@pytest.mark.parametrize("name", MODELS)
def test_model_is_backbone_plus_head_with_conv_layers_to_inspect(name):
    model = create_model(name)
    assert isinstance(model.head, nn.Module)
    assert any(isinstance(m, nn.Conv2d) for m in model.backbone.modules())


@pytest.mark.parametrize("name", [n for n in MODELS if n != "seed-model1"])
def test_model_has_dropout_for_monte_carlo_prediction(name):
    model = create_model(name).eval()
    assert any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
    size = model_spec(name).default_image_size
    x = torch.rand(4, 3, size, size)
    model.apply(lambda m: m.train() if isinstance(m, nn.Dropout) else None)  # MC dropout: only dropout live
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))


def test_seed_model1_has_no_dropout_as_in_the_original():
    assert not any(isinstance(m, nn.Dropout) for m in create_model("seed-model1").modules())


@pytest.mark.parametrize("name", MODELS)
def test_model_in_eval_mode_is_deterministic(name):
    model = create_model(name).eval()
    size = model_spec(name).default_image_size
    x = torch.rand(3, 3, size, size)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_model_trains_one_step():
    model = create_model("rotinv")
    optimizer = torch.optim.Adam(model.parameters())
    x, y = torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert all(p.grad is not None for p in model.parameters())


def test_votes_head_obeys_the_decision_tree():
    head = VotesHead(16, dropout=0.2)
    with torch.no_grad():
        votes = head(torch.randn(50, 16) * 5)
    frame = pd.DataFrame(votes.numpy().astype(float), columns=ANSWER_COLUMNS)
    assert validate(frame) == []
    assert (votes >= 0).all() and (votes <= 1).all()
    assert torch.allclose(votes[:, :3].sum(1), torch.ones(50), atol=1e-5)  # Q1 sums to 1


def test_votes_from_a_model_obey_the_decision_tree():
    with torch.no_grad():
        votes = create_model("resnet", head="votes").eval()(torch.rand(4, 3, 64, 64))
    assert validate(pd.DataFrame(votes.numpy().astype(float), columns=ANSWER_COLUMNS)) == []


def test_rotinv_is_invariant_to_quarter_turns():
    model = create_model("rotinv", head="votes").eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        for k in (1, 2, 3):
            assert torch.allclose(model(dihedral(x, k)), reference, atol=1e-5)
        assert not torch.allclose(model(dihedral(x, 4)), reference, atol=1e-5)  # flips: not built in


def test_register_model_adds_a_model_with_one_decorator(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("tiny", description="test", default_image_size=8, recipe={})
    def tiny(image_size):
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 4

    assert "tiny" in registry.list_models()
    assert create_model("tiny", num_classes=2)(torch.rand(1, 3, 8, 8)).shape == (1, 2)
    with pytest.raises(ValueError, match="twice"):
        register_model("tiny", description="again", default_image_size=8, recipe={})(tiny)


def test_convnet_lite_is_convnet_with_relu6():
    lite, silu = create_model("convnet-lite"), create_model("convnet")
    assert {k: v.shape for k, v in lite.state_dict().items()} == {k: v.shape for k, v in silu.state_dict().items()}
    kinds = [{type(m) for m in model.modules()} for model in (lite, silu)]
    assert nn.ReLU6 in kinds[0] and nn.SiLU not in kinds[0]
    assert nn.SiLU in kinds[1] and nn.ReLU6 not in kinds[1]
