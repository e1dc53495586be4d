"""On a machine with a CUDA GPU: train in bf16, predict with torch on CUDA and with Ray GPU actors; images/s each.

    PYTHONPATH=src python benchmarks/gpu_check.py [--galaxies 4000] [--epochs 1] [--batch-size 256] [--keep]

Makes a synthetic Galaxy Zoo set (424 px JPEGs, Kaggle layout) in a temporary folder, prepares it
(the default image size and field of view), then:
  * trains the default model (`zoomorph.training.DEFAULT_MODEL`) for --epochs epochs in bf16-mixed
    (16-mixed on a GPU without bf16) on one GPU, and prints the training images/s of each epoch (the
    first includes cuDNN's start-up);
  * predicts the set's JPEGs end to end (decode on the CPUs, model on the GPU, Parquet out) with the
    local engine, --backend torch on CUDA, and with engine="ray" (a private Ray instance with every CPU and
    GPU here, one GPU actor each, timed after a warm-up call), and prints images/s for each and how far
    their probabilities are apart.
Without a CUDA GPU it says so in one line and exits with status 2 (CI never runs it).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

NO_GPU_EXIT = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--galaxies", type=int, default=4000, help="synthetic galaxies to make, train on and predict")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256, help="training batch (default: 256)")
    parser.add_argument("--predict-batch-size", type=int, default=None, help="default: predict's for a GPU")
    parser.add_argument("--skip-ray", action="store_true", help="leave out engine='ray'")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print where it is")
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing measured",
              file=sys.stderr)
        sys.exit(NO_GPU_EXIT)

    import pandas as pd

    from zoomorph.data.prepare import prepare
    from zoomorph.data.synthetic import make_synthetic
    from zoomorph.predict import predict
    from zoomorph.training import DEFAULT_MODEL, train

    precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    print(f"GPU: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible), torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}; training precision {precision}")
    root = Path(tempfile.mkdtemp(prefix="zoomorph-gpu-check-"))
    try:
        started = time.perf_counter()
        solutions = make_synthetic(root / "set", args.galaxies, seed=0)
        data = prepare(root / "set" / "images", solutions, root / "prepared", progress=False).data
        print(f"data: {args.galaxies} synthetic galaxies, prepared at {data.settings['image_size']} px "
              f"in {time.perf_counter() - started:.1f} s")

        result = train(data, model=DEFAULT_MODEL, run_dir=root / "run", epochs=args.epochs,
                       batch_size=args.batch_size, accelerator="gpu", devices=1, precision=precision,
                       progress=False)
        history = pd.read_csv(root / "run" / "history.csv")
        for row in history.itertuples():
            print(f"train  {DEFAULT_MODEL}, {precision}, batch {args.batch_size}, epoch {row.epoch}: "
                  f"{row.images_per_s:,.0f} images/s ({row.train_seconds:.1f} s)")
        print(f"       best val accuracy {result.summary.get('best_val_acc')}")

        images = [root / "set" / "images"]
        local = predict(root / "run", images, root / "torch.parquet", backend="torch",
                        batch_size=args.predict_batch_size, progress=False)
        print(f"predict local engine, backend {local.backend} on CUDA: {local.images_per_s:,.0f} images/s "
              f"({local.total} JPEGs, {local.errors} errors)")
        if not args.skip_ray:
            try:
                import ray
            except ImportError:
                print("predict engine=ray: skipped (Ray not installed: pip install zoomorph[ray])")
                return
            # A Ray instance of our own, all CPUs and GPUs, started before the timing: predict uses it as it
            # is (and leaves it running), so a warm-up call on a few images keeps start-up out of the figure.
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
            try:
                print(f"ray: {ray.cluster_resources().get('CPU', 0):.0f} CPUs, "
                      f"{ray.cluster_resources().get('GPU', 0):.0f} GPUs")
                jpegs = sorted((root / "set" / "images").glob("*.jpg"))
                warm = predict(root / "run", jpegs[:512], root / "ray-warm-up.parquet", engine="ray",
                               batch_size=args.predict_batch_size, progress=False)
                distributed = predict(root / "run", images, root / "ray.parquet", engine="ray",
                                      batch_size=args.predict_batch_size, progress=False)
            finally:
                ray.shutdown()
            print(f"predict engine=ray, backend {distributed.backend}: {distributed.images_per_s:,.0f} images/s "
                  f"({distributed.total} JPEGs, {distributed.errors} errors; a first call of "
                  f"{warm.total} took {warm.total / max(warm.images_per_s, 1e-9):.1f} s)")
            a, b = pd.read_parquet(local.out), pd.read_parquet(distributed.out)
            columns = [c for c in a.columns if c.startswith("p_")]
            same_ids = a["id"].tolist() == b["id"].tolist()
            gap = (a[columns] - b[columns]).abs().to_numpy().max() if same_ids else float("nan")
            print(f"        same ids in the same order: {same_ids}; max |p_torch - p_ray| = {gap:.2e}")
    finally:
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
