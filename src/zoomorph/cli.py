"""The `zoomorph` command: a thin Typer layer, one function per command, no logic.

Everything here calls the Python API (zoomorph.api) that notebooks use too.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from zoomorph.errors import DiskFull, ZoomorphError

app = typer.Typer(help="Galaxy morphology from images, trained on Galaxy Zoo votes.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
console = Console()

PresetOpt = typer.Option("hubble", "--preset", "-p",
                         help="hubble | hubble+edge-on | seed | smooth-featured | a rules .toml file")
ConflictsOpt = typer.Option("exclude", help="galaxies meeting two rules: exclude (counted) or first (rule order wins)")


def _table(title: str, rows: dict, key: str = "what", value: str = "count") -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(key)
    table.add_column(value, justify="right")
    for k, v in rows.items():
        table.add_row(str(k), f"{v:,}" if isinstance(v, int) else str(v))
    return table


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/red] {escape(str(err))}")  # escaped: "zoomorph[serve]" is no markup
    raise typer.Exit(2)


def user_errors(command: Callable) -> Callable:
    """A command's errors that the user caused (ZoomorphError, a file that is not there, a full disk)
    as one clear line and exit 2; any other exception is a bug and keeps its traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ZoomorphError, FileNotFoundError, DiskFull) as err:
            _fail(err)

    return run


@app.command()
@user_errors
def synth(out: Path = typer.Argument(..., help="folder to write images/ and solutions.csv into"),
          n: int = typer.Option(1000, "--n", help="number of galaxies"),
          seed: int = typer.Option(0, help="random seed (same seed, same set)")) -> None:
    """Generate a synthetic Galaxy Zoo set in the exact Kaggle layout (for demos and tests only)."""
    from zoomorph.api import synth as make_synthetic

    solutions = make_synthetic(out, n, seed=seed)
    console.print(f"wrote {n:,} synthetic galaxies: {out / 'images'} and {solutions}")


@app.command()
@user_errors
def labels(solutions: Path = typer.Argument(..., help="solutions CSV (full or partial Kaggle columns)"),
           preset: str = PresetOpt, conflicts: str = ConflictsOpt,
           min_share: float = typer.Option(0.8, help="smooth-featured: minimum winning share"),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="write GalaxyID,label CSV here")) -> None:
    """Turn vote fractions into classes with a preset; print the counts."""
    from zoomorph.api import label_solutions

    result, report = label_solutions(solutions, preset, conflicts=conflicts, min_share=min_share, out=out)
    rows = {f"{c} (meets rule)": result.matches[c] for c in result.classes}
    rows.update({f"{c} (labelled)": result.counts[c] for c in result.classes})
    rows[f"conflicts ({result.preset.conflicts})"] = len(result.conflicts)
    rows["unassigned"] = result.unassigned
    rows["rows skipped as invalid"] = len(report.rows)
    console.print(_table(f"preset {result.preset.name}: {len(result.labels):,} galaxies", rows))
    if result.labels.empty:
        console.print(f"[yellow]warning:[/yellow] {solutions}: no galaxies: "
                      + ("every row was rejected" if report.rows else "no data rows, only a header"))
    for pair, n in result.conflicts["classes"].value_counts().items():
        console.print(f"  {n} galaxies meet several rules: {pair}")
    if report.rows:
        console.print(report.summary().to_string())
    if out:
        console.print(f"labels written to {out}")


