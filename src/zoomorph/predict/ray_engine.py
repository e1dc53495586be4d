"""The Ray engine: the local engine's work spread over a Ray cluster (docs/scaling-out.md).

    sources (blocks of one output chunk, CHUNKS_PER_DATASET chunks per dataset)
      -> decode: map_batches tasks on CPUs
      -> infer: map_batches on an actor pool (one actor per GPU, or CPU actors)
      -> result rows stream back to the driver in input order -> writers.PartWriter

The driver writes the Parquet parts and assembles them exactly as the local
engine does, so the output, the formats and resuming are the same, and the
output lands where the driver runs even when the cluster shares no disk with
it. The images and the run folder must be readable from every node. Ray is
an optional dependency, imported only here.
"""

from __future__ import annotations

import itertools
import logging
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

from zoomorph.errors import MissingExtra
from zoomorph.io.decode import FOV_COLUMNS, Fov, decode_batch
from zoomorph.predict.local_engine import batch_size_for
from zoomorph.predict.results import PredictOptions, ResultRows
from zoomorph.runs import Run

LOCAL_CPUS = 2  # a local Ray instance stays small: it shares the machine with everything else
# The listing goes to Ray a few hundred thousand rows at a time, so the driver never holds it whole.
CHUNKS_PER_DATASET = 64


def _decode(batch: dict[str, np.ndarray], size: int, fov: Fov) -> dict[str, np.ndarray]:
    _, readable, errors, measured = decode_batch((0, list(batch["source"]), size, fov))
    errors = np.asarray(errors, dtype=object)
    pixels = np.zeros((len(errors), size, size, 3), np.uint8)  # a column needs one shape: blanks for errors
    pixels[errors == ""] = readable
    return {"row": batch["row"], "pixels": pixels, "error": errors, **measured}


class _Infer:
    """An actor holding one loaded model."""

    def __init__(self, run: Run, options: PredictOptions):
        self.rows = ResultRows(run, options)

    def __call__(self, batch: dict[str, np.ndarray]) -> pd.DataFrame:
        ok = batch["error"] == ""
        results = self.rows.of_batch(batch["pixels"][ok], list(batch["error"]), seed=int(batch["row"][0]),
                                     fov={c: batch[c] for c in FOV_COLUMNS})
        return results.assign(row=batch["row"])


def ray_results(run: Run, chunks: Iterable[tuple[int, list[str]]], *, batch_size: int | None,
                actors: int | None, ray_address: str | None,
                options: PredictOptions) -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
    """(listing rows, result rows) for `chunks` ((first row, sources) each), in order, computed on Ray.

    `actors`: inference actors; by default one per GPU in the cluster, else one.
    """
    try:
        import ray  # optional (pip install zoomorph[ray]): predict imports this module without it
    except ImportError:
        raise MissingExtra("engine='ray' needs Ray: pip install zoomorph[ray]") from None

    started_here = not ray.is_initialized()
    if started_here:
        if ray_address:
            ray.init(address=ray_address, logging_level=logging.WARNING)
        else:
            # address="local": a private instance, never another Ray already running on this machine
            ray.init(address="local", num_cpus=LOCAL_CPUS, include_dashboard=False, logging_level=logging.WARNING)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows come back in input order: chunks fill one by one
        context.enable_progress_bars = False  # predict() shows its own
        cfg = run.config
        gpus = int(ray.cluster_resources().get("GPU", 0))
        batch_size = batch_size or batch_size_for(cuda=gpus > 0)
        chunks = iter(chunks)
        while group := list(itertools.islice(chunks, CHUNKS_PER_DATASET)):
            blocks = [pd.DataFrame({"row": np.arange(start, start + len(sources)), "source": sources})
                      for start, sources in group]
            ds = (ray.data.from_pandas(blocks)
                  .map_batches(_decode, fn_kwargs=dict(size=cfg.image_size, fov=cfg.fov), batch_size=batch_size,
                               batch_format="numpy")
                  .map_batches(_Infer, fn_constructor_kwargs=dict(run=run, options=options),
                               batch_size=batch_size, batch_format="numpy", concurrency=actors or max(gpus, 1),
                               num_gpus=1 if gpus else 0))
            for results in ds.iter_batches(batch_size=None, batch_format="pandas"):
                yield results.pop("row").to_numpy(), results
    finally:
        if started_here:
            ray.shutdown()
