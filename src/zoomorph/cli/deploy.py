"""Commands that put a run to work: predict, export, pack, info, serve."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from zoomorph.cli.common import console, user_errors
from zoomorph.errors import ZoomorphError


@user_errors
def predict(run: Path = typer.Argument(..., help="run folder (from `zoomorph train`) or packed model"),
            inputs: list[str] = typer.Argument(..., help="images, folders, zips, FITS cutouts, catalogues (CSV, "
                                                         "Parquet, FITS table, VOTable, ECSV, HDF5)"),
            out: Path = typer.Option(..., "--out", "-o", help="output .parquet, .csv, .fits, .vot, .ecsv or .h5"),
            format: Optional[str] = typer.Option(None, help="parquet | csv | kaggle (votes runs: the submission "
                                                            "file) | fits | votable | ecsv | hdf5; default: from "
                                                            "--out's suffix, else parquet"),
            backend: str = typer.Option("auto", help="auto (onnx on a CPU, else torch) | torch | onnx "
                                                    "(onnxruntime, same outputs, faster on CPU) | "
                                                    "onnx-int8 (quantised, fastest on CPU)"),
            engine: str = typer.Option("local", help="local | ray (pip install zoomorph\\[ray])"),
            tta: bool = typer.Option(False, help="average over the 8 rotations/flips"),
            mc_samples: int = typer.Option(0, help="Monte-Carlo dropout samples (>= 2) for uncertainty"),
            preset: Optional[str] = typer.Option(None, help="votes runs: also derive this preset's class"),
            batch_size: Optional[int] = typer.Option(None, help="images per inference batch "
                                                                "(default: 64 on a CPU, 256 on a GPU)"),
            workers: Optional[int] = typer.Option(None, help="worker processes (default: one per core; they decode, "
                                                          "and on a CPU also predict; 0: none; ray: actors)"),
            chunk_size: int = typer.Option(4096, help="rows per output part (the unit of resumption)"),
            ray_address: Optional[str] = typer.Option(None, help="address of a running Ray cluster"),
            overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out that is not "
                                                                      "predict's own output, and redo a finished one"),
            healpix: Optional[int] = typer.Option(None, help="add a nested HEALPix pixel column of this order from "
                                                             "the catalogue's RA/Dec (pip install "
                                                             "'zoomorph\\[healpix]')")
            ) -> None:
    """Classify any number of images, streaming, in chunks; re-run the same command to resume."""
    from zoomorph.api import predict as run_predict
    from zoomorph.predict.writers import errors_path

    summary = run_predict(run, inputs, out, format=format, backend=backend, engine=engine, tta=tta,
                          mc_samples=mc_samples, preset=preset, batch_size=batch_size, workers=workers,
                          chunk_size=chunk_size, ray_address=ray_address, overwrite=overwrite, healpix=healpix)
    if summary.already_complete:
        console.print(f"{summary.out} is already complete: {summary.total:,} inputs, {summary.ok:,} classified, "
                      f"{summary.errors:,} unreadable; nothing redone (--overwrite predicts it again)")
        return
    where = ("see the error column" if format != "kaggle" else
             f"left out of the submission, listed in {errors_path(summary.out)}" if summary.errors else "none")
    console.print(f"{summary.total:,} inputs -> {summary.out}: {summary.ok:,} classified, "
                  f"{summary.errors:,} unreadable ({where}); "
                  f"{summary.predicted:,} done now at {summary.images_per_s:,.0f} images/s ({summary.backend})")

@user_errors
def export(run: Path = typer.Argument(..., help="run folder or packed model (writes to NAME.outputs/)"),
           format: str = typer.Option("onnx", help="onnx (the only format so far)"),
           out: Optional[Path] = typer.Option(None, "--out", "-o",
                                              help="file (default RUN/model.onnx, RUN/model.int8.onnx)"),
           int8: bool = typer.Option(False, "--int8", help="quantise to int8 for fast CPU serving"),
           calibration: Optional[list[str]] = typer.Option(
               None, help="--int8: images to calibrate on, as predict reads them (default: the run's training "
                          "images); repeatable")) -> None:
    """Export a trained model for serving (ONNX, dynamic batch, with its preprocessing settings)."""
    import json

    from zoomorph.api import export as run_export
    from zoomorph.predict.quantize import describe
    from zoomorph.runs import sidecar

    if format != "onnx":
        raise ZoomorphError(f"format {format!r}: only onnx is supported")
    path = run_export(run, out, int8=int8, calibration=calibration)
    console.print(f"exported {path}")
    if int8:
        console.print(describe(json.loads(sidecar(path).read_text())["quantization"]))


@user_errors
def pack(run: Path = typer.Argument(..., help="run folder (from `zoomorph train`), or a packed model to repack"),
         out: Optional[Path] = typer.Option(None, "--out", "-o", help="NAME.zoomorph to write (default RUN.zoomorph)"),
         onnx: bool = typer.Option(True, help="export the ONNX graph first when the run has none")) -> None:
    """Pack a run into one file: weights (safetensors), ONNX, config, metrics, model card, sha256 manifest."""
    from zoomorph.api import pack as run_pack

    path = run_pack(run, out, onnx=onnx)
    console.print(f"packed {path} ({path.stat().st_size / 1e6:,.1f} MB): `zoomorph info {path}` shows its card")


@user_errors
def info(run: Path = typer.Argument(..., help="run folder or packed model (NAME.zoomorph)")) -> None:
    """Print the model card of a run folder or a packed model (checked against its manifest first)."""
    from rich.markdown import Markdown

    from zoomorph.api import info as run_info

    console.print(Markdown(run_info(run)))


@user_errors
def serve(run: Path = typer.Argument(..., help="run folder (from `zoomorph train`) or packed model"),
          host: str = typer.Option("127.0.0.1", help="address to listen on (127.0.0.1: this machine only)"),
          port: int = typer.Option(8000, help="port"),
          backend: str = typer.Option("auto", help="auto (onnx on a CPU, else torch) | torch | onnx | onnx-int8"),
          preset: Optional[str] = typer.Option(None, help="votes runs: the preset that derives the class"),
          batch_size: int = typer.Option(64, help="most images per model call (dynamic batching)"),
          max_wait_ms: float = typer.Option(5.0, help="how long a batch waits for more images"),
          max_upload_mb: float = typer.Option(32.0, help="largest request body"),
          max_images: int = typer.Option(64, help="most images per request"),
          max_pixels: int = typer.Option(25_000_000, help="most pixels per image (decompression bombs)"),
          max_mc_samples: int = typer.Option(32, help="most MC dropout samples a request may ask for"),
          max_saliency: int = typer.Option(16, help="most Grad-CAM overlays per request"),
          queue: int = typer.Option(128, help="requests in the server at once; more are answered 503"),
          timeout_s: float = typer.Option(30.0, help="seconds to send a body (else 408) and to answer (else 503)"),
          log_level: str = typer.Option("info", help="debug | info | warning")) -> None:
    """Serve a run over HTTP: a web page at /, POST /v1/classify, GET /v1/model (pip install 'zoomorph\\[serve]')."""
    from zoomorph.api import serve as run_serve

    run_serve(run, host, port, backend=backend, preset=preset, batch_size=batch_size, max_wait_ms=max_wait_ms,
              max_upload_mb=max_upload_mb, max_images=max_images, max_pixels=max_pixels,
              max_mc_samples=max_mc_samples, max_saliency=max_saliency, queue=queue, timeout_s=timeout_s,
              log_level=log_level)
