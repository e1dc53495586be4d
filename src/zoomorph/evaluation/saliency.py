"""Where a network looks: Grad-CAM maps and intermediate activations, through forward hooks.

Both work on any model whose convolutions sit in `model.backbone` (every zoomorph
model; a plain module is searched whole). Pass the model in eval mode: a forward
pass in train mode would update batch-norm statistics.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoomorph.errors import ZoomorphError


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """The Conv2d modules of the backbone, in definition order (the forward order for a feature stack)."""
    root = getattr(model, "backbone", model)
    return [(name, m) for name, m in root.named_modules() if isinstance(m, nn.Conv2d)]


def layer_with_map(model: nn.Module, size: int, min_side: int) -> str:
    """The name of the deepest Conv2d of the backbone whose map, for `size` px inputs, is at least
    `min_side` cells on a side (the first one when none is): the last layer's map is often a few cells,
    too coarse to point at a galaxy's parts."""
    layers = conv_layers(model)
    if not layers:
        raise ZoomorphError(f"{type(model).__name__} has no Conv2d layer for Grad-CAM")
    sides: dict[str, int] = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, name=name: sides.__setitem__(name, min(out.shape[-2:])))
               for name, m in layers]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=_device(model)))
    finally:
        for h in handles:
            h.remove()
    wide = [name for name, _ in layers if sides[name] >= min_side]
    return wide[-1] if wide else layers[0][0]


def grad_cam(model: nn.Module, image: torch.Tensor, target_class: int | None = None,
             layer: nn.Module | str | None = None) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) for one image (3, H, W) float in [0, 1].

    target_class: output index to explain (a class, or an answer column for a votes
    model); None = the top prediction. layer: a module or its name in the backbone;
    None = the last Conv2d. Returns an (H, W) map scaled to [0, 1] (all zeros when
    nothing in the layer pushes the target up).
    """
    target_layer = _layer(model, layer)
    store: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        output.register_hook(lambda grad: store.__setitem__("grad", grad))
        store["act"] = output

    handle = target_layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            # The input requires grad so gradients reach the layer even in a frozen model.
            x = image.detach()[None].to(_device(model)).requires_grad_(True)
            output = model(x)
            target = int(output[0].argmax()) if target_class is None else target_class
            output[0, target].backward()
    finally:
        handle.remove()
    weights = store["grad"].mean(dim=(2, 3), keepdim=True)  # channel importance = mean gradient
    cam = F.relu((weights * store["act"]).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    peak = cam.max()
    return (cam / peak if peak > 0 else cam).cpu().numpy()


def activations(model: nn.Module, image: torch.Tensor, k: int = 4) -> list[tuple[str, np.ndarray]]:
    """The outputs (C, h, w) of the first k Conv2d layers for one image (3, H, W)."""
    layers = conv_layers(model)[:k]
    outputs: dict[str, np.ndarray] = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out[0]))
               for name, m in layers]
    try:
        with torch.no_grad():
            model(image[None].to(_device(model)))
    finally:
        for h in handles:
            h.remove()
    return [(name, outputs[name].cpu().numpy()) for name, _ in layers]


def _layer(model: nn.Module, layer: nn.Module | str | None) -> nn.Module:
    if isinstance(layer, nn.Module):
        return layer
    convs = conv_layers(model)
    if not convs:
        raise ZoomorphError(f"{type(model).__name__} has no Conv2d layer for Grad-CAM")
    if layer is None:
        return convs[-1][1]
    named = dict(getattr(model, "backbone", model).named_modules())
    if layer not in named:
        raise ZoomorphError(f"no layer {layer!r} in the backbone; conv layers: {', '.join(n for n, _ in convs)}")
    return named[layer]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
