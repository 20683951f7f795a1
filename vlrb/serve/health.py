"""Per-upstream health: a circuit breaker per model, so a failing endpoint stops costing every request a failed try.

    closed     calls go through; a failure (what UpstreamPool counts as the upstream's problem: unreachable, a
               timeout, HTTP 408/429/5xx) is remembered for `window_s` seconds; `failures` of them within the window
               open the breaker
    open       the model is out: routing leaves it out of the candidates (the choice and the fallbacks), and a call
               that was already on its way is skipped, for `open_s` seconds
    half_open  then one call (the probe) may go to it: its success closes the breaker, its failure opens it again
               for another `open_s`; other requests leave the model out while the probe is out

`breaker.failures: 0` turns breakers off. The state lives in the event loop's thread (no lock): it is read and
changed only there (routing, forwarding, /health, /metrics). The clock is injectable for tests.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Callable, Iterable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)


class Breaker:
    """One model's breaker (see the module docstring)."""

    def __init__(self, failures: int, window_s: float, open_s: float, clock: Callable[[], float] = time.monotonic):
        self.failures, self.window_s, self.open_s, self.clock = failures, window_s, open_s, clock
        self.recent: deque[float] = deque()  # times of the failures within the window (closed)
        self.opened_at: float | None = None  # None: closed
        self.probing = False  # the half-open probe is out
        self.openings = 0

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return CLOSED
        return OPEN if self.clock() < self.opened_at + self.open_s else HALF_OPEN

    def available(self) -> bool:
        """May routing pick this model now? Closed, or half-open with its probe not yet taken."""
        s = self.state
        return s == CLOSED or (s == HALF_OPEN and not self.probing)

    def acquire(self) -> str | None:
        """At call time: "call" (closed), "probe" (half-open: this call is the one probe), or None (skip it)."""
        s = self.state
        if s == CLOSED:
            return "call"
        if s == HALF_OPEN and not self.probing:
            self.probing = True
            return "probe"
        return None

    def record(self, ok: bool, ticket: str) -> bool:
        """The outcome of a call `acquire` let through; True when this failure opened the breaker."""
        now = self.clock()
        if ticket == "probe":
            self.probing = False
            if ok:
                self.opened_at, self.recent = None, deque()
                return False
            return self._open(now)
        if self.opened_at is not None or ok:  # a straggler from before it opened, or a success: nothing changes
            return False
        self.recent.append(now)
        self._forget(now)
        return self._open(now) if len(self.recent) >= self.failures else False

    def release(self, ticket: str | None) -> None:
        """A call that ended with no outcome (the client went away): its probe, if it was one, is free again."""
        if ticket == "probe":
            self.probing = False

    def retry_in(self) -> float:
        """Seconds until a probe may go (0 when closed or half-open)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.open_s - self.clock())

    def recent_failures(self) -> int:
        self._forget(self.clock())
        return len(self.recent)

    def _open(self, now: float) -> bool:
        self.opened_at, self.recent = now, deque()
        self.openings += 1
        return True

    def _forget(self, now: float) -> None:
        while self.recent and self.recent[0] <= now - self.window_s:
            self.recent.popleft()


class Breakers:
    """A breaker per model; `on_open(model)` is called each time one opens (a metric). `failures=0`: all off (every
    model always available)."""

    def __init__(self, models: Iterable[str], *, failures: int, window_s: float, open_s: float,
                 clock: Callable[[], float] = time.monotonic, on_open: Callable[[str], None] | None = None):
        self.enabled = failures > 0
        self.by_model = {m: Breaker(failures, window_s, open_s, clock) for m in models}
        self.on_open = on_open

    def available(self, model: str) -> bool:
        b = self.by_model.get(model)
        return b is None or not self.enabled or b.available()

    def acquire(self, model: str) -> str | None:
        b = self.by_model.get(model)
        return "call" if b is None or not self.enabled else b.acquire()

    def record(self, model: str, ok: bool, ticket: str | None) -> None:
        b = self.by_model.get(model)
        if b is None or not self.enabled or ticket is None:
            return
        if b.record(ok, ticket) and self.on_open is not None:
            self.on_open(model)

    def release(self, model: str, ticket: str | None) -> None:
        b = self.by_model.get(model)
        if b is not None:
            b.release(ticket)

    def retry_in(self, models: Iterable[str]) -> float:
        """Seconds until the first of `models` may be probed."""
        return min((self.by_model[m].retry_in() for m in models if m in self.by_model), default=0.0)

    def snapshot(self) -> dict[str, dict]:
        """model -> {state, recent_failures, probe_in_s, openings} (GET /health, /metrics)."""
        return {m: {"state": b.state if self.enabled else CLOSED, "recent_failures": b.recent_failures(),
                    "probe_in_s": round(b.retry_in(), 3), "openings": b.openings} for m, b in self.by_model.items()}
