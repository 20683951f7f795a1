"""Forwarding a routed request to the chosen model's OpenAI-compatible endpoint, with fallback.

The models are tried in the decision's order (the choice, then the next by the budget rule's value; at
μ = 0 that is the router's score order), at most `fallback.attempts` of them. A model is skipped when its
endpoint cannot be reached, times out, or answers 408, 429 or 5xx (a problem on its side); any other 4xx
is the request's own problem and goes back to the client as it is. Every attempt is logged.
With `stream: true` the upstream's server-sent events are passed through unchanged once it has answered
200 (a failure after that ends the stream with an error event: its first bytes are already sent).
A cascade's call (`call_one`) is one attempt at the model its policy chose, never followed by another model.
Each model's circuit breaker (vlrb.serve.health) hears every outcome; a model whose breaker is open when its turn
comes is skipped without a call (it is not an attempt), and a half-open one gets this call as its probe.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Mapping

import httpx

from vlrb.serve.errors import ApiError, error_body
from vlrb.serve.health import Breakers
from vlrb.serve.settings import Upstream

log = logging.getLogger("vlrb.serve")
RETRY_STATUS = {408, 429}  # and every 5xx
CIRCUIT_OPEN = "circuit open"


@dataclass
class Forwarded:
    """The answer of the model that answered: `data` (a JSON body) or `stream` (an open SSE response)."""

    model: str
    status: int
    data: Any = None
    stream: httpx.Response | None = None
    attempts: list[tuple[str, str]] = field(default_factory=list)  # (model, outcome) in order


class UpstreamPool:
    def __init__(self, upstreams: Mapping[str, Upstream], *, timeout_s: float, attempts: int,
                 on_attempt: Callable[[str, str], None] | None = None, breakers: Breakers | None = None):
        self.upstreams = dict(upstreams)
        self.breakers = breakers or Breakers(self.upstreams, failures=0, window_s=1.0, open_s=1.0)
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.on_attempt = on_attempt
        self.client = httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                        limits=httpx.Limits(max_connections=512, max_keepalive_connections=64))

    async def aclose(self) -> None:
        await self.client.aclose()

    async def complete(self, body: dict, order: list[str], *, stream: bool) -> Forwarded:
        tried: list[tuple[str, str]] = []
        skipped: list[str] = []
        candidates = [m for m in order if m in self.upstreams]
        n = min(self.attempts, len(candidates))
        for model in candidates:
            if len(tried) >= self.attempts:
                break
            outcome, result, ms = await self._guarded(model, body, stream)
            if result is None and outcome == CIRCUIT_OPEN:
                skipped.append(model)
                continue
            i = len(tried) + 1
            tried.append((model, outcome))
            if result is not None:
                log.info("upstream attempt %d/%d: %s -> %s (%.0f ms)", i, n, model, outcome, ms)
                result.model, result.attempts = model, tried
                return result
            log.warning("upstream attempt %d/%d: %s failed (%s, %.0f ms)%s", i, n, model, outcome, ms,
                        "; trying the next model" if i < n else "")
        if not tried and skipped:
            raise ApiError(503, f"every candidate model's circuit breaker is open ({', '.join(skipped)}: their upstreams "
                           "failed repeatedly); retry later", code="upstreams_unavailable")
        summary = "; ".join(f"{m}: {o}" for m, o in tried) or "no model with an upstream"
        status = 504 if tried and all(o == "timeout" for _, o in tried) else 502
        raise ApiError(status, f"no upstream answered after {len(tried)} attempt(s) ({summary})", code="upstream_failed")

    async def call_one(self, body: dict, model: str) -> tuple[str, Forwarded | None]:
        """One non-streamed call to `model` (a cascade's step, vlrb.serve.cascade): (outcome, its answer), the answer
        None when the call failed (no upstream, unreachable, a timeout, 408/429/5xx); logged and counted."""
        if model not in self.upstreams:
            return "no upstream configured", None
        outcome, result, ms = await self._guarded(model, body, False)
        log.log(logging.INFO if result is not None else logging.WARNING, "cascade call: %s -> %s (%.0f ms)", model,
                outcome, ms)
        if result is not None:
            result.model, result.attempts = model, [(model, outcome)]
        return outcome, result

    async def _guarded(self, model: str, body: dict, stream: bool) -> tuple[str, Forwarded | None, float]:
        """One call to `model` through its breaker: (CIRCUIT_OPEN, None, 0) without a call when it is open; else the
        attempt's (outcome, answer, ms), its outcome recorded by the breaker and the metrics."""
        ticket = self.breakers.acquire(model)
        if ticket is None:
            return CIRCUIT_OPEN, None, 0.0
        up = self.upstreams[model]
        t0 = time.perf_counter()
        try:
            outcome, result = await self._attempt(up, dict(body, model=up.model), stream)
        except BaseException:  # cancelled (the client went away): no outcome, a probe is free again
            self.breakers.release(model, ticket)
            raise
        self.breakers.record(model, result is not None, ticket)
        if self.on_attempt is not None:
            self.on_attempt(model, "ok" if result is not None else _label(outcome))
        return outcome, result, (time.perf_counter() - t0) * 1000

    async def _attempt(self, up: Upstream, payload: dict, stream: bool) -> tuple[str, Forwarded | None]:
        headers = {"Accept": "text/event-stream" if stream else "application/json"}
        if up.api_key:
            headers["Authorization"] = f"Bearer {up.api_key}"
        req = self.client.build_request("POST", f"{up.base_url}/chat/completions", json=payload, headers=headers,
                                        timeout=up.timeout_s or self.timeout_s)
        try:
            resp = await self.client.send(req, stream=True)
        except httpx.TimeoutException:
            return "timeout", None
        except httpx.HTTPError as e:
            return f"{type(e).__name__}", None
        code = resp.status_code
        if code >= 500 or code in RETRY_STATUS:
            await resp.aclose()
            return f"HTTP {code}", None
        if stream and code == 200:
            return "HTTP 200 (stream)", Forwarded("", code, stream=resp)
        try:
            raw = await resp.aread()
        except httpx.TimeoutException:
            return "timeout", None
        except httpx.HTTPError as e:
            return f"{type(e).__name__}", None
        finally:
            await resp.aclose()
        try:
            data = json.loads(raw)
        except ValueError:
            if code == 200:
                return "HTTP 200 with a body that is not JSON", None
            data = error_body(raw[:500].decode("utf-8", "replace"), "upstream_error")
        if code == 200 and not isinstance(data, dict):
            return "HTTP 200 with a body that is not a JSON object", None
        return f"HTTP {code}", Forwarded("", code, data=data)


def _label(outcome: str) -> str:
    """A small fixed set of metric labels."""
    if outcome == "timeout":
        return "timeout"
    if "not JSON" in outcome or "not a JSON" in outcome:
        return "bad_body"
    if outcome.startswith("HTTP "):
        return "http_" + outcome.split()[1]
    return "error"


async def relay(resp: httpx.Response) -> AsyncIterator[bytes]:
    """The upstream's event stream, chunk by chunk; a failure midway ends it with an SSE error event."""
    try:
        async for chunk in resp.aiter_bytes():
            yield chunk
    except httpx.HTTPError as e:
        log.warning("upstream stream broke off (%s)", type(e).__name__)
        err = error_body(f"the upstream stream broke off ({type(e).__name__})", "upstream_error")
        yield f"data: {json.dumps(err)}\n\n".encode()
    finally:
        await resp.aclose()
