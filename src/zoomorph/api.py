"""The Python API the CLI wraps: one function per command, usable from notebooks.

    from zoomorph import api
    api.prepare("images/", "training_solutions_rev1.csv", "prepared/", preset="hubble")
    run = api.train("prepared/", model="convnet")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from zoomorph.data import prepare as preparing
from zoomorph.data.labelled import Report, read_labels
from zoomorph.data.prepare import PrepareSummary
from zoomorph.labels import DEFAULT_PRESET, Labels, assign, get_preset
from zoomorph.models import ModelSpec, list_models, model_spec

__all__ = ["PrepareSummary", "compare", "cutouts", "demo", "evaluate", "export", "grad_cam", "info", "label_solutions",
           "models", "pack", "predict", "prepare", "report", "serve", "synth", "train"]


def synth(out: Path, n: int = 1000, *, seed: int = 0, size: int = 424, workers: int | None = None) -> Path:
    """Write a synthetic Galaxy Zoo set in the Kaggle layout (for demos and tests; no measure of real skill).

    Args:
        out: the folder for images/ and solutions.csv.
        n: how many galaxies; seed: the same seed gives the same files byte for byte.
        size: the images' side in pixels; workers: processes (None: one per core).

    Returns:
        the path of solutions.csv.
    """
    from zoomorph.data.synthetic import make_synthetic

    return make_synthetic(Path(out), n, seed=seed, size=size, workers=workers)


def models() -> list[ModelSpec]:
    """The registered models, by name.

    Returns:
        one ModelSpec each: name, description, default image size and field of view, training recipe.
    """
    return [model_spec(name) for name in list_models()]


def label_solutions(solutions: Path, preset: str = "hubble", *, conflicts: str = "exclude",
                    min_share: float = 0.8, out: Path | None = None) -> tuple[Labels, Report]:
    """Apply a preset to a solutions file (docs/labels.md).

    Args:
        solutions: a Kaggle solutions CSV (all 37 columns or the ones the preset needs).
        preset: a preset name (`hubble`, `seed`, `smooth-featured`, ...).
        conflicts, min_share: what a galaxy matching two classes becomes, and the share that decides.
        out: also write `GalaxyID,label` to this CSV.

    Returns:
        (the labels and the rules that made them, the report of rejected and duplicate rows).
    """
    report = Report()
    fractions = read_labels(Path(solutions), report)
    result = assign(fractions, get_preset(preset, conflicts, min_share))
    if out is not None:
        pd.DataFrame({"GalaxyID": result.labels.index, "label": result.labels.to_numpy()}).to_csv(out, index=False)
    return result, report


def prepare(images: Path, labels: Path | None, out: Path, *, model: str | None = None, preset: str = DEFAULT_PRESET,
            conflicts: str = "exclude", min_share: float = 0.8, size: int | None = None,
            fov: int | str | None = None,
            val: float = 0.2, test: float = 0.0, seed: int = 0, workers: int | None = None,
            progress: bool = True, split_file: Path | None = None) -> PrepareSummary:
    """Labels + stratified split + uint8 image cache in one step (zoomorph.data.prepare.prepare).

    Args:
        images: an image folder, a Kaggle zip, or a catalogue CSV/Parquet with a path column.
        labels: a solutions / labels CSV; None for class folders.
        out: the prepared folder to write (refused data leaves it as it was).
        model: prepare for this registered model: its default image size and field of view
            (e.g. 150 px of the central 150 px for the seed models) unless size / fov are given.
        size, fov: the cached side in pixels (default 64), and what it is cut from: "auto" (the default),
            each galaxy's own extent (docs/other-surveys.md), or a central crop in Kaggle (424 px) pixels.
        preset, conflicts, min_share: how vote fractions become classes (docs/labels.md).
        val, test, seed: the split; workers: decoding processes (None: one per core, 0: none).
        split_file: an explicit split manifest (id, split) used as given instead of val/test/seed (a
            cross-validation fold); galaxies it does not list are left out (reported in skipped.csv).

    Returns:
        the prepared data, the accounting of every input, whether the cache was reused, warnings.
    """
    if model is not None:
        spec = model_spec(model)
        size, fov = size or spec.default_image_size, fov or spec.default_fov
    return preparing.prepare(images, labels, out, preset=preset, conflicts=conflicts, min_share=min_share,
                             size=size or preparing.DEFAULT_SIZE, fov=fov or preparing.DEFAULT_FOV, val=val,
                             test=test, seed=seed, workers=workers, progress=progress, split_file=split_file)


def train(data: Path, model: str | None = None, *, head: str = "classes", out: Path | None = None,
          epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
          augment: str | None = None, balance: str = "sampler", seed: int = 0, deterministic: bool = False,
          resume: bool = True, val_loss_stop: float | None = None, patience: int | None = None,
          accelerator: str = "auto", devices="auto", num_nodes: int = 1, strategy: str = "auto",
          precision: str | None = None, max_minutes: float | None = None, progress: bool = True,
          callbacks: list | tuple = (), init: Path | None = None, freeze_epochs: int = 0, freeze_blocks: int = 0,
          backbone_lr_mult: float | None = None):
    """Train a registered model on a prepared folder (zoomorph.training.train).

    Args:
        data: a prepared folder (from `prepare`) or its PreparedData.
        model: a registered model name (`models()`); None for the default, convnet-lite.
        head: "classes" (the preset's classes) or "votes" (the 37 decision-tree fractions).
        out: the run folder; default runs/<data>-<model>-<head>.
        epochs, batch_size, lr, augment, val_loss_stop, patience: override the model's recipe.
        balance: "sampler" (class-balanced batches), "weights" (a weighted loss) or "none".
        seed, deterministic: seeds everything; `deterministic` makes CPU runs bit-exact.
        resume: carry on from out/checkpoints/last.ckpt (False: refuse a non-empty folder's checkpoints
            and start over).
        accelerator, devices, num_nodes, strategy, precision: as Lightning's Trainer takes them.
        max_minutes: stop after this long (the best checkpoint so far is exported).
        callbacks: extra Lightning callbacks.
        init: finetune: start from this trained run's backbone (same model; `model` None takes its model),
            with a fresh head for this data (docs/training.md, "Finetuning a trained run").
        freeze_epochs: with init, keep the backbone as it is for the first N epochs.
        freeze_blocks: with init, never train the backbone's first N blocks.
        backbone_lr_mult: with init, the backbone's learning rate over the head's (default 1).

    Returns:
        TrainResult: the run folder and its summary (best epoch, validation accuracy, images/s).
    """
    from zoomorph.training import DEFAULT_MODEL, train as run_train

    return run_train(data, model=model or (None if init else DEFAULT_MODEL), head=head, run_dir=out, epochs=epochs,
                     batch_size=batch_size, lr=lr, augment=augment, balance=balance, seed=seed,
                     deterministic=deterministic, resume=resume, val_loss_stop=val_loss_stop, patience=patience,
                     accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                     precision=precision, max_minutes=max_minutes, progress=progress, callbacks=callbacks,
                     init=init, freeze_epochs=freeze_epochs, freeze_blocks=freeze_blocks,
                     backbone_lr_mult=backbone_lr_mult)


def demo(out: Path = Path("demo"), n: int = 1500, epochs: int | None = 15, model: str | None = None,
         seed: int = 0, progress: bool = True) -> dict:
    """Synthetic galaxies -> prepare -> train the default model -> validation accuracy.

    The embedded default that shows the whole pipeline on a fresh machine,
    no data needed. Synthetic accuracy is no measure of real performance.

    Args:
        out: the folder for the synthetic set, the prepared data and the run.
        n, seed: the synthetic set; epochs, model: the training (default model, 15 epochs).

    Returns:
        {"run_dir", "prepared", "counts", "summary", "seconds"}.
    """
    import time

    from zoomorph.data.synthetic import make_synthetic
    from zoomorph.training import DEFAULT_MODEL, train as run_train

    out, started = Path(out), time.perf_counter()
    solutions = out / "synthetic" / "solutions.csv"
    if not solutions.exists():
        make_synthetic(out / "synthetic", n, seed=seed)
    prepared = prepare(out / "synthetic" / "images", solutions, out / "prepared", preset="hubble", progress=progress)
    result = run_train(prepared.data, model=model or DEFAULT_MODEL, run_dir=out / "run", epochs=epochs,
                       seed=seed, resume=False, progress=progress)
    return {"run_dir": result.run_dir, "prepared": out / "prepared", "counts": prepared.counts,
            "summary": result.summary, "seconds": time.perf_counter() - started}


def evaluate(run_dir: Path, data: Path | None = None, split: str = "val", tta: bool = False,
             shifts: bool = False) -> dict:
    """Score a trained run on a split; writes RUN/metrics.json and RUN/predictions_<split>.parquet.

    Args:
        run_dir: a trained run folder, or a packed model (NAME.zoomorph: its outputs go to NAME.outputs/).
        data: the prepared folder to score on; default the one the run was trained on.
        split: "val", "test" or "train".
        tta: also score the average over the 8 dihedral views.
        shifts: also score the survey-shift suite (metrics["shifts"]; docs/evaluation.md#survey-shifts):
            the split's source images re-read at full resolution and shifted as other surveys deliver them.

    Returns:
        the metrics: accuracy and balanced accuracy with 95% intervals, per class, confusion, zoom check.
    """
    from zoomorph.evaluation.evaluate import evaluate_run

    return evaluate_run(Path(run_dir), Path(data) if data else None, split=split, tta=tta, shifts=shifts)


def report(run_dir: Path, out: Path | None = None) -> Path:
    """One self-contained HTML report of a run (evaluates it first if needed).

    Args:
        run_dir: a trained run folder; out: the HTML file (default RUN/report.html).

    Returns:
        the path of the report.
    """
    from zoomorph.evaluation.report import write_report

    return write_report(Path(run_dir), out)


def compare(run_dirs: list[Path], out: Path | None = None) -> tuple[pd.DataFrame, Path | None]:
    """Compare several evaluated runs on one table.

    Args:
        run_dirs: run folders evaluated on the same split (refused otherwise).
        out: also write the comparison as an HTML page here.

    Returns:
        (one row per run, the HTML page's path or None).
    """
    from zoomorph.evaluation.compare import compare_runs, write_compare_html

    table = compare_runs([Path(r) for r in run_dirs])
    return table, write_compare_html([Path(r) for r in run_dirs], out) if out else None


def predict(run: Path, inputs: list, out: Path, *, format: str | None = None, backend: str = "auto",
            engine: str = "local", tta: bool = False, mc_samples: int = 0, batch_size: int | None = None,
            workers: int | None = None, chunk_size: int = 4096, preset: str | None = None,
            ray_address: str | None = None, overwrite: bool = False, progress: bool = True,
            healpix: int | None = None):
    """Classify images, folders, zips, catalogues or FITS into one row per input (docs/predict.md).

    Args:
        run: a trained run folder, or a packed model (NAME.zoomorph).
        inputs: files, folders, zips and catalogues (CSV, Parquet, FITS table, VOTable, ECSV, HDF5, with a path
            column), in order.
        out: the output file; resumable: the same call again carries on where it stopped.
        format: "parquet", "csv", "kaggle" (the submission format), "fits", "votable", "ecsv" or "hdf5";
            default by `out`'s suffix (docs/catalogues.md).
        backend: "auto" (ONNX when onnxruntime is there), "onnx", "onnx-int8" or "torch".
        engine: "local" (decoding processes) or "ray" (a cluster, `ray_address`).
        tta: average the 8 dihedral views; mc_samples: MC-dropout samples for an uncertainty (torch).
        batch_size, workers, chunk_size: images per model call, decoding processes (None: one per core,
            0: none), rows per output part.
        preset: for a votes run, also classify the fractions with this preset.
        overwrite: replace an `out` that predict did not write, and redo a finished one.
        healpix: an order: add each row's nested HEALPix pixel from the catalogue's RA/Dec (the healpix extra).

    Returns:
        PredictSummary: rows written, rows with an error, images/s, whether it was already complete.
    """
    from zoomorph.predict import predict as run_predict

    return run_predict(Path(run), inputs, Path(out), format=format, backend=backend, engine=engine, tta=tta,
                       mc_samples=mc_samples, batch_size=batch_size, workers=workers, chunk_size=chunk_size,
                       preset=preset, ray_address=ray_address, progress=progress, overwrite=overwrite,
                       healpix=healpix)


def cutouts(catalogue: Path, out: Path, *, survey: str = "legacy", format: str = "jpeg", layer: str | None = None,
            size: int = 424, pixscale: float | None = None, radius_column: str | None = None,
            radius_multiple: float = 8.48, id_column: str | None = None, base_url: str | None = None,
            concurrency: int = 4, rate: float = 5.0, retries: int = 4, backoff: float = 1.0, timeout: float = 30.0,
            max_wait: float = 120.0, progress: bool = True):
    """Fetch a colour cutout for every RA/Dec row of a catalogue from a public cutout service (docs/cutouts.md).

    Needs the cutouts extra (`pip install 'zoomorph[cutouts]'`): MissingExtra says so when httpx is missing.

    Args:
        catalogue: CSV, Parquet, FITS, VOTable or ECSV with ra/dec (or RA/DEC, ra_deg/dec_deg) in degrees.
        out: the folder for the cutouts, cutouts.json and catalogue.csv / .parquet (the input's columns and
            path, status, error, pixscale: what `predict` reads); resumable: the same call again fetches only
            what is not on disk whole. A non-empty folder it did not make, or other options, are refused.
        survey: "legacy" (the Legacy Survey viewer) or "sdss" (SkyServer DR18); format: "jpeg" or, for
            legacy, "fits" (g, r, z); layer: the Legacy Survey layer (default ls-dr10).
        size: the cutout's side in pixels (legacy at most 512, sdss 2048).
        pixscale: arcsec per pixel (default the survey's own: 0.262 legacy, 0.396 sdss).
        radius_column, radius_multiple: instead of pixscale, each galaxy's radius in arcsec from this column,
            the side being radius_multiple radii (default 8.48, Galaxy Zoo 2's framing of petroR90_r).
        id_column: the column file names come from (default the first of objid, id, galaxyid, ...),
            made safe; rows without one are named row<N>.
        base_url: another address for the service (a mirror, a test server).
        concurrency, rate, retries, backoff, timeout, max_wait: requests at once, request starts per second,
            retries (5xx, 429, timeouts, connection errors, bad bodies; never 404), the first retry's delay
            in s (doubled each time), s without an answer, the longest pause (Retry-After included).

    Returns:
        CutoutSummary: the folder, the catalogue written, rows fetched / on disk / failed, requests made,
        seconds, and the failure reasons with their counts.
    """
    from zoomorph.cutouts.download import download_cutouts
    from zoomorph.cutouts.fetch import Politeness

    polite = Politeness(concurrency=concurrency, rate=rate, retries=retries, backoff=backoff, timeout=timeout,
                        max_wait=max_wait)
    return download_cutouts(Path(catalogue), Path(out), survey=survey, format=format, layer=layer, size=size,
                            pixscale=pixscale, radius_column=radius_column, radius_multiple=radius_multiple,
                            id_column=id_column, base_url=base_url, politeness=polite, progress=progress)


def grad_cam(run: Path, pixels: np.ndarray, *, classes: list[str] | None = None, min_side: int = 8) -> np.ndarray:
    """Grad-CAM maps (where the network looked) of a run for images as its cache holds them.

    Args:
        run: a run folder (or a packed .zoomorph file).
        pixels: (N, S, S, 3) uint8 images at the run's image size, e.g. rows of `PreparedData.images`.
        classes: the class to explain for each image, by name; None for each image's predicted class.
        min_side: explain the deepest convolution whose map is at least this many cells on a side (at
            64 px the last one's is 4 x 4, too coarse to point at arms or a bulge).

    Returns:
        (N, S, S) float maps in [0, 1], red where the pixels pushed the network towards the class.
    """
    from zoomorph.evaluation.saliency import grad_cam as one_map, layer_with_map
    from zoomorph.inference import to_input
    from zoomorph.runs import Run

    opened = Run.of(run)
    model = opened.load_model()
    layer = layer_with_map(model, opened.config.image_size, min_side)
    inputs = to_input(torch.from_numpy(np.ascontiguousarray(pixels)))
    targets = [None] * len(inputs) if classes is None else [opened.config.classes.index(c) for c in classes]
    return np.stack([one_map(model, x, t, layer=layer) for x, t in zip(inputs, targets)])


def export(run_dir: Path, out: Path | None = None, *, int8: bool = False, calibration: list | None = None) -> Path:
    """Export a run as an ONNX model (dynamic batch, uint8 NHWC in, probabilities out) with its
    preprocessing sidecar (size, field of view, classes).

    Args:
        run_dir: a trained run folder or a packed model; out: the .onnx file (default RUN/model.onnx or
            model.int8.onnx; for NAME.zoomorph, in NAME.outputs/).
        int8: statically quantised for fast CPU serving, calibrated on `calibration` (image paths) or on
            the run's own training images.

    Returns:
        the path of the ONNX file.
    """
    from zoomorph.predict import export_onnx

    return export_onnx(Path(run_dir), Path(out) if out else None, int8=int8, calibration=calibration)


def pack(run: Path, out: Path | None = None, *, onnx: bool = True) -> Path:
    """Pack a trained run into one file: weights (safetensors), ONNX graphs, config, preprocessing, metrics,
    model card and a manifest of sha256 digests (docs/packing.md).

    Args:
        run: a trained run folder (or a packed model, to repack).
        out: the file to write, ending in .zoomorph (default RUN.zoomorph beside the run folder).
        onnx: export the float32 ONNX graph first when the run has none (as predict does on first use).

    Returns:
        the path of the packed file.
    """
    from zoomorph.pack import pack_run

    return pack_run(Path(run), Path(out) if out else None, onnx=onnx, say=print)


def info(run: Path) -> str:
    """The model card of a run folder or a packed model (checked first), as Markdown.

    Args:
        run: a run folder (its MODEL_CARD.md, or one made now) or a packed model (its own card, then what
            the file holds and its sha256).

    Returns:
        the Markdown text.
    """
    from zoomorph.pack import describe

    return describe(Path(run))


def serve(run: Path, host: str = "127.0.0.1", port: int = 8000, *, backend: str = "auto", preset: str | None = None,
          batch_size: int = 64, max_wait_ms: float = 5.0, max_upload_mb: float = 32.0, max_images: int = 64,
          max_pixels: int = 25_000_000, max_mc_samples: int = 32, max_saliency: int = 16, queue: int = 128,
          timeout_s: float = 30.0, log_level: str = "info") -> None:
    """Serve a run over HTTP: the page at /, POST /v1/classify, GET /v1/model (docs/serving.md).

    Needs the serve extra (`pip install 'zoomorph[serve]'`): MissingExtra says so when it is missing.

    Args:
        run: a trained run folder or a packed model (NAME.zoomorph); its model is loaded once (a damaged one
            fails before the port opens).
        host, port: where to listen (127.0.0.1: this machine only; put a reverse proxy in front for others).
        backend: "auto" (as predict: ONNX on a CPU, exported into the run folder on first use), "torch",
            "onnx" or "onnx-int8".
        preset: for a votes run, the preset that derives each answer's class (default: the run's, or hubble).
        batch_size, max_wait_ms: the most images per model call, and how long a batch waits for more.
        max_upload_mb, max_images, max_pixels, max_mc_samples, max_saliency, queue, timeout_s: the limits
            (zoomorph.serve.limits.Limits): body size, images per request, pixels per image, MC samples and
            Grad-CAM images per request, requests in the server at once (more get 503), seconds to send a
            body (408) and to answer it (503).
        log_level: uvicorn's, and that of the one line logged per request.

    Returns:
        None, when the server is stopped (Ctrl-C).
    """
    from zoomorph.serve import require_extra

    require_extra()
    from zoomorph.serve.app import create_app, limit_arenas, run_server
    from zoomorph.serve.limits import Limits
    from zoomorph.serve.model import ServedModel

    limits = Limits(max_upload_mb=max_upload_mb, max_images=max_images, max_pixels=max_pixels,
                    max_mc_samples=max_mc_samples, max_saliency=max_saliency, queue=queue, timeout_s=timeout_s)
    limit_arenas()  # a server process's own setting, before the model's and the decoders' threads exist
    app = create_app(ServedModel(Path(run), backend=backend, preset=preset), limits, batch_size, max_wait_ms)
    run_server(app, host, port, log_level)
