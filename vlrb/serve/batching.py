"""Micro-batching: requests that arrive together share one router forward (the encoder runs once per batch).

A request waits at most `max_wait_ms` after it arrived for others to join it (default 0: when the router is free a
request starts at once, and the requests that arrive during a forward form the next batch, so a lone request pays
no wait and a busy server still batches); a batch holds at most `max_batch`; the queue holds at most `max_queue`
waiting requests (beyond that: `Overloaded`, a 503, rather than unbounded memory and latency). The forward runs in
one worker thread, so the event loop keeps accepting requests (and forming the next batch) meanwhile. A batch that
raises is run again one request at a time: the request that fails gets its error, the others their answers.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

log = logging.getLogger("vlrb.serve")


def _set_threads(threads: int | None) -> None:
    """A router thread's intra-op torch threads (OpenMP: per thread)."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))


class Overloaded(Exception):
    """The queue is full."""


class MicroBatcher:
    def __init__(self, fn: Callable[[list], Sequence], *, max_batch: int = 64, max_wait_ms: float = 0.0,
                 max_queue: int = 1024, on_batch: Callable[[int, float], None] | None = None, workers: int = 1,
                 threads: int | None = None):
        """`fn(items) -> results` (one per item, in order) runs in a worker thread; `on_batch(size, seconds)`
        is told about each batch (metrics). `workers` batches run at once, each on its own thread with `threads`
        torch threads (None: torch's default)."""
        self.fn = fn
        self.workers, self.threads = max(1, int(workers)), threads
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="vlrb-router",
                                            initializer=_set_threads, initargs=(self.threads,))
        self._tasks = [asyncio.create_task(self._run()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        while self._queue is not None and not self._queue.empty():  # nobody will answer these now
            _, fut, _ = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(Overloaded("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, item: Any) -> Any:
        """The result of `fn` for this item, computed in a batch with whatever else arrived meanwhile."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        fut = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, fut, time.perf_counter()))
        except asyncio.QueueFull:
            raise Overloaded(f"{self.max_queue} requests are already waiting for the router") from None
        return await fut

    async def _next_batch(self) -> list:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = batch[0][2] + self.max_wait  # counted from the first request's arrival, not from now
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return [b for b in batch if not b[1].done()]  # a client that went away is not computed

    def _call(self, items: list) -> Sequence:
        results = self.fn(items)
        if len(results) != len(items):
            raise RuntimeError(f"the router returned {len(results)} results for {len(items)} inputs")
        return results

    async def _one_by_one(self, batch: list) -> None:
        """Each request of a failed batch alone: the one that fails gets its error, every other its result."""
        loop = asyncio.get_running_loop()
        for item, fut, _ in batch:
            if fut.done():
                continue
            try:
                result = (await loop.run_in_executor(self._executor, self._call, [item]))[0]
            except Exception as e:  # noqa: BLE001
                log.error("router failed on a request: %s: %s", type(e).__name__, e)
                if not fut.done():
                    fut.set_exception(e)
                continue
            if not fut.done():
                fut.set_result(result)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._call, [b[0] for b in batch])
            except Exception as e:  # noqa: BLE001 - one item may be the cause: each runs alone, the loop goes on
                if len(batch) == 1:
                    log.error("router failed on a request: %s: %s", type(e).__name__, e)
                    if not batch[0][1].done():
                        batch[0][1].set_exception(e)
                    continue
                log.warning("router batch of %d failed (%s: %s); running its requests one by one", len(batch),
                            type(e).__name__, e)
                await self._one_by_one(batch)
                continue
            seconds = time.perf_counter() - t0
            log.debug("router batch of %d in %.0f ms (first request waited %.0f ms)", len(batch), seconds * 1000,
                      (t0 - batch[0][2]) * 1000)
            if self.on_batch is not None:
                self.on_batch(len(batch), seconds)
            for (_, fut, _), r in zip(batch, results):
                if not fut.done():
                    fut.set_result(r)
