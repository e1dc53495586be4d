"""How fast predict() classifies JPEG files, and whether its memory stays flat.

    PYTHONPATH=src python benchmarks/predict_throughput.py [--model convnet-lite] [--size PX] [--run RUN]
                                                           [--inputs 20000] [--large 100000] [--fov-only]

Uses the 1,197 real Kaggle test images (../shared/data/gz-kaggle-test), listed
over and over to reach --inputs sources, and an untrained model (the weights do
not change the speed; --run measures a trained run folder instead, on a copy).
Prints:
  * end to end: JPEG files -> Parquet, images/s, --inputs sources, with each
    backend (torch, onnx, onnx-int8; on a CPU the default, auto, is onnx);
  * fixed vs auto field of view side by side: the same run with fov "auto" (each
    galaxy measured, zoomorph.io.extent), end to end with the default backend, and
    decoding only (--fov-only: just these, and the load average);
  * the same against a naive loop (PIL full decode, crop, resize, one image per model call),
    its fastest of three passes;
  * inference only: torch vs onnxruntime (float32 and int8) on one decoded batch;
  * peak memory (PSS) of the whole process tree (the run and its workers) for
    --inputs vs --large sources (onnx-int8, the fastest), in runs of their own, as
    sampling it slows a run. These runs read their sources from a catalogue CSV,
    as a job of millions would: a list of paths given as arguments is held by the
    caller, ~100 bytes per path, before predict sees it. Nothing should grow.
Each measurement runs in a fresh process, so that none inherits another's state.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from zoomorph.inference import PixelModel, onnx_forward, outputs_to_probs, to_input
from zoomorph.io.decode import (
    AUTO,
    AUTO_CUT,
    FIXED_FOV,
    KAGGLE_SIZE,
    Fov,
    decode_batch,
    default_workers,
    fov_crop,
    load,
)
from zoomorph.io.sources import input_sources
from zoomorph.models import model_spec
from zoomorph.predict import export_onnx, predict
from zoomorph.predict.engine import BACKENDS, chosen_backend
from zoomorph.predict.local_engine import batch_size_for, ordered
from zoomorph.runs import Run, RunConfig, build_model
from zoomorph.training import DEFAULT_MODEL

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "gz-kaggle-test"


def make_run(root: Path, model: str, size: int | None = None, fov: Fov = FIXED_FOV, name: str = "run") -> Path:
    cfg = RunConfig(model=model, head="classes", classes=["elliptical", "spiral", "other"],
                    image_size=size or model_spec(model).default_image_size, fov=fov)
    cfg.save(root / name)
    Run(root / name, cfg).save_weights(build_model(cfg))
    return root / name


def auto_twin(run: Path, root: Path) -> Path:
    """The same run (config and weights) with fov "auto": what only the field of view changes."""
    cfg = RunConfig.load(run)
    cfg.fov, cfg.extra = AUTO, {**cfg.extra, "fov_auto": AUTO_CUT}  # as if trained on this version's crops
    cfg.save(root / "run-auto")
    shutil.copy(Run.open(run).weights_file, root / "run-auto")
    return root / "run-auto"


def copy_run(run: Path, root: Path) -> Path:
    """The run's config and weights (not its exports): every graph below is made and timed afresh."""
    (root / "run").mkdir()
    original = Run.open(run)
    for path in (original.config_file, original.weights_file):
        shutil.copy(path, root / "run" / path.name)
    return root / "run"


