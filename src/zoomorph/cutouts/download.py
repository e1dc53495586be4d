"""`zoomorph cutouts`: one cutout per catalogue row, fetched politely into a folder, with the catalogue beside it.

The folder holds the cutouts (<id>.jpg or .fits), `cutouts.json` (the options
that made them: a rerun with other ones is refused, since the files would not
match) and `catalogue.csv` / `.parquet`: the input's columns and
    path      the cutout's file name (relative to the folder, as `predict` reads it); empty when it failed
    status    fetched (now), on disk (whole from an earlier run, not fetched again) or failed
    error     why it failed: the last HTTP status, timeout or bad body, or a position or radius unusable
    pixscale  arcsec per pixel of the cutout
A rerun fetches only what is not on disk whole, so after a kill the same command carries on.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from zoomorph.cutouts import table
from zoomorph.cutouts.fetch import Politeness, RateLimiter, fetch, open_client, require_httpx
from zoomorph.cutouts.services import SUFFIXES, Service, cutout_url, service
from zoomorph.cutouts.valid import PROBLEMS
from zoomorph.errors import ZoomorphError
from zoomorph.files import replace_atomically
from zoomorph.io.catalogues import unused_name

DEFAULT_SIZE = 424  # the Kaggle images' side: predict decodes it without a size note
# Galaxy Zoo 2 drew its 424 px images at 0.02 x petroR90_r arcsec per pixel: a side of 8.48 radii
DEFAULT_RADIUS_MULTIPLE = 8.48
SETTINGS_FILE = "cutouts.json"
ADDED_COLUMNS = ("path", "status", "error", "pixscale")
FETCHED, ON_DISK, FAILED = "fetched", "on disk", "failed"


@dataclass(frozen=True)
class Job:
    name: str  # the cutout's file name in the folder
    url: str | None  # None: the row cannot be asked for (error says why)
    pixscale: float | None
    error: str | None = None


@dataclass
class CutoutSummary:
    out: Path  # the folder
    catalogue: Path  # the catalogue written beside the cutouts
    total: int
    fetched: int
    on_disk: int  # whole from an earlier run: not fetched again
    failed: int
    requests: int  # HTTP requests made, retries included
    seconds: float
    reasons: dict[str, int] = field(default_factory=dict)  # failure reason -> rows, most common first


def download_cutouts(catalogue: Path, out: Path, *, survey: str = "legacy", format: str = "jpeg",
                     layer: str | None = None, size: int = DEFAULT_SIZE, pixscale: float | None = None,
                     radius_column: str | None = None, radius_multiple: float = DEFAULT_RADIUS_MULTIPLE,
                     id_column: str | None = None, base_url: str | None = None,
                     politeness: Politeness | None = None, progress: bool = True) -> CutoutSummary:
    """Fetch a cutout for every row of `catalogue` into the folder `out` (module docstring)."""
    started = time.perf_counter()
    require_httpx()  # before anything is made: a missing extra leaves no folder behind
    found = service(survey, format, size, layer)
    politeness = politeness or Politeness()
    politeness.check()
    if base_url is not None and not (urlsplit(base_url).scheme in ("http", "https") and urlsplit(base_url).netloc):
        raise ZoomorphError(f"--base-url {base_url!r}: give an http:// or https:// address")
    if pixscale is not None and radius_column is not None:
        raise ZoomorphError("give a pixel scale or a radius column, not both: the radius sets the pixel scale")
    if (pixscale is not None and not pixscale > 0) or not radius_multiple > 0:
        raise ZoomorphError(f"the pixel scale ({pixscale}) and the radius multiple ({radius_multiple}) must be > 0")
    catalogue, out = Path(catalogue), Path(out)
    frame, kind = table.read_table(catalogue)
    if table.same_file(catalogue, out / f"catalogue.{kind}"):
        raise ZoomorphError(f"{catalogue} is the catalogue this command writes: give the original catalogue")
    scale = None if radius_column else pixscale or found.native_pixscale
    jobs = plan(frame, found, format, size, scale, radius_column, radius_multiple, id_column, layer, base_url)
    claim(out, {"survey": survey, "format": format, "layer": layer or found.default_layer, "size": size,
                "pixscale": scale, "radius_column": radius_column,
                "radius_multiple": radius_multiple if radius_column else None}, jobs)
    outcomes = run_jobs(jobs, out, format, politeness, progress)
    statuses = Counter(status for status, _, _ in outcomes)
    reasons = Counter(error for status, error, _ in outcomes if status == FAILED)
    written = table.write_table(described(frame, jobs, outcomes), out, kind)
    return CutoutSummary(out, written, len(jobs), statuses[FETCHED], statuses[ON_DISK], statuses[FAILED],
                         sum(n for _, _, n in outcomes), time.perf_counter() - started, dict(reasons.most_common()))


def plan(frame: pd.DataFrame, found: Service, format: str, size: int, pixscale: float | None,
         radius_column: str | None, radius_multiple: float, id_col: str | None, layer: str | None,
         base_url: str | None) -> list[Job]:
    """One job per row: its file name and URL, or why no request can be made for it."""
    ra_col, dec_col = table.position_columns(frame.columns)
    column = table.id_column(frame.columns, id_col)
    ids = [table.id_text(v) for v in frame[column]] if column is not None else [""] * len(frame)
    names = table.file_names(ids, SUFFIXES[format])
    ras, decs = table.numbers(frame[ra_col]), table.numbers(frame[dec_col])
    if radius_column is not None and radius_column not in frame.columns:
        raise ZoomorphError(f"--radius-column {radius_column!r}: no such column")
    radii = table.numbers(frame[radius_column]) if radius_column else None
    jobs = []
    for i, name in enumerate(names):
        ra, dec = ras[i], decs[i]
        if not (math.isfinite(ra) and math.isfinite(dec) and -90 <= dec <= 90):
            error = (f"{ra_col} {_cell(frame[ra_col].iloc[i])}, {dec_col} {_cell(frame[dec_col].iloc[i])}: "
                     f"not a position in degrees")
            jobs.append(Job(name, None, None, error))
            continue
        scale = pixscale
        if radii is not None:
            if not (math.isfinite(radii[i]) and radii[i] > 0):
                jobs.append(Job(name, None, None, f"{radius_column} {_cell(frame[radius_column].iloc[i])}: "
                                                  f"not a radius in arcsec"))
                continue
            scale = radius_multiple * radii[i] / size
        jobs.append(Job(name, cutout_url(found, format, ra % 360, dec, scale, size, layer, base_url), scale))
    return jobs


def _cell(value) -> str:
    return "empty" if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) \
        else repr(str(value))


def claim(out: Path, settings: dict, jobs: list[Job]) -> None:
    """Make `out` this command's folder, or check that it already is, with the same options; record each
    file's URL (before any is fetched), and remove a file on disk that an earlier catalogue fetched from
    another position under the same name: it is fetched again."""
    record = out / SETTINGS_FILE
    urls = {job.name: job.url for job in jobs if job.url}
    if record.is_file():
        try:
            before = json.loads(record.read_text())
        except (OSError, ValueError) as err:
            raise ZoomorphError(f"{record} cannot be read ({err}): give a new folder, or remove it to start "
                                "over") from None
        changed = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in settings.items() if before.get(k) != v]
        if changed:
            raise ZoomorphError(f"{out} holds cutouts made with other options ({'; '.join(changed)}): give the "
                                f"same options to carry on, or another folder")
        for name, url in (before.get("urls") or {}).items():
            if urls.get(name, url) != url:
                (out / name).unlink(missing_ok=True)
        settings = settings | {"urls": (before.get("urls") or {}) | urls}
        replace_atomically(record, lambda tmp: tmp.write_text(json.dumps(settings, indent=2) + "\n"))
        return
    settings = settings | {"urls": urls}
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ZoomorphError(f"{out} is not empty and holds no {SETTINGS_FILE}: give a new or empty folder "
                            f"(cutouts never write among files they did not make)")
    out.mkdir(parents=True, exist_ok=True)
    replace_atomically(record, lambda tmp: tmp.write_text(json.dumps(settings, indent=2) + "\n"))


def run_jobs(jobs: list[Job], out: Path, format: str, polite: Politeness,
             progress: bool) -> list[tuple[str, str, int]]:
    """(status, error, requests made) per job, in order; a cutout already on disk whole is not fetched."""
    problem = PROBLEMS[format]
    stop = threading.Event()
    limiter = RateLimiter(polite.rate, stop)
    outcomes: list = [None] * len(jobs)
    columns = (TextColumn("cutouts"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
               TimeRemainingColumn())
    window = polite.concurrency * 4  # jobs queued at once: a catalogue of millions is not all futures
    todo = iter(enumerate(jobs))
    counts: Counter = Counter()
    with open_client(polite) as client, ThreadPoolExecutor(polite.concurrency) as pool, \
            Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("cutouts", total=len(jobs), counts="")
        pending = {}
        try:
            while True:
                for i, job in itertools.islice(todo, window - len(pending)):
                    pending[pool.submit(_one, job, out, problem, client, polite, limiter)] = i
                if not pending:
                    break
                done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)  # hears Ctrl-C
                for future in done:
                    outcomes[pending.pop(future)] = future.result()
                    counts[future.result()[0]] += 1
                bar.update(task, advance=len(done), counts=", ".join(f"{n:,} {s}" for s, n in counts.items()))
        except BaseException:  # Ctrl-C: no new requests; what is on disk stays, whole, for the rerun
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return outcomes



def _one(job: Job, out: Path, problem, client, polite: Politeness, limiter: RateLimiter) -> tuple[str, str, int]:
    """One job in a worker thread: (status, error, requests made)."""
    if job.url is None:
        return FAILED, job.error, 0
    target = out / job.name
    if target.is_file() and problem(target.read_bytes()) is None:
        return ON_DISK, "", 0
    got = fetch(client, job.url, target, problem, polite, limiter)
    return (FETCHED, "", got.attempts) if got.error is None else (FAILED, got.error, got.attempts)

def described(frame: pd.DataFrame, jobs: list[Job], outcomes: list[tuple[str, str, int]]) -> pd.DataFrame:
    """The catalogue with the added columns (an input column of the same name gets an input_ prefix)."""
    taken = set(frame.columns) | set(ADDED_COLUMNS)
    result = frame.rename(columns={c: unused_name(f"input_{c}", taken) for c in ADDED_COLUMNS
                                   if c in frame.columns}).reset_index(drop=True)
    result["path"] = [None if status == FAILED else job.name for job, (status, _, _) in zip(jobs, outcomes)]
    result["status"] = [status for status, _, _ in outcomes]
    result["error"] = [error for _, error, _ in outcomes]
    result["pixscale"] = [job.pixscale for job in jobs]
    return result
