"""How fast predict() classifies JPEG files, and whether its memory stays flat.

    PYTHONPATH=src python benchmarks/predict_throughput.py [--model convnet-lite] [--size PX] [--run RUN]
                                                           [--inputs 20000] [--large 100000]

Uses the 1,197 real Kaggle test images (../shared/data/gz-kaggle-test), listed
over and over to reach --inputs sources, and an untrained model (the weights do
not change the speed; --run measures a trained run folder instead, on a copy).
Prints:
  * end to end: JPEG files -> Parquet, images/s, --inputs sources, with each
    backend (torch, onnx, onnx-int8);
  * the same against a naive loop (PIL full decode, crop, resize, one image per model call);
  * inference only: torch vs onnxruntime (float32 and int8) on one decoded batch;
  * peak memory (PSS) of the whole process tree (the run and its workers) for
    --inputs vs --large sources (onnx-int8, the fastest): only the input listing
    should grow (under 1 KB per input), never the pixels or results.
Each end-to-end run is a fresh process, so that the peaks do not mix.
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
import torch
from PIL import Image

from zoomorph.data.images import KAGGLE_SIZE, fov_crop, list_images, load
from zoomorph.data.prepare import DEFAULT_FOV
from zoomorph.inference import outputs_to_probs, to_input
from zoomorph.models import model_spec
from zoomorph.predict import export_onnx, predict
from zoomorph.predict.engine import BACKENDS, PixelModel, batch_size_for, default_workers, ordered
from zoomorph.predict.inputs import decode_batch
from zoomorph.predict.onnx import onnx_forward
from zoomorph.runs import CONFIG_FILE, WEIGHTS_FILE, RunConfig, build_model, load_run, save_weights
from zoomorph.training import DEFAULT_MODEL

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "gz-kaggle-test"


def make_run(root: Path, model: str, size: int | None = None) -> Path:
    cfg = RunConfig(model=model, head="classes", classes=["elliptical", "spiral", "other"],
                    image_size=size or model_spec(model).default_image_size, fov=DEFAULT_FOV)
    cfg.save(root / "run")
    save_weights(root / "run", build_model(cfg))
    return root / "run"


def copy_run(run: Path, root: Path) -> Path:
    """The run's config and weights (not its exports): every graph below is made and timed afresh."""
    (root / "run").mkdir()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copy(run / name, root / "run" / name)
    return root / "run"


