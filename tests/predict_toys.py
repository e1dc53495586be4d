"""Tiny models, run folders and images for the prediction tests (fast on 2 CPU cores)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

import zoomorph
from zoomorph import runs
from zoomorph.models.heads import VotesHead
from zoomorph.runs import RunConfig
from zoomorph.schema import ANSWER_COLUMNS

CLASSES = ["elliptical", "spiral", "other"]


class PooledToy(nn.Module):
    """Per-pixel features, then the mean over pixels: exactly invariant to turns and flips."""

    def __init__(self, outputs: int = 3, votes: bool = False):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = VotesHead(8) if votes else nn.Linear(8, outputs)

    def forward(self, x):
        return self.head(self.features(x))


class SpatialToy(nn.Module):
    """Sees where things are (not invariant), with dropout for MC sampling."""

    def __init__(self, outputs: int = 3, side: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
                                 nn.Linear(4 * side * side, outputs))

    def forward(self, x):
        return self.net(x)


def toy_model(cfg: RunConfig) -> nn.Module:
    if cfg.model == "toy-pooled":
        return PooledToy(len(cfg.classes), votes=cfg.head == "votes")
    return SpatialToy(len(cfg.classes), cfg.image_size)


def make_run(root: Path, model: str = "toy-pooled", head: str = "classes", image_size: int = 16,
             seed: int = 0) -> Path:
    """A run folder for a toy model; the caller patches runs.build_model with toy_model."""
    classes = CLASSES if head == "classes" else list(ANSWER_COLUMNS)
    cfg = RunConfig(model=model, head=head, classes=classes, image_size=image_size, fov=212)
    run = root / f"run-{model}-{head}"
    cfg.save(run)
    torch.manual_seed(seed)
    runs.Run(run, cfg).save_weights(toy_model(cfg))
    return run


def jpeg(seed: int, side: int = 64, fmt: str = "JPEG") -> bytes:
    """A bright off-centre blob on noise: asymmetric, so turns and flips change it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    cx, cy = rng.uniform(0.35, 0.65, 2) * side
    blob = 220 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (side / 8) ** 2))
    colour = rng.uniform(0.4, 1.0, 3)
    rgb = np.clip(blob[..., None] * colour + rng.normal(20, 8, (side, side, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


def write_images(folder: Path, ids, side: int = 64) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{gid}.jpg" for gid in ids]
    for gid, path in zip(ids, paths, strict=True):
        path.write_bytes(jpeg(int(gid), side))
    return paths


def ray_case(tmp_path: Path):
    """300 JPEGs and a broken one, a seeded 32 px convnet run, and the local engine's output on them:
    what the Ray tests compare their engine with. Returns (images folder, run folder, local output)."""
    import pandas as pd

    from zoomorph.predict import predict

    images = tmp_path / "images"
    write_images(images, range(300000, 300300))
    (images / "399999.jpg").write_bytes(b"not a jpeg")
    run = tmp_path / "run"
    cfg = RunConfig(model="convnet", head="classes", classes=CLASSES, image_size=32, fov=212)
    cfg.save(run)
    torch.manual_seed(0)
    runs.Run(run, cfg).save_weights(runs.build_model(cfg))
    local = pd.read_parquet(predict(run, [images], tmp_path / "local.parquet", chunk_size=128, batch_size=64,
                                    backend="torch", workers=0, progress=False).out)
    return images, run, local


def kill_after_first_part(args: list[str], parts: Path) -> int:
    """Run a predict script (`python *args`) in a process of its own and SIGKILL it as soon as its first
    part is on disk in `parts`; the number of parts it had written."""
    env = os.environ | {"PYTHONPATH": str(Path(zoomorph.__file__).parents[1])}
    victim = subprocess.Popen([sys.executable, *args], env=env)
    deadline = time.monotonic() + 60
    while not list(parts.glob("part-*.parquet")) and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    return len(list(parts.glob("part-*.parquet")))