@app.command()
@user_errors
def prepare(images: Path = typer.Argument(..., help="image folder, Kaggle zip, or catalogue CSV/Parquet"),
            labels_file: Optional[Path] = typer.Option(None, "--labels", "-l", help="solutions / labels CSV"),
            out: Path = typer.Option(..., "--out", "-o", help="prepared data folder to write"),
            preset: str = PresetOpt, conflicts: str = ConflictsOpt,
            min_share: float = typer.Option(0.8, help="smooth-featured: minimum winning share"),
            model: Optional[str] = typer.Option(None, "--model", "-m", help="prepare for this registered model: "
                                                "its default size and field of view"),
            size: Optional[int] = typer.Option(None, help="cached image side, pixels (default 64, or the model's)"),
            fov: Optional[str] = typer.Option(None, help="central crop side in Kaggle (424 px) pixels "
                                                         "(default 256: 4 x 64 px decodes fastest; or "
                                                         "the model's), or 'auto': each galaxy's own, a "
                                                         "square of a fixed multiple of its measured R90 "
                                                         "about its centre, sky-filled past the frame "
                                                         "(docs/other-surveys.md)"),
            val: float = typer.Option(0.2, help="validation fraction"),
            test: float = typer.Option(0.0, help="test fraction"),
            seed: int = typer.Option(0, help="split seed"),
            split_file: Optional[Path] = typer.Option(None, "--split", help="split manifest (id,split) to use as "
                                                      "given instead of --val/--test/--seed; galaxies it does "
                                                      "not list are left out"),
            workers: Optional[int] = typer.Option(None, help="decode processes (default: one per core; "
                                                             "0: decode in this process)")) -> None:
    """Labels + stratified split + uint8 image cache, in one step."""
    from zoomorph.api import prepare as run_prepare
    from zoomorph.data.prepare import PrepareRefused

    try:
        summary = run_prepare(images, labels_file, out, preset=preset, conflicts=conflicts, min_share=min_share,
                              model=model, size=size, fov=fov, val=val, test=test, seed=seed, workers=workers,
                              split_file=split_file)
    except PrepareRefused as err:  # the accounting still matters: it says why
        console.print(_table(f"not prepared: {out} (left as it was)", err.counts))
        console.print(f"skipped-items report: {err.report}")
        raise
    console.print(_table(f"prepared {out}" + (" (cache reused)" if summary.reused_cache else ""), summary.counts))
    for warning in summary.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"skipped-items report: {out / 'skipped.csv'}")


@app.command()
@user_errors
def train(data: Path = typer.Argument(..., help="prepared data folder (from `zoomorph prepare`)"),
          model: Optional[str] = typer.Option(None, "--model", "-m",
                                              help="registered model (see `zoomorph models`; default: the project's)"),
          head: str = typer.Option("classes", help="classes (N-way) or votes (the 37 Galaxy Zoo fractions)"),
          run_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="run folder (default runs/DATA-MODEL-HEAD)"),
          epochs: Optional[int] = typer.Option(None, help="maximum epochs (default: the model's recipe)"),
          batch_size: Optional[int] = typer.Option(None, help="batch size (default: the model's recipe)"),
          lr: Optional[float] = typer.Option(None, help="learning rate (default: the model's recipe)"),
          augment: Optional[str] = typer.Option(None, help="none | seed | kaggle | scale | survey (default: recipe)"),
          balance: str = typer.Option("sampler", help="class balance: sampler | weights | none"),
          val_loss_stop: Optional[float] = typer.Option(None, help="stop once val loss is below this"),
          patience: Optional[int] = typer.Option(None, help="early-stopping patience in epochs"),
          seed: int = typer.Option(0, help="random seed"),
          deterministic: bool = typer.Option(False, help="bit-reproducible (slower on GPU)"),
          fresh: bool = typer.Option(False, help="start over: delete the run folder's weights, checkpoints and "
                                                  "results first instead of resuming"),
          accelerator: str = typer.Option("auto", help="cpu | gpu | auto"),
          devices: str = typer.Option("auto", help="number of devices, or auto"),
          num_nodes: int = typer.Option(1, help="nodes for multi-node DDP"),
          strategy: str = typer.Option("auto", help="Lightning strategy, e.g. ddp"),
          precision: Optional[str] = typer.Option(None, help="e.g. 32-true, bf16-mixed (default: mixed on GPU)"),
          max_minutes: Optional[float] = typer.Option(None, help="stop after this many minutes"),
          init: Optional[Path] = typer.Option(None, "--init", help="finetune: start from this trained run's "
                                              "backbone (same model; default --model: the run's), fresh head"),
          freeze_epochs: int = typer.Option(0, help="with --init: keep the backbone as it is for the first N "
                                                    "epochs (only the head learns)"),
          freeze_blocks: int = typer.Option(0, help="with --init: never train the backbone's first N blocks"),
          backbone_lr_mult: Optional[float] = typer.Option(None, help="with --init: the backbone's learning rate "
                                                                      "over the head's (default 0.1)")) -> None:
    """Train a model on a prepared folder; re-running the same command resumes it."""
    from zoomorph.api import train as run_train

    result = run_train(data, model=model, head=head, out=run_dir, epochs=epochs, batch_size=batch_size,
                       lr=lr, augment=augment, balance=balance, val_loss_stop=val_loss_stop,
                       patience=patience, seed=seed, deterministic=deterministic, resume=not fresh,
                       accelerator=accelerator, devices=int(devices) if devices.isdigit() else devices,
                       num_nodes=num_nodes, strategy=strategy, precision=precision, max_minutes=max_minutes,
                       init=init, freeze_epochs=freeze_epochs, freeze_blocks=freeze_blocks,
                       backbone_lr_mult=backbone_lr_mult)
    _print_train_summary(result.summary, result.run_dir)


