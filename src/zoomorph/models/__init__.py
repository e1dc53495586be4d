"""CNN models for galaxy morphology: `create_model(name, head=..., num_classes=..., image_size=...)`."""

from zoomorph.models import convnet, resnet, rotinv, seed  # noqa: F401  (importing registers the models)
from zoomorph.models.heads import ClassesHead, VotesHead, build_head
from zoomorph.models.registry import (
    ModelSpec,
    Network,
    backbone_blocks,
    create_model,
    list_models,
    model_spec,
    register_model,
)

__all__ = ["ClassesHead", "ModelSpec", "Network", "VotesHead", "backbone_blocks", "build_head", "create_model",
           "list_models", "model_spec", "register_model"]
