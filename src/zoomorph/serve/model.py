"""The run being served, loaded once: uploaded bytes -> pixels, pixels -> answers, Grad-CAM overlays.

The answers are predict's (zoomorph.predict.results): the same backend choice (`auto`: the float32
ONNX graph on a CPU), the same decoder, the same values, predicted class and uncertainty, so that
the server and `zoomorph predict` agree on the same image. The network itself stays loaded too, in
torch: Grad-CAM needs its gradients, and MC dropout its dropout layers (on a copy of it, as dropout
must sample there and nowhere else).
"""

from __future__ import annotations

import base64
import copy
import io
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from PIL import Image

from zoomorph.errors import ZoomorphError
from zoomorph.evaluation.saliency import grad_cam
from zoomorph.inference import Forward, Predictor, onnx_forward, to_input
from zoomorph.io.decode import Decoded, decode, decode_fits
from zoomorph.labels import DEFAULT_PRESET, assign, get_preset
from zoomorph.predict.engine import BACKENDS, chosen_backend
from zoomorph.predict.onnx import exported
from zoomorph.predict.results import uncertainty
from zoomorph.runs import Run, RunFileError
from zoomorph.schema import ANSWER_COLUMNS, Q1
from zoomorph.serve.limits import BadImage, Limits, check_name, check_pixels, sniff

OVERLAY_SIDE = 256  # px of a Grad-CAM overlay: a 64 px input is shown 4x, smoothly


@dataclass(frozen=True)
class Options:
    """What a request asks of the model; requests with equal options share batches."""

    tta: bool = False
    mc_samples: int = 0