def _print_train_summary(summary: dict, run_dir: Path) -> None:
    if not summary:
        return
    rows = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in summary.items()
            if not isinstance(v, (dict, list)) and v is not None}
    console.print(_table(f"run {run_dir}", rows, "", "value"))
    zoom = Table(title="validation at other angular scales (zoom)", title_justify="left")
    zoom.add_column("zoom")
    metrics = next(iter(summary["zoom"].values())).keys()
    for m in metrics:
        zoom.add_column(m, justify="right")
    for factor, values in summary["zoom"].items():
        zoom.add_row(f"{factor}x", *[f"{values[m]:.4f}" for m in metrics])
    console.print(zoom)


@app.command()
@user_errors
def models() -> None:
    """List the registered models with their default input size and recipe."""
    from zoomorph.api import models as registered

    table = Table(title="registered models", title_justify="left")
    for col in ("name", "input", "description"):
        table.add_column(col)
    for spec in registered():
        table.add_row(spec.name, f"{spec.default_image_size}px of {spec.default_fov}", spec.description)
    console.print(table)


@app.command()
@user_errors
def demo(out: Path = typer.Option(Path("demo"), "--out", "-o", help="folder for the demo's data and run"),
         n: int = typer.Option(1500, "--n", help="synthetic galaxies to generate"),
         epochs: int = typer.Option(15, help="training epochs (kept short: the demo runs in ~2 minutes)")) -> None:
    """The whole pipeline on synthetic galaxies: generate, prepare, train, report accuracy."""
    from zoomorph.api import demo as run_demo

    result = run_demo(out, n=n, epochs=epochs)
    _print_train_summary(result["summary"], result["run_dir"])
    console.print(f"[bold]demo done in {result['seconds']:.0f} s[/bold]: synthetic data in {out / 'synthetic'}, "
                  f"prepared data in {result['prepared']}, trained run in {result['run_dir']}\n"
                  "Synthetic accuracy shows the pipeline works; it is not a measure of real performance.")


@app.command()
@user_errors
def evaluate(run: Path = typer.Argument(..., help="run folder (from `zoomorph train`) or packed model"),
             data: Optional[Path] = typer.Option(None, help="prepared folder (default: the one it trained on)"),
             split: str = typer.Option("val", help="val | test | all"),
             tta: bool = typer.Option(False, help="also average over the 8 rotations/flips"),
             shifts: bool = typer.Option(False, help="also the survey-shift suite: the images re-read at full "
                                                     "resolution, blurred, noisier, zoomed, ... (docs/evaluation.md)")
             ) -> None:
    """Accuracy, balanced accuracy with 95% intervals, per class, calibration (or Kaggle RMSE for votes)."""
    from zoomorph.api import evaluate as run_evaluate
    from zoomorph.evaluation.evaluate import format_metrics_table, format_shifts_table
    from zoomorph.runs import Run

    metrics = run_evaluate(run, data, split=split, tta=tta, shifts=shifts)
    console.print(format_metrics_table(metrics))
    if shifts:
        console.print(format_shifts_table(metrics))
    console.print(f"metrics written to {Run.open(run).metrics_file}")


