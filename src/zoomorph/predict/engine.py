"""`predict()`: any number of images, streamed, into one output file; the choices it makes.

Each batch of sources is decoded into one uint8 array (DCT-draft JPEG decoding,
images.load) and run through the model in one call, by the local engine
(local_engine.py: worker processes) or on Ray (ray_engine.py). The input
listing goes to disk first (listing.py) and is read back a chunk at a time,
and at most a few batches are in flight, so memory does not grow with the
input count. Results go to writers.PartWriter chunk by chunk, which is what
makes a killed run resumable. Here: the checks, the backend choice, the
fingerprint, the lock on OUT.parts and the progress bar.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from zoomorph.errors import MissingExtra, ZoomorphError
from zoomorph.io.decode import AUTO, AUTO_CUT
from zoomorph.labels import get_preset
from zoomorph.predict.guards import check_not_listed, check_out
from zoomorph.predict.healpix import COLUMN as HEALPIX_COLUMN, Healpix, check_healpix
from zoomorph.predict.listing import Listing
from zoomorph.predict.local_engine import local_results
from zoomorph.predict.onnx import exported
from zoomorph.predict.ray_engine import ray_results
from zoomorph.predict.results import PredictOptions, output_columns, result_schema
from zoomorph.predict.writers import FORMATS, PartWriter, discard_parts, disk_full, finished, is_disk_full, parts_dir
from zoomorph.runs import Run, RunConfig, RunFileError, file_digest

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None

BACKENDS = ("torch", "onnx", "onnx-int8")  # and "auto", the default: one of the first two (chosen_backend)
ENGINES = ("local", "ray")
LOCK_FILE = "lock"


@dataclass
class PredictSummary:
    total: int  # inputs, one output row each
    ok: int  # rows with predictions
    errors: int  # rows whose image could not be read
    out: Path
    predicted: int  # inputs predicted by this call: fewer than total when it resumed an earlier one
    images_per_s: float  # those per second of this call's wall time (0 when nothing was left to do)
    backend: str  # the one that ran: "auto" resolved
    already_complete: bool = False  # out was this very prediction's finished output: nothing was redone


# ---------------------------------------------------------------- predict()

SUFFIX_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".fits": "fits", ".fit": "fits",
                  ".fts": "fits", ".vot": "votable", ".votable": "votable", ".ecsv": "ecsv", ".hdf5": "hdf5",
                  ".h5": "hdf5"}


def output_format(out: Path, fmt: str | None) -> str:
    """The format asked for, else the one --out's suffix names (SUFFIX_FORMATS), else parquet; a --out whose
    suffix names another format is refused (a Kaggle submission is a .csv), as a file that says one thing
    and holds another misleads every reader."""
    suffix = out.suffix.lower()
    if suffix in (".gz", ".bz2", ".xz", ".zst", ".zip"):  # x.fits.gz would be Parquet bytes under a FITS name
        raise ZoomorphError(f"--out {out}: predict writes no compressed file (it is written part by part and "
                            f"resumed); write {out.with_suffix('').name} and compress it afterwards")
    named = SUFFIX_FORMATS.get(suffix)
    fmt = fmt or named or "parquet"
    if named and fmt != named and (named, fmt) != ("csv", "kaggle"):
        raise ZoomorphError(f"--out {out} ends in {suffix} but the format is {fmt}: give --out a matching suffix")
    return fmt


def _check_sizes(batch_size: int | None, workers: int | None, chunk_size: int) -> None:
    for value, what, least in ((batch_size, "batch_size", 1), (workers, "workers", 0), (chunk_size, "chunk_size", 1)):
        if value is not None and value < least:
            raise ZoomorphError(f"{what}={value}: it must be {least} or more")


def _check(cfg: RunConfig, fmt: str, backend: str, engine: str, mc_samples: int, preset: str | None) -> None:
    for value, allowed, what in ((fmt, FORMATS, "format"), (backend, BACKENDS, "backend"),
                                 (engine, ENGINES, "engine")):
        if value not in allowed:
            raise ZoomorphError(f"unknown {what} {value!r}: choose one of {', '.join(allowed)}")
    if fmt == "kaggle" and cfg.head != "votes":
        raise ZoomorphError("format 'kaggle' writes the 37 vote fractions: it needs a run trained with the votes "
                         f"head, and this run has the {cfg.head!r} head (use parquet or csv)")
    if preset and cfg.head != "votes":
        raise ZoomorphError("a preset derives classes from vote fractions: it needs a votes run "
                         "(a classes run already predicts its classes)")
    if mc_samples == 1 or mc_samples < 0:
        raise ZoomorphError(f"mc_samples={mc_samples}: MC dropout needs 2 samples or more (0 turns it off)")
    if mc_samples and backend != "torch":
        raise ZoomorphError("MC dropout needs backend='torch' (the ONNX graphs are exported in eval mode)")
    if preset:
        get_preset(preset)  # an unknown name or a bad rules file fails now, not after the first batch
    if engine == "ray" and importlib.util.find_spec("ray") is None:
        raise MissingExtra("engine='ray' needs Ray: pip install zoomorph[ray]")


@contextmanager
def _claimed(parts: Path) -> Iterator[None]:
    """Hold OUT.parts for this call, so that a second predict into the same --out at the same time is
    refused instead of rewriting the listing this one reads. If this call made the folder and fails
    before writing a part, the folder goes: there is nothing to resume.

    A POSIX record lock (lockf), not flock: forked workers do not inherit it, so it ends with this
    process even when a SIGKILL leaves workers finishing their task.
    """
    made = not parts.exists()
    parts.mkdir(parents=True, exist_ok=True)
    with open(parts / LOCK_FILE, "w") as lock:
        if fcntl is not None:  # POSIX; elsewhere nothing stops two calls
            try:
                fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                raise ZoomorphError(f"another predict is writing {parts} right now: wait for it to end") from None
        try:
            yield
        except BaseException:
            if made and not any(parts.glob("part-*.parquet")):
                shutil.rmtree(parts, ignore_errors=True)
            raise


def _galaxy_ids(listing: Listing) -> None:
    if listing.not_numeric is not None:
        raise ZoomorphError("format 'kaggle' needs numeric GalaxyIDs, but some file names are not numbers "
                         f"(e.g. {listing.not_numeric!r})")


def _fingerprint(run: Run, listing: Listing, settings: dict) -> str:
    """Changes when the input listing, the run (config and weights) or a result-changing setting does."""
    h = hashlib.sha256(listing.digest.encode())
    h.update(run.config_file.read_bytes())
    h.update(run.weights_digest.encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def chosen_backend(backend: str, engine: str, mc_samples: int) -> str:
    """What "auto" runs: the float32 ONNX graph on a CPU (the same probabilities as torch within 1e-4,
    1.4-1.8x as fast end to end); torch on a GPU, for MC dropout (the graphs are exported in eval mode)
    and on Ray (whose actors may hold GPUs)."""
    if backend != "auto":
        return backend
    return "torch" if mc_samples or engine == "ray" or torch.cuda.is_available() else "onnx"


def _graph_digest(run: Run, backend: str, auto: bool, progress: bool) -> str | None:
    """Export the graph once, here, before any worker or actor starts; its sha256 (None: use torch).

    Only for "auto" does a graph that cannot be made (a read-only run folder, an op the exporter
    lacks) fall back to torch, with a warning; a backend asked for by name fails."""
    try:
        graph = exported(run, int8=backend == "onnx-int8", say=Console().print if progress else None)
    except (RunFileError, FileNotFoundError):  # a damaged or missing model.pt: torch could not serve it either
        raise
    except Exception as err:  # noqa: BLE001 (any export failure: torch still serves the model as trained)
        if not auto:
            raise
        warnings.warn(f"could not export {run.source} to ONNX ({type(err).__name__}: {err}); predicting with torch",
                      stacklevel=3)
        return None
    return file_digest(graph)


def predict(run: Run | Path, inputs: list[str | Path], out: Path, *, format: str | None = None,
            backend: str = "auto", engine: str = "local", tta: bool = False, mc_samples: int = 0,
            batch_size: int | None = None, workers: int | None = None, chunk_size: int = 4096,
            preset: str | None = None, ray_address: str | None = None, progress: bool = True,
            overwrite: bool = False, healpix: int | None = None) -> PredictSummary:
    """Classify every image in `inputs` into `out`: one row per input, in input order (docs/predict.md).

    `format`: parquet, csv, kaggle, fits, votable, ecsv or hdf5; by default the one `out`'s suffix names,
    else parquet (docs/catalogues.md). `healpix`: an order, to add the nested HEALPix pixel of each row's
    RA and Dec (needs the healpix extra and a catalogue with RA and Dec).
    Resumable: rerun the same call after a crash, a kill or a full disk and it carries on from the parts
    written; rerun after it finished, it says so (`already_complete`) unless `overwrite`. An existing `out`
    that is not predict's own output is replaced only with `overwrite`; an input never is.
    Images are cut with the run's field of view: a run trained on fov "auto" measures each galaxy, and
    its output has the fov_radius, fov_crop and fov_flag columns.
    """
    started = time.perf_counter()
    run, out = Run.of(run), Path(out)
    run.check_cut()  # before anything is exported or claimed
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)  # read twice: checks, then listing
    cfg = run.config
    auto, backend = backend == "auto", chosen_backend(backend, engine, mc_samples)
    format = output_format(out, format)
    _check(cfg, format, backend, engine, mc_samples, preset)
    _check_sizes(batch_size, workers, chunk_size)
    if healpix is not None:
        check_healpix(healpix)
    check_out(out, inputs, format, overwrite)
    graph = _graph_digest(run, backend, auto, progress) if backend != "torch" else None
    if graph is None:  # torch asked for, chosen, or fallen back to
        backend = "torch"
        run.load_model()  # a damaged model.pt fails here, once, rather than in every worker
    columns = output_columns(cfg, preset, mc_samples)
    options = PredictOptions(backend=backend, tta=tta, mc_samples=mc_samples, preset=preset)
    # the graph's digest too: a re-calibrated int8 graph gives other results
    settings = options.as_settings() | {"chunk_size": chunk_size} | ({"graph_sha256": graph} if graph else {})
    if healpix is not None:  # parts with and without the column cannot be joined
        settings["healpix"] = healpix
    if cfg.fov == AUTO:  # the run's field of view is its galaxies' own: another version cuts other pixels
        settings["fov_auto"] = AUTO_CUT
    writer = None
    try:
        with _claimed(parts_dir(out)):
            reserved = frozenset(columns) | ({HEALPIX_COLUMN} if healpix is not None else set())
            listing = Listing.scan(inputs, parts_dir(out), chunk_size, reserved=reserved,
                                   check=_galaxy_ids if format == "kaggle" else None)
            check_not_listed(out, listing)
            pixels = None if healpix is None else Healpix(healpix, listing.schema)
            fingerprint = _fingerprint(run, listing, settings)
            done = None if overwrite else finished(out)
            if done and (done["fingerprint"], done["format"]) == (fingerprint, format):
                discard_parts(out, fingerprint)
                return PredictSummary(listing.rows, done["ok"], done["errors"], out, 0, 0.0, backend, True)
            writer = PartWriter(out, listing, result_schema(cfg, preset, mc_samples), fingerprint, pixels)
            pending = writer.pending()
            todo = sum(stop - start for start, stop in map(listing.chunk_rows, pending))
            if pending:
                chunks = ((listing.chunk_rows(k)[0], listing.sources(k)) for k in pending)  # read when needed
                if engine == "ray":
                    stream = ray_results(run, chunks, batch_size=batch_size, actors=workers,
                                         ray_address=ray_address, options=options)
                else:
                    stream = local_results(run, chunks, batch_size=batch_size, workers=workers, options=options)
                _consume(stream, writer, todo, progress)
            ok, errors = writer.finish(format)
    except OSError as err:
        if not is_disk_full(err):
            raise
        raise disk_full(out, writer) from err
    seconds = time.perf_counter() - started
    return PredictSummary(listing.rows, ok, errors, out, todo, todo / seconds if todo else 0.0, backend)


def _consume(stream: Iterator[tuple[np.ndarray, pd.DataFrame]], writer: PartWriter, todo: int,
             progress: bool) -> None:
    columns = (TextColumn("predicting"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]} img/s"), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("predict", total=todo, rate="-")
        for rows, results in stream:
            writer.add(rows, results)
            bar.advance(task, len(rows))
            speed = bar.tasks[0].speed
            bar.update(task, rate=f"{speed:,.0f}" if speed else "-")
