"""Dynamic batching: the images of concurrent requests gathered into one model call.

A model call on 64 images costs little more than on one, so under load the server gathers what the
requests in flight bring: after the first image waiting, it takes every image already queued, and
waits at most `max_wait_s` for more while other requests are still being decoded (none decoding:
no wait, so a lone client is not slowed), up to `batch_size` images. The model runs in one thread
of its own, never on the event loop; while it runs, the next batch queues up. Requests with other
options (TTA) share calls with their likes only; an MC dropout request runs alone, seeded as
predict seeds a first batch, so that its answer does not depend on who else was asking.
"""

from __future__ import annotations

import asyncio
import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from zoomorph.serve.model import Options

RunBatch = Callable[[np.ndarray, Options], np.ndarray]  # pixels (n, H, W, 3), options -> samples (S, n, K)


@dataclass
class _Item:
    pixels: np.ndarray
    options: Options
    future: asyncio.Future
    key: tuple = field(default=())


class Batcher:
    def __init__(self, run_batch: RunBatch, batch_size: int = 64, max_wait_s: float = 0.005):
        self.run_batch, self.batch_size, self.max_wait_s = run_batch, batch_size, max_wait_s
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="zoomorph-model")
        self.queue: asyncio.Queue[_Item] | None = None
        self.task: asyncio.Task | None = None
        self.incoming = 0  # images of requests being decoded: worth waiting for
        self.batches = self.images = 0  # model calls and images run, for /readyz and the tests
        self._alone = itertools.count()

    def start(self) -> None:
        """Start gathering on the running event loop (the app's lifespan)."""
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._gather())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=True)

    @property
    def waiting(self) -> int:
        return self.queue.qsize() if self.queue is not None else 0

    def expect(self, n: int) -> None:
        """`n` images are being decoded (negative: no longer): a batch may wait a moment for them."""
        self.incoming += n

    async def submit(self, pixels: np.ndarray, options: Options) -> np.ndarray:
        """(S, n, K) samples for these pixels, from a batch shared with other requests."""
        assert self.queue is not None, "Batcher.start() first"
        future = asyncio.get_running_loop().create_future()
        key = ("mc", next(self._alone)) if options.mc_samples else (options.tta,)
        self.queue.put_nowait(_Item(pixels, options, future, key))
        return await future

    async def call(self, fn: Callable[..., Any], *args) -> Any:
        """fn(*args) in the model's thread (Grad-CAM: the network is not for two threads at once)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _gather(self) -> None:
        loop = asyncio.get_running_loop()
        carried = None  # an item that did not fit the last batch: it starts the next
        while True:
            items, carried = [carried or await self.queue.get()], None
            n, deadline = len(items[0].pixels), loop.time() + self.max_wait_s
            while n < self.batch_size:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if self.incoming <= 0 or left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                if n + len(item.pixels) > self.batch_size:  # batches stay within batch_size (one big request aside)
                    carried = item
                    break
                items.append(item)
                n += len(item.pixels)
            groups: dict[tuple, list[_Item]] = {}
            for item in items:
                groups.setdefault(item.key, []).append(item)
            for group in groups.values():
                await self._run(group)

    async def _run(self, group: list[_Item]) -> None:
        live = [item for item in group if not item.future.done()]  # a request that timed out is gone
        if not live:
            return
        pixels = live[0].pixels if len(live) == 1 else np.concatenate([item.pixels for item in live])
        try:
            samples = await self.call(self.run_batch, pixels, live[0].options)
        except Exception as err:  # noqa: BLE001 (the requests answer it: a bug, logged there, not a dead loop)
            for item in live:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        self.batches, self.images = self.batches + 1, self.images + len(pixels)
        start = 0
        for item in live:
            stop = start + len(item.pixels)
            if not item.future.done():
                item.future.set_result(samples[:, start:stop])
            start = stop