@app.command()
@user_errors
def report(run: Path = typer.Argument(..., help="run folder or packed model"),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file (default RUN/report.html)")) -> None:
    """Write one self-contained HTML report: config, data, curves, metrics, confusion, calibration, saliency."""
    from zoomorph.api import report as run_report

    path = run_report(run, out)
    console.print(f"report written to {path}")


@app.command()
@user_errors
def compare(runs: list[Path] = typer.Argument(..., help="run folders evaluated on the same split"),
            out: Path = typer.Option(Path("compare.html"), "--out", "-o", help="HTML page to write")) -> None:
    """Compare runs: one table (and overlaid training curves in the HTML page)."""
    import pandas as pd

    from zoomorph.api import compare as run_compare

    table, path = run_compare(runs, out)
    # one column per run, one row per field: readable at any terminal width
    rich_table = Table(title=f"model comparison ({table['split'].iloc[0]} split {table['split_hash'].iloc[0]})",
                       title_justify="left")
    rich_table.add_column("")
    for run_name in table["run"]:
        rich_table.add_column(str(run_name), justify="right")
    for field in [c for c in table.columns if c not in ("run", "split", "split_hash")]:
        values = table[field]
        if values.isna().all():
            continue
        rich_table.add_row(field, *["-" if pd.isna(v) else f"{v:,.4g}" if isinstance(v, float) else f"{v:,}"
                                    if isinstance(v, int) else str(v) for v in values])
    console.print(rich_table)
    console.print(f"comparison page written to {path}")


@app.command()
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


@app.command()
@user_errors
def cutouts(catalogue: Path = typer.Argument(..., help="catalogue with RA/Dec in degrees: CSV, Parquet, FITS, "
                                                       "VOTable or ECSV"),
            survey: str = typer.Option("legacy", help="legacy (Legacy Survey viewer) | sdss (SkyServer DR18)"),
            out: Path = typer.Option(..., "--out", "-o", help="folder for the cutouts and catalogue.csv/.parquet"),
            format: str = typer.Option("jpeg", help="jpeg | fits (legacy: g, r, z bands)"),
            layer: Optional[str] = typer.Option(None, help="legacy: the viewer's layer (default ls-dr10)"),
            size: int = typer.Option(424, help="side in pixels (legacy at most 512, sdss 2048)"),
            pixscale: Optional[float] = typer.Option(None, help="arcsec per pixel (default the survey's: "
                                                                "0.262 legacy, 0.396 sdss)"),
            radius_column: Optional[str] = typer.Option(None, help="instead of --pixscale: each galaxy's radius "
                                                                   "in arcsec (e.g. petroR90_r)"),
            radius_multiple: float = typer.Option(8.48, help="with --radius-column: the side in radii (8.48: "
                                                             "Galaxy Zoo 2's framing)"),
            id_column: Optional[str] = typer.Option(None, help="file names from this column (default the first "
                                                               "of objid, id, galaxyid, ...; made safe)"),
            base_url: Optional[str] = typer.Option(None, help="another address for the service (mirror, test)"),
            concurrency: int = typer.Option(4, help="requests at once"),
            rate: float = typer.Option(5.0, help="request starts per second, retries included"),
            retries: int = typer.Option(4, help="retries on 5xx, 429, timeouts, bad bodies (never on 404)"),
            backoff: float = typer.Option(1.0, help="seconds before the first retry, doubled for each next"),
            timeout: float = typer.Option(30.0, help="seconds without an answer before a try fails"),
            max_wait: float = typer.Option(120.0, help="the longest pause, a server's Retry-After included")
            ) -> None:
    r"""Fetch a colour cutout for every catalogue position (pip install 'zoomorph\[cutouts]'); re-run to resume."""
    from zoomorph.api import cutouts as run_cutouts

    summary = run_cutouts(catalogue, out, survey=survey, format=format, layer=layer, size=size, pixscale=pixscale,
                          radius_column=radius_column, radius_multiple=radius_multiple, id_column=id_column,
                          base_url=base_url, concurrency=concurrency, rate=rate, retries=retries, backoff=backoff,
                          timeout=timeout, max_wait=max_wait)
    console.print(f"{summary.total:,} rows -> {summary.catalogue}: {summary.fetched:,} fetched, "
                  f"{summary.on_disk:,} already on disk, {summary.failed:,} failed (see the status and error "
                  f"columns); {summary.requests:,} requests in {summary.seconds:,.1f} s")
    for reason, n in list(summary.reasons.items())[:5]:
        console.print(f"  {n:,} failed: {escape(reason)}")

@app.command()
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


@app.command()
@user_errors
def pack(run: Path = typer.Argument(..., help="run folder (from `zoomorph train`), or a packed model to repack"),
         out: Optional[Path] = typer.Option(None, "--out", "-o", help="NAME.zoomorph to write (default RUN.zoomorph)"),
         onnx: bool = typer.Option(True, help="export the ONNX graph first when the run has none")) -> None:
    """Pack a run into one file: weights (safetensors), ONNX, config, metrics, model card, sha256 manifest."""
    from zoomorph.api import pack as run_pack

    path = run_pack(run, out, onnx=onnx)
    console.print(f"packed {path} ({path.stat().st_size / 1e6:,.1f} MB): `zoomorph info {path}` shows its card")


@app.command()
@user_errors
def info(run: Path = typer.Argument(..., help="run folder or packed model (NAME.zoomorph)")) -> None:
    """Print the model card of a run folder or a packed model (checked against its manifest first)."""
    from rich.markdown import Markdown

    from zoomorph.api import info as run_info

    console.print(Markdown(run_info(run)))


@app.command()
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
