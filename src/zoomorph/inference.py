"""The one place where cached uint8 pixels become model inputs and outputs.

Training, evaluation and prediction all go through `to_input`, so the
preprocessing a model was trained with is the one it is served with.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [0, 1], channels-last in memory."""
    return images.permute(0, 3, 1, 2).float().div_(255).contiguous(memory_format=torch.channels_last)


def outputs_to_probs(outputs: torch.Tensor, head: str) -> torch.Tensor:
    """Class probabilities from logits; vote fractions pass through."""
    return outputs.softmax(dim=1) if head == "classes" else outputs


@torch.inference_mode()
def predict_array(model: torch.nn.Module, images: np.ndarray, head: str = "classes", batch_size: int = 256,
                  transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  device: str | torch.device | None = None) -> np.ndarray:
    """Probabilities (or fractions) for uint8 images (N, H, W, 3), in batches.

    `transform` acts on the float (B, 3, H, W) batch (a zoom, a dihedral view).
    """
    device = torch.device(device or next(model.parameters()).device)
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = to_input(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device))
        if transform is not None:
            x = transform(x)
        out.append(outputs_to_probs(model(x), head).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
