"""Training throughput of every registered model: images/s for forward + backward + Adam step.

Random data at each model's default input size, all cores, after warm-up, in
both memory formats (NCHW and channels_last, which oneDNN's CPU convolutions prefer).

    PYTHONPATH=src python benchmarks/train_throughput.py [--models resnet convnet] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable

import torch
from torch import nn

from zoomorph.models import create_model, list_models, model_spec


def training_step(name: str, image_size: int, batch_size: int, channels_last: bool) -> Callable[[], None]:
    """One Adam training step of a fresh model on a fixed random batch."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(name, image_size=image_size).to(memory_format=memory_format).train()
    optimizer = torch.optim.Adam(model.parameters())
    images = torch.rand(batch_size, 3, image_size, image_size).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 3, (batch_size,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list_models())
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed window")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows per case; the best counts")
    parser.add_argument("--batch-size", type=int, default=None, help="default: each model's recipe")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)

    cases = {}  # (name, channels_last) -> (images per step, step)
    for name in args.models:
        spec = model_spec(name)
        batch = args.batch_size or spec.recipe.batch_size
        for channels_last in (False, True):
            step = training_step(name, spec.default_image_size, batch, channels_last)
            step(), step()  # warm-up: oneDNN builds its kernels on first use
            cases[name, channels_last] = batch, step

    # Rounds over all cases, keeping each case's best window (as timeit does): on a shared
    # machine other processes only ever slow a window down, and rounds spread every case
    # over the same stretch of time.
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(args.repeats):
        for case, (_, step) in cases.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            best[case] = min(best[case], time.perf_counter() - start)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          "training images/s (forward + backward + Adam step)")
    print(f"{'model':<12} {'size':>4} {'batch':>5} {'params':>10} {'NCHW':>8} {'NHWC':>8}")
    for name in args.models:
        size = model_spec(name).default_image_size
        params = sum(p.numel() for p in create_model(name).parameters())
        batch = cases[name, False][0]
        nchw, nhwc = (batch * args.steps / best[name, channels_last] for channels_last in (False, True))
        print(f"{name:<12} {size:>4} {batch:>5} {params:>10,} {nchw:>8.1f} {nhwc:>8.1f}")


if __name__ == "__main__":
    main()
