"""The local engine: result rows for spans of sources, computed by worker processes on this machine.

On a CPU each worker decodes *and* predicts its own batches with one thread:
every core runs the whole pipeline, no pixels cross processes and no thread
pools fight over the cores. On a GPU the model stays in the calling process
(one CUDA context) and the workers only decode. The batch-size default lives
here too, as the Ray engine shares it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from multiprocessing.pool import Pool
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import torch

from zoomorph.io.decode import AUTO, compile_auto_fov, decode_batch, default_workers
from zoomorph.predict.results import PredictOptions, ResultRows
from zoomorph.runs import Run

# Batches per CPU worker task: fewer, larger tasks, as each one costs the pool's threads here some
# CPU time that the workers then lack (measured ~3% of the run at one batch per task).
BATCHES_PER_TASK = 4


def batch_size_for(cuda: bool) -> int:
    """The default batch: 64 on a CPU, where small batches stay in the caches (measured ~10% faster
    than 256 with every backend), 256 on a GPU."""
    return 256 if cuda else 64


def ordered(fn: Callable, tasks: Iterable, pool: Pool | None, window: int) -> Iterator:
    """fn over `tasks`, in order, in `pool` (None: here), at most `window` tasks ahead.

    A bounded window rather than Pool.imap: imap runs ahead as far as the
    workers can, so a slow consumer would let results pile up in memory.
    """
    if pool is None:
        yield from map(fn, tasks)
        return
    pending: deque = deque()
    for task in tasks:
        pending.append(pool.apply_async(fn, (task,)))
        if len(pending) > window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


@dataclass(frozen=True)
class WorkerTask:
    """A CPU worker's task: decode and predict `sources` (listing rows from `start` on), `batch_size` at a time."""

    run: Run
    options: PredictOptions
    start: int
    sources: list[str]
    batch_size: int


_loaded: dict = {}  # in a worker: the ResultRows of the one (run folder, options) it serves


def _worker_rows(run: Run, options: PredictOptions) -> ResultRows:
    key = (run.dir, options)
    if key not in _loaded:
        # One thread: the workers already fill the cores, and torch's OpenMP pool
        # cannot start more threads in a forked child (it hangs).
        torch.set_num_threads(1)
        _loaded.clear()
        _loaded[key] = ResultRows(run, options)
    return _loaded[key]


def predict_batches(task: WorkerTask) -> tuple[int, pd.DataFrame]:
    """In a CPU worker: decode and predict a span of sources, batch by batch (the model loads with the
    worker's first task). Each batch is seeded by its start, whichever worker runs it."""
    rows, cfg = _worker_rows(task.run, task.options), task.run.config
    results = []
    for offset in range(0, len(task.sources), task.batch_size):
        start = task.start + offset
        _, pixels, errors, fov = decode_batch((start, task.sources[offset:offset + task.batch_size],
                                               cfg.image_size, cfg.fov))
        results.append(rows.of_batch(pixels, errors, seed=start, fov=fov))
    return task.start, pd.concat(results, ignore_index=True)


def local_results(run: Run, chunks: Iterable[tuple[int, list[str]]], *, batch_size: int | None,
                  workers: int | None, options: PredictOptions) -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
    """Result rows, batch by batch, in input order, for `chunks`: (first row, sources) each."""
    workers, cuda = default_workers(workers), torch.cuda.is_available()
    batch_size = batch_size or batch_size_for(cuda)
    on_cpus = workers > 0 and not cuda
    step = batch_size * (BATCHES_PER_TASK if on_cpus else 1)
    spans = ((start + s, sources[s:s + step]) for start, sources in chunks for s in range(0, len(sources), step))
    if run.config.fov == AUTO:
        compile_auto_fov()  # before the workers fork, so that they share it
    # The pool forks before the model is loaded (and before CUDA starts): light, clean children.
    with mp.get_context().Pool(workers) if workers else nullcontext() as pool:
        if on_cpus:
            tasks = (WorkerTask(run, options, start, sources, batch_size) for start, sources in spans)
            for start, results in ordered(predict_batches, tasks, pool, window=2 * workers):
                yield np.arange(start, start + len(results)), results
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(1 if cuda else os.cpu_count() or 1)  # on a GPU this thread mostly waits
        try:
            rows = ResultRows(run, options)
            decodes = ((start, sources, run.config.image_size, run.config.fov) for start, sources in spans)
            for start, pixels, errors, fov in ordered(decode_batch, decodes, pool, window=2 * max(workers, 1)):
                yield np.arange(start, start + len(errors)), rows.of_batch(pixels, errors, seed=start, fov=fov)
        finally:
            torch.set_num_threads(previous)
