"""The one inference path: uint8 pixels in, class probabilities (or vote fractions) out.

Training, evaluation, the zoom check, the report, export and prediction all go
through here, so the preprocessing a model was trained with is the one it is
served with (`to_input`), and test-time augmentation and MC dropout exist once:

    PixelModel   uint8 (B, H, W, 3) -> probabilities: what is exported to ONNX and served
    Predictor    a PixelModel (torch) or an exported graph (onnxruntime), with TTA over the 8
                 dihedral views and MC dropout: pixels -> (samples, n, K) or their mean
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from zoomorph.data.augment import dihedral
from zoomorph.errors import ZoomorphError
from zoomorph.runs import Run

# The exported graph's input and output names (zoomorph.predict.onnx writes them, Predictor reads them).
GRAPH_INPUT, GRAPH_OUTPUT = "pixels", "outputs"
BATCH_SIZE = 256  # images per model call when predicting a whole array

Forward = Callable[[torch.Tensor], torch.Tensor]  # uint8 NHWC batch (CPU) -> float32 outputs (CPU)


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [0, 1], channels-last in memory."""
    return images.permute(0, 3, 1, 2).float().div_(255).contiguous(memory_format=torch.channels_last)


def outputs_to_probs(outputs: torch.Tensor, head: str) -> torch.Tensor:
    """Class probabilities from logits; vote fractions pass through."""
    return outputs.softmax(dim=1) if head == "classes" else outputs


class PixelModel(nn.Module):
    """uint8 (B, H, W, 3) pixels -> class probabilities (or the 37 vote fractions): what gets served.

    `view` acts on the float (B, 3, H, W) input before the network (the zoom check's zooms); an
    exported model has none."""

    def __init__(self, model: nn.Module, head: str, view: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.model, self.head, self.view = model, head, view

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = to_input(pixels)
        return outputs_to_probs(self.model(x if self.view is None else self.view(x)), self.head)


class Predictor:
    """Pixels -> outputs with one backend (torch or an ONNX graph), TTA and MC dropout.

    `samples` gives (S, n, K): S = 1, or one draw of the dropout masks per MC sample, each the mean
    over the 8 dihedral views with `tta`. Build one with `from_model` (a network in memory) or
    `for_run` (a run folder's weights or exported graph).
    """

    def __init__(self, forward: Forward, *, tta: bool = False, mc_samples: int = 0,
                 device: torch.device = torch.device("cpu")):
        self.forward, self.tta, self.mc_samples, self.device = forward, tta, mc_samples, device

    @classmethod
    def from_model(cls, model: nn.Module, head: str, *, tta: bool = False, mc_samples: int = 0,
                   view: Callable[[torch.Tensor], torch.Tensor] | None = None, autocast: bool = False,
                   name: str | None = None) -> "Predictor":
        """A network in memory, on its own device. `autocast`: on a GPU, in bfloat16 (float16 where the GPU
        lacks it): predict's speed; evaluation keeps float32. `name` names the model in errors."""
        device = next(model.parameters()).device
        pixel_model = PixelModel(model.eval(), head, view).to(memory_format=torch.channels_last)
        if mc_samples:
            dropout = [m for m in pixel_model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
            if not dropout:
                raise ZoomorphError(f"model {name or type(model).__name__!r} has no dropout layers: "
                                    "MC dropout needs some")
            for m in dropout:  # dropout samples, BatchNorm keeps its running statistics
                m.train()
        return cls(_torch_forward(pixel_model, device, autocast), tta=tta, mc_samples=mc_samples, device=device)

    @classmethod
    def for_run(cls, run: Run, *, backend: str = "torch", tta: bool = False, mc_samples: int = 0,
                autocast: bool = False) -> "Predictor":
        """A run's model, on the GPU when there is one: its weights (backend "torch") or its exported graph
        ("onnx", "onnx-int8", run with as many threads as torch uses)."""
        if backend != "torch":
            return cls(onnx_forward(run, torch.get_num_threads(), int8=backend == "onnx-int8"), tta=tta)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return cls.from_model(run.load_model(device), run.config.head, tta=tta, mc_samples=mc_samples,
                              autocast=autocast, name=run.config.model)

    def _views_mean(self, pixels: torch.Tensor) -> torch.Tensor:
        if not self.tta:
            return self.forward(pixels)
        nchw = pixels.permute(0, 3, 1, 2)  # dihedral turns the last two axes: H and W
        return torch.stack([self.forward(dihedral(nchw, k).permute(0, 2, 3, 1).contiguous())
                            for k in range(8)]).mean(0)

    def samples(self, pixels: np.ndarray, seed: int = 0) -> np.ndarray:
        """(S, n, K) for uint8 pixels (n, H, W, 3); the dropout masks are seeded by `seed`."""
        x = torch.from_numpy(np.ascontiguousarray(pixels))
        if not self.mc_samples:
            return self._views_mean(x).numpy()[None]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)  # the same rows get the same masks on a rerun or a resume
            return torch.stack([self._views_mean(x) for _ in range(self.mc_samples)]).numpy()

    def probabilities(self, images: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """(n, K) means over the samples for uint8 images (n, H, W, 3), `batch_size` at a time (each batch
        seeded by its first row)."""
        out = [self.samples(images[start:start + batch_size], seed=start).mean(0)
               for start in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _torch_forward(model: PixelModel, device: torch.device, autocast: bool) -> Forward:
    cuda = device.type == "cuda"
    amp = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16

    @torch.inference_mode()
    def forward(pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.pin_memory().to(device, non_blocking=True) if cuda else pixels.to(device)
        with torch.autocast("cuda", dtype=amp, enabled=cuda and autocast):
            return model(pixels).float().cpu()

    return forward


def onnx_forward(run: Run, threads: int, int8: bool = False) -> Forward:
    """The run's exported graph by onnxruntime with `threads` intra-op threads.

    Opens the graph that predict() exported once, before any worker or Ray actor started; refuses one
    made from other weights rather than have several processes export at once.
    """
    path = run.graph_file(int8)
    if not run.graph_is_current(int8):
        raise ZoomorphError(f"{path} is missing, damaged or was made from other weights: export it again "
                         f"(`zoomorph export {run.source}{' --int8' if int8 else ''}`)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # int8 QDQ graphs are for CPUs: on CUDA they would fall back to float or run slowly
    wanted = ("CPUExecutionProvider",) if int8 else ("CUDAExecutionProvider", "CPUExecutionProvider")
    providers = [p for p in wanted if p in ort.get_available_providers()]
    session = ort.InferenceSession(str(path), options, providers=providers)

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([GRAPH_OUTPUT], {GRAPH_INPUT: np.ascontiguousarray(pixels.numpy())})[0])

    shrink = ort.RunOptions()
    shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    one_image = np.zeros((1, *session.get_inputs()[0].shape[1:]), np.uint8)

    def release_memory() -> None:
        """One run of one image that shrinks the CPU memory arena after it: onnxruntime keeps what a burst
        of batches took (a long-running server calls this when it goes quiet)."""
        session.run([GRAPH_OUTPUT], {GRAPH_INPUT: one_image}, shrink)

    forward.release_memory = release_memory
    return forward
