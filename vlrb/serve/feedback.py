"""The server's side of the feedback log (vlrb.feedback.store): each routed request's decision is written, and the
feedback clients post about it (POST /v1/feedback) is appended, by one writer thread, never by the event loop.

    writer = FeedbackWriter(path, on_failure=...)   # opens (or creates) the SQLite file; start() / stop()
    writer.log(decision)                            # queued, returns at once; a full queue or a failed write is a
                                                    #   warning and a count (on_failure), never the request's error
    await writer.feedback(request_id, reward, cost) # queued behind every decision logged before it: a client that
                                                    #   posts feedback as soon as it has its answer finds its decision

The thread writes what has queued up in one transaction per run of decisions (a busy server writes batches, not a
transaction per request) and one per feedback row (UnknownRequest for that row alone).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import queue
import threading
import uuid
from typing import Any, Callable

from vlrb.feedback.store import Decision, FeedbackError, FeedbackStore, check_reward
from vlrb.serve.errors import bad_request

log = logging.getLogger("vlrb.serve")
MAX_QUEUE = 10_000  # decisions waiting for the writer; beyond, they are dropped (counted) rather than held in memory
MAX_BATCH = 512  # decisions per transaction
STOP = object()
FEEDBACK_KEYS = {"id", "reward", "correct", "cost"}


def new_request_id() -> str:
    return f"vlrb-{uuid.uuid4().hex}"


def parse_feedback(body: Any) -> tuple[str, float, float | None]:
    """(request id, reward in [0, 1], cost or None) of a POST /v1/feedback body; a 400 naming the bad field."""
    if not isinstance(body, dict):
        raise bad_request("the feedback body must be a JSON object: {\"id\": ..., \"reward\": 0..1} or "
                          "{\"id\": ..., \"correct\": true|false}", code="invalid_json")
    unknown = set(body) - FEEDBACK_KEYS
    if unknown:
        raise bad_request(f"unknown feedback keys {sorted(unknown)} (known: {sorted(FEEDBACK_KEYS)})")
    rid = body.get("id")
    if not isinstance(rid, str) or not rid:
        raise bad_request("'id' is required: the request id of a routed request (header x-vlrb-request-id)", "id")
    if ("reward" in body) == ("correct" in body):
        raise bad_request("give exactly one of 'reward' (a number in [0, 1]) and 'correct' (true or false)", "reward")
    if "correct" in body:
        if not isinstance(body["correct"], bool):
            raise bad_request(f"'correct' must be true or false, got {body['correct']!r}", "correct")
        reward = float(body["correct"])
    else:
        r = body["reward"]
        if isinstance(r, bool) or not isinstance(r, (int, float)):
            raise bad_request(f"'reward' must be a number in [0, 1], got {r!r}", "reward")
        try:
            reward = check_reward(r)
        except FeedbackError as e:
            raise bad_request(str(e), "reward") from None
    cost = body.get("cost")
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, (int, float)) or not math.isfinite(cost)
                             or cost < 0):
        raise bad_request(f"'cost' must be a non-negative number ($ paid for the answer), got {cost!r}", "cost")
    return rid, reward, None if cost is None else float(cost)


class FeedbackWriter:
    """The feedback database behind a queue and one thread (see the module docstring)."""

    def __init__(self, path: str, *, meta: dict | None = None, on_failure: Callable[[int], None] | None = None):
        self.path = path
        self.store = FeedbackStore(path)  # FeedbackError (naming the file) when it is not a feedback database
        if meta:
            before = self.store.meta().get("models")
            if before is not None and before != meta.get("models"):  # read_log takes one model list per log
                log.warning("feedback log %s holds decisions over the models %s; this router's are %s: give this "
                            "server its own feedback.path", path, before, meta.get("models"))
            self.store.set_meta(**meta)
        self.on_failure = on_failure
        self.queue: queue.Queue = queue.Queue(maxsize=MAX_QUEUE)
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="vlrb-feedback-writer", daemon=True)
        self.thread.start()

    async def stop(self) -> None:
        """Writes what is queued, then closes the database."""
        if self.thread is not None:
            await asyncio.to_thread(self._put_blocking, STOP)
            await asyncio.to_thread(self.thread.join, 30)
            self.thread = None
        await asyncio.to_thread(self.store.close)

    def _put_blocking(self, item) -> None:
        self.queue.put(item)

    def log(self, decision: Decision) -> None:
        """Queue one decision (from the event loop: never blocks)."""
        try:
            self.queue.put_nowait(decision)
        except queue.Full:
            log.warning("feedback log: %d decisions waiting; request %s not logged", MAX_QUEUE, decision.id)
            self._failed(1)

    async def feedback(self, request_id: str, reward: float, cost: float | None) -> None:
        """Append one feedback row once every decision queued before it is written (UnknownRequest, FeedbackError)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self.queue.put_nowait((request_id, reward, cost, fut))
        except queue.Full:
            await asyncio.to_thread(self._put_blocking, (request_id, reward, cost, fut))
        await asyncio.wrap_future(fut)

    def _failed(self, n: int) -> None:
        if self.on_failure is not None:
            self.on_failure(n)

    # ------------------------------------------------------------------ the writer thread
    def _run(self) -> None:
        while True:
            items = [self.queue.get()]
            while len(items) < MAX_BATCH:
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            batch: list[Decision] = []
            for item in items:
                if isinstance(item, Decision):
                    batch.append(item)
                    continue
                self._write_decisions(batch)  # before the feedback behind them
                batch = []
                if item is STOP:
                    return
                self._write_feedback(*item)
            self._write_decisions(batch)

    def _write_decisions(self, batch: list[Decision]) -> None:
        if not batch:
            return
        try:
            self.store.log_decisions(batch)
            return
        except Exception as e:  # one bad row must not lose the others: write them one by one
            if len(batch) == 1:
                log.warning("feedback log: decision %s not written (%s: %s)", batch[0].id, type(e).__name__, e)
                self._failed(1)
                return
        for d in batch:
            self._write_decisions([d])

    def _write_feedback(self, request_id: str, reward: float, cost: float | None,
                        fut: concurrent.futures.Future) -> None:
        try:
            self.store.add_feedback(request_id, reward, cost)
        except Exception as e:
            fut.set_exception(e)
        else:
            fut.set_result(None)