class ServedModel:
    """One run's model, with `backend` ("auto": as predict chooses it for a CPU or GPU)."""

    def __init__(self, run: Run | str, backend: str = "auto", preset: str | None = None):
        self.run = Run.of(run)
        cfg = self.cfg = self.run.config
        if backend != "auto" and backend not in BACKENDS:
            raise ZoomorphError(f"unknown backend {backend!r}: choose auto or one of {', '.join(BACKENDS)}")
        self.run.check_cut()
        self.model = self.run.load_model()  # a damaged model.pt fails here, before the port opens
        self.backend = chosen_backend(backend, "local", 0)
        self.forward = self._graph_forward(backend == "auto") if self.backend != "torch" else None
        if self.forward is None:
            self.backend = "torch"
            self.forward = Predictor.from_model(self.model, cfg.head, name=cfg.model).forward
        self.mc_forward = self._mc_forward()
        self.preset = None
        if cfg.head == "votes":
            self.preset = get_preset(preset or cfg.preset or DEFAULT_PRESET)
        elif preset:
            raise ZoomorphError("a preset derives classes from vote fractions: this run already predicts classes")
        self.values = list(cfg.classes) if cfg.head == "classes" else list(ANSWER_COLUMNS)

    def _graph_forward(self, auto: bool) -> Forward | None:
        """The exported graph (exported now when missing or stale); None, with a warning, where `auto`
        cannot export it (a read-only run folder): torch then serves the model as trained."""
        int8 = self.backend == "onnx-int8"
        try:
            exported(self.run, int8=int8, say=print)
        except (RunFileError, FileNotFoundError):
            raise
        except Exception as err:  # noqa: BLE001 (as predict: any export failure falls back to torch under auto)
            if not auto:
                raise
            warnings.warn(f"could not export {self.run.source} to ONNX ({type(err).__name__}: {err}); serving "
                          "with torch", stacklevel=3)
            return None
        # One intra-op thread: the decoding threads and the event loop need the other cores, and onnxruntime's
        # pool spins while it waits (measured on 2 cores under load: 1 thread 362 images/s, 2 threads 277)
        return onnx_forward(self.run, 1, int8=int8)

    def _mc_forward(self) -> Forward | None:
        """MC dropout's forward, on a copy of the network whose dropout samples; None when it has none."""
        try:
            return Predictor.from_model(copy.deepcopy(self.model), self.cfg.head, mc_samples=2).forward
        except ZoomorphError:
            return None

    def release_memory(self) -> None:
        """Hand back what onnxruntime's memory arena took in a busy spell (nothing to do for torch)."""
        release = getattr(self.forward, "release_memory", None)
        if release is not None:
            release()

    def warm_up(self, n: int) -> None:
        """Run the model once on `n` images, the largest call it will get: onnxruntime's memory arena grows
        to the largest batch it has seen and keeps it, so memory is at its plateau from the start (and the
        first request is not the slow one)."""
        self.forward(torch.zeros((n, self.cfg.image_size, self.cfg.image_size, 3), dtype=torch.uint8))

    # ------------------------------------------------------------------ bytes -> pixels

    def decode(self, data: bytes, name: str, limits: Limits) -> Decoded:
        """One upload's pixels, cropped and resized as predict's are; BadImage saying why it cannot be."""
        fmt = sniff(data)
        check_name(name, fmt)
        check_pixels(data, fmt, limits)
        try:
            reader = decode_fits if fmt == "FITS" else decode
            return reader(data, self.cfg.image_size, self.cfg.fov, name=name)
        except Exception as err:  # noqa: BLE001 (any failure of one image is that image's error, as in predict)
            message = str(err).removeprefix(f"{name}: ")
            raise BadImage(message if isinstance(err, ZoomorphError) else f"cannot decode ({type(err).__name__})") \
                from None

    # ------------------------------------------------------------------ pixels -> answers

    def check(self, options: Options, limits: Limits) -> None:
        """ZoomorphError for options this model or these limits cannot serve."""
        n = options.mc_samples
        if n == 1 or n < 0 or n > limits.max_mc_samples:
            raise ZoomorphError(f"mc_samples={n}: give 0 (off) or 2 to {limits.max_mc_samples} (max_mc_samples)")
        if n and self.mc_forward is None:
            raise ZoomorphError(f"model {self.cfg.model!r} has no dropout layers: MC dropout needs some")

    def samples(self, pixels: np.ndarray, options: Options) -> np.ndarray:
        """(S, n, K) for uint8 pixels (n, H, W, 3); MC dropout seeded by 0, as predict seeds a first batch."""
        forward = self.mc_forward if options.mc_samples else self.forward
        return Predictor(forward, tta=options.tta, mc_samples=options.mc_samples).samples(pixels, seed=0)

    def answers(self, samples: np.ndarray) -> list[dict]:
        """One answer per image of (S, n, K) samples: values by name, predicted class, uncertainty."""
        mean = samples.mean(0)
        spread = uncertainty(samples if self.cfg.head == "classes" else samples[..., Q1])
        if self.cfg.head == "classes":
            predicted = [self.values[i] for i in mean.argmax(1)]
        else:
            predicted = assign(pd.DataFrame(mean, columns=ANSWER_COLUMNS), self.preset).labels
            predicted = predicted.tolist()
        return [{"values": dict(zip(self.values, map(float, row))), "predicted": predicted[i],
                 **{k: float(v[i]) for k, v in spread.items()}} for i, row in enumerate(mean)]

    def target(self, answer: dict) -> int:
        """The output Grad-CAM explains: the predicted class, or a votes run's top answer to question 1."""
        values = list(answer["values"].values())
        return int(np.argmax(values)) if self.cfg.head == "classes" else int(np.argmax(values[Q1]))

    def overlay(self, pixels: np.ndarray, target: int) -> str:
        """A PNG data URL: the image with its Grad-CAM map laid over it (red = most important)."""
        cam = grad_cam(self.model, to_input(torch.from_numpy(pixels[None]))[0], target)
        heat = colormaps["jet"](cam)[..., :3]
        blended = (0.55 * pixels / 255 + 0.45 * heat) * 255
        im = Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))
        if im.size[0] < OVERLAY_SIDE:
            im = im.resize((OVERLAY_SIDE, OVERLAY_SIDE), Image.BILINEAR)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