def sources(n: int) -> list[str]:
    files = list_images(IMAGES)
    return (files * (n // len(files) + 1))[:n]


def child(run: str, n: int, out: str, backend: str, workers: int | None) -> None:
    """The measured process: one predict() call."""
    summary = predict(run, sources(n), Path(out), backend=backend, workers=workers, progress=False)
    print(json.dumps({"images_per_s": summary.images_per_s, "total": summary.total, "errors": summary.errors}))


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


def end_to_end(run: Path, n: int, out: Path, backend: str, workers: int | None) -> dict:
    """Run `child` in a new process; its result plus wall time and peak tree PSS (sampled every 0.5 s:
    more often would take CPU time from the run being measured)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(run), str(n), str(out), backend, str(workers)],
                            stdout=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_pss(proc.pid))
        time.sleep(0.5)
    if proc.returncode:
        raise SystemExit(f"predict child failed ({proc.returncode})")
    result = json.loads(proc.stdout.read().strip().splitlines()[-1])
    return result | {"seconds": time.perf_counter() - started, "peak_mb": peak / 2**20}


@torch.inference_mode()
def naive(run: Path, files: list[str]) -> float:
    """images/s of the obvious loop: full-size decode, crop, resize, one image per model call."""
    model, cfg = load_run(run)
    started = time.perf_counter()
    for f in files:
        im = Image.open(f).convert("RGB")
        half = fov_crop(min(im.size), cfg.fov) / 2
        cx, cy = im.size[0] / 2, im.size[1] / 2
        im = im.crop((cx - half, cy - half, cx + half, cy + half)).resize((cfg.image_size,) * 2, Image.BILINEAR)
        outputs_to_probs(model(to_input(torch.from_numpy(np.array(im))[None])), cfg.head)
    return len(files) / (time.perf_counter() - started)


def decode_only(run: Path, n: int) -> float:
    """images/s of the decoding side alone, every core decoding: the ceiling the model sees."""
    cfg = RunConfig.load(run)
    batches = np.array_split(sources(n), n // batch_size_for(cuda=False))
    tasks = [(i, batch, cfg.image_size, cfg.fov) for i, batch in enumerate(batches)]
    started = time.perf_counter()
    with mp.get_context().Pool(os.cpu_count()) as pool:
        for _ in ordered(decode_batch, tasks, pool, window=2 * (os.cpu_count() or 1)):
            pass
    return n / (time.perf_counter() - started)


def inference_only(run: Path, threads: int, batch: int = batch_size_for(cuda=False),
                   repeats: int = 32) -> dict[str, float]:
    """images/s of each backend on the same decoded uint8 batch (no decoding), with `threads` threads."""
    model, cfg = load_run(run)
    pixels = torch.from_numpy(np.stack([load(s, cfg.image_size, cfg.fov).pixels for s in sources(batch)]))
    forwards = {"torch": PixelModel(model, cfg.head).to(memory_format=torch.channels_last),
                "onnx": onnx_forward(run, threads), "onnx-int8": onnx_forward(run, threads, int8=True)}

    def rate(forward) -> float:
        forward(pixels)  # warm up
        started = time.perf_counter()
        for _ in range(repeats):
            forward(pixels)
        return batch * repeats / (time.perf_counter() - started)

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return {name: rate(forward) for name, forward in forwards.items()}
    finally:
        torch.set_num_threads(previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--size", type=int, default=None, help="input side of the untrained --model (default: its own)")
    parser.add_argument("--run", type=Path, default=None, help="a trained run folder (default: untrained --model)")
    parser.add_argument("--inputs", type=int, default=20_000)
    parser.add_argument("--large", type=int, default=100_000, help="inputs for the memory comparison")
    parser.add_argument("--naive", type=int, default=1000, help="images for the naive loop")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: predict's)")
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
              f"{len(list_images(IMAGES))} distinct JPEGs", flush=True)
        runs = {(backend, n): end_to_end(run, n, Path(tmp) / f"{backend}-{n}.parquet", backend, args.workers)
                for backend, n in (("torch", args.inputs), ("onnx", args.inputs), ("onnx-int8", args.inputs),
                                   ("onnx-int8", args.large))}
        loop = naive(run, sources(args.naive))
        decoding = decode_only(run, args.inputs)
        inference = inference_only(run, threads=1)  # as in each worker

    for (backend, n), r in runs.items():
        print(f"end to end, {backend:9} backend, {n:>7,} inputs: {r['images_per_s']:5.0f} img/s  "
              f"({r['seconds']:.0f} s wall, peak memory (PSS) of the process tree {r['peak_mb']:.0f} MB, "
              f"{r['errors']} errors)")
    print(f"decoding only, all cores: {decoding:.0f} img/s")
    print(f"naive loop ({args.naive} images): {loop:.0f} img/s -> predict is "
          + ", ".join(f"{runs[b, args.inputs]['images_per_s'] / loop:.1f}x ({b})" for b in BACKENDS) + " faster")
    print("inference only, 1 thread: " + ", ".join(f"{b} {r:.0f} img/s" for b, r in inference.items())
          + f" -> onnxruntime {inference['onnx'] / inference['torch']:.2f}x torch, "
            f"int8 {inference['onnx-int8'] / inference['torch']:.2f}x torch")
    small, large = runs["onnx-int8", args.inputs], runs["onnx-int8", args.large]
    print(f"memory (onnx-int8): {large['peak_mb']:.0f} MB for {args.large:,} inputs vs "
          f"{small['peak_mb']:.0f} MB for {args.inputs:,} ({large['peak_mb'] / small['peak_mb']:.2f}x)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, run_dir, count, output, backend_name, workers = sys.argv
        child(run_dir, int(count), output, backend_name, None if workers == "None" else int(workers))
    else:
        main()