def sources(n: int) -> list[str]:
    files = list(input_sources(str(IMAGES)))
    return (files * (n // len(files) + 1))[:n]


def catalogue(path: Path, n: int) -> str:
    pd.DataFrame({"path": sources(n)}).to_csv(path, index=False)
    return str(path)


def predict_speed(run: str, inputs: int | str, out: str, backend: str, workers: int | None) -> dict:
    """One predict() call, as a user makes it: on that many image files, or on a catalogue of them."""
    inputs = sources(inputs) if isinstance(inputs, int) else [inputs]
    summary = predict(run, inputs, Path(out), backend=backend, workers=workers, progress=False)
    return {"images_per_s": summary.images_per_s, "total": summary.total, "errors": summary.errors}


def tree_pss(pid: int) -> int:
    """Bytes of memory held by `pid` and all its descendants, pages shared between processes split
    among them (PSS, from Linux /proc): summing RSS would count torch's libraries once per worker."""
    total, frontier = 0, [pid]
    while frontier:
        proc = Path("/proc") / str(frontier.pop())
        try:
            rollup = (proc / "smaps_rollup").read_text()
            frontier += [int(c) for f in proc.glob("task/*/children") for c in f.read_text().split()]
        except (OSError, ValueError):
            continue  # the process ended meanwhile
        total += next(int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:"))
    return total


def fresh(measure: str, *args, memory: bool = False) -> dict:
    """`measure`(*args) in a new process, so that no figure depends on what ran before it (thread
    pools, allocator state, a warm or cold torch). Its result, wall time and, with `memory`, its peak
    tree PSS, sampled every 0.5 s: each sample takes ~20 ms of CPU from the run (2% of its speed on
    2 cores), so the speed figures come from runs that do not sample."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", measure, json.dumps(args)],
                            stdout=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_pss(proc.pid)) if memory else 0
        time.sleep(0.5)
    if proc.returncode:
        raise SystemExit(f"{measure} failed ({proc.returncode})")
    result = json.loads(proc.stdout.read().strip().splitlines()[-1])
    return {"result": result, "seconds": time.perf_counter() - started, "peak_mb": peak / 2**20}


@torch.inference_mode()
def naive(run: str, n: int, repeats: int = 3) -> list[float]:
    """images/s of the obvious loop: full-size decode, crop, resize, one image per model call.

    After a warm-up, `repeats` times: on 2 cores its speed varies by a third or more from one
    pass to the next (torch's two threads at batch 1), and the ratio is taken against the fastest.
    """
    run = Run.open(Path(run))
    model, cfg = run.load_model(), run.config
    files = sources(n)

    def classify(f: str) -> None:
        im = Image.open(f).convert("RGB")
        half = fov_crop(min(im.size), cfg.fov) / 2
        cx, cy = im.size[0] / 2, im.size[1] / 2
        im = im.crop((cx - half, cy - half, cx + half, cy + half)).resize((cfg.image_size,) * 2, Image.BILINEAR)
        outputs_to_probs(model(to_input(torch.from_numpy(np.array(im))[None])), cfg.head)

    for f in files[:20]:
        classify(f)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for f in files:
            classify(f)
        rates.append(len(files) / (time.perf_counter() - started))
    return rates


def decode_only(run: str, n: int) -> float:
    """images/s of the decoding side alone, every core decoding: the ceiling the model sees."""
    cfg = RunConfig.load(Path(run))
    batches = np.array_split(sources(n), n // batch_size_for(cuda=False))
    tasks = [(i, batch, cfg.image_size, cfg.fov) for i, batch in enumerate(batches)]
    started = time.perf_counter()
    with mp.get_context().Pool(os.cpu_count()) as pool:
        for _ in ordered(decode_batch, tasks, pool, window=2 * (os.cpu_count() or 1)):
            pass
    return n / (time.perf_counter() - started)


def inference_only(run: str, threads: int, batch: int = batch_size_for(cuda=False), repeats: int = 16,
                   rounds: int = 3) -> dict[str, float]:
    """images/s of each backend on the same decoded uint8 batch (no decoding), with `threads` threads:
    the fastest of `rounds` rounds, the backends taking turns in each."""
    run = Run.open(Path(run))
    model, cfg = run.load_model(), run.config
    pixels = torch.from_numpy(np.stack([load(s, cfg.image_size, cfg.fov).pixels for s in sources(batch)]))
    torch.set_num_threads(threads)
    forwards = {"torch": PixelModel(model, cfg.head).to(memory_format=torch.channels_last),
                "onnx": onnx_forward(run, threads), "onnx-int8": onnx_forward(run, threads, int8=True)}
    best = dict.fromkeys(forwards, 0.0)
    with torch.inference_mode():
        for forward in forwards.values():
            forward(pixels)  # warm up
        for _ in range(rounds):
            for name, forward in forwards.items():
                started = time.perf_counter()
                for _ in range(repeats):
                    forward(pixels)
                best[name] = max(best[name], batch * repeats / (time.perf_counter() - started))
    return best


MEASURES = {f.__name__: f for f in (predict_speed, naive, decode_only, inference_only)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--size", type=int, default=None, help="input side of the untrained --model (default: its own)")
    parser.add_argument("--run", type=Path, default=None, help="a trained run folder (default: untrained --model)")
    parser.add_argument("--inputs", type=int, default=20_000)
    parser.add_argument("--large", type=int, default=100_000, help="inputs for the memory comparison")
    parser.add_argument("--naive", type=int, default=1000, help="images per pass of the naive loop")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: predict's)")
    parser.add_argument("--fov-only", action="store_true", help="only fixed vs auto fov, end to end and decoding")
    args = parser.parse_args()
    if not IMAGES.exists():
        raise SystemExit(f"{IMAGES} not found: the benchmark needs the real Kaggle test images")

    with tempfile.TemporaryDirectory() as tmp:
        run = copy_run(args.run, Path(tmp)) if args.run else make_run(Path(tmp), args.model, args.size)
        cfg = RunConfig.load(run)
        # Exported once, as `zoomorph export` would: the runs below then measure prediction only. An untrained
        # run has no training images to calibrate int8 on: the test images stand in.
        export_onnx(run)
        export_onnx(run, int8=True, calibration=None if args.run else sources(1024))
        print(f"model {cfg.model} at {cfg.image_size} px, fov {cfg.fov}/{KAGGLE_SIZE}; {os.cpu_count()} cores: "
              f"{default_workers(args.workers)} worker processes (each decodes and predicts, one thread); "
              f"{len(list(input_sources(str(IMAGES))))} distinct JPEGs", flush=True)
        twin = auto_twin(run, Path(tmp))
        export_onnx(twin)
        default = chosen_backend("auto", "local", 0)
        load_before = os.getloadavg()[0]
        by_fov = {fov: fresh("predict_speed", str(r), args.inputs, str(Path(tmp) / f"fov-{fov}.parquet"), default,
                             args.workers) for fov, r in ((cfg.fov, run), (AUTO, twin))}
        decoding_by_fov = {fov: fresh("decode_only", str(r), args.inputs)["result"]
                           for fov, r in ((cfg.fov, run), (AUTO, twin))}
        print(f"fixed vs auto fov, load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after (1 min):")
        for fov, r in by_fov.items():
            print(f"  fov {str(fov):5} end to end, {default} backend, {args.inputs:,} inputs: "
                  f"{r['result']['images_per_s']:5.0f} img/s ({r['seconds']:.0f} s wall); "
                  f"decoding only, all cores: {decoding_by_fov[fov]:.0f} img/s", flush=True)
        if args.fov_only:
            return
        runs = {backend: fresh("predict_speed", str(run), args.inputs, str(Path(tmp) / f"{backend}.parquet"),
                               backend, args.workers)
                for backend in BACKENDS}
        peaks = {n: fresh("predict_speed", str(run), catalogue(Path(tmp) / f"memory-{n}.csv", n),
                          str(Path(tmp) / f"memory-{n}.parquet"), "onnx-int8", args.workers, memory=True)
                 for n in (args.inputs, args.large)}
        loops = fresh("naive", str(run), args.naive)["result"]
        decoding = fresh("decode_only", str(run), args.inputs)["result"]
        inference = fresh("inference_only", str(run), 1)["result"]  # one thread, as in each worker

    speed = {backend: r["result"]["images_per_s"] for backend, r in runs.items()}
    loop = max(loops)
    for backend, r in runs.items():
        print(f"end to end, {backend:9} backend, {args.inputs:,} inputs: {speed[backend]:5.0f} img/s  "
              f"({r['seconds']:.0f} s wall, {r['result']['errors']} errors)"
              + ("  <- the default here (auto)" if backend == chosen_backend("auto", "local", 0) else ""))
    print(f"decoding only, all cores: {decoding:.0f} img/s")
    print(f"naive loop ({args.naive} images, {len(loops)} passes): {', '.join(f'{r:.0f}' for r in loops)} img/s; "
          f"against the fastest, predict is "
          + ", ".join(f"{speed[b] / loop:.1f}x ({b})" for b in BACKENDS) + " faster")
    print("inference only, 1 thread: " + ", ".join(f"{b} {r:.0f} img/s" for b, r in inference.items())
          + f" -> onnxruntime {inference['onnx'] / inference['torch']:.2f}x torch, "
            f"int8 {inference['onnx-int8'] / inference['torch']:.2f}x torch")
    small, large = peaks[args.inputs], peaks[args.large]
    print(f"peak memory (PSS) of the process tree, onnx-int8, sources from a catalogue: "
          f"{large['peak_mb']:.0f} MB for {args.large:,} inputs "
          f"vs {small['peak_mb']:.0f} MB for {args.inputs:,} ({large['peak_mb'] / small['peak_mb']:.2f}x; "
          f"{large['result']['images_per_s']:.0f} and {small['result']['images_per_s']:.0f} img/s while sampled)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":  # one measurement, in its own process (`fresh`)
        print(json.dumps(MEASURES[sys.argv[2]](*json.loads(sys.argv[3]))))
    else:
        main()
