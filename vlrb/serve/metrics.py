"""Prometheus metrics (GET /metrics, text exposition format): requests and errors by endpoint and status,
request latency, router batch sizes and forward time, routed-model counts, upstream attempts by outcome, and for a
cascade the calls per request, its escalations (from one model to the next) and the cascades an upstream cut short;
each upstream's circuit-breaker state (a gauge per state, set when /metrics is read) and its openings; the feedback
log's failures (decisions not written) and the feedback posted.
Each app has its own registry, so several servers (tests) in one process do not share counts.

A request's `endpoint` label is the path template of the route it matched (`scope["route"].path`, set by the
routing once it matched: `/v1/route`, or `/v1/items/{id}` for a route with a parameter), or "other" for a path
that no route serves; so every route, a user's included, is counted under its own name with no list to keep,
and the label's values stay bounded whatever paths clients send."""
from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from vlrb.serve.health import STATES

CLIENT_CLOSED = 499  # the status of a request whose client disconnected first
OTHER = "other"  # the endpoint label of a request that matched no route
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CALL_BUCKETS = (1, 2, 3, 4, 5, 6, 8)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("vlrb_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "code"], registry=r)
        self.errors = Counter("vlrb_errors", "HTTP responses with a 4xx or 5xx status", ["endpoint", "code"],
                              registry=r)
        self.latency = Histogram("vlrb_request_latency_seconds", "Time from request to the end of the response",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.routed = Counter("vlrb_routed", "Requests routed to each model (the first choice)", ["model"], registry=r)
        self.batch_size = Histogram("vlrb_batch_size", "Requests per router forward", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.batch_seconds = Histogram("vlrb_router_batch_seconds", "Time of one router forward (encoder included)",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.upstream = Counter("vlrb_upstream_attempts", "Upstream calls by model and outcome", ["model", "outcome"],
                                registry=r)
        self.cascade_calls = Histogram("vlrb_cascade_calls", "Models called per cascade request (answers received)",
                                       buckets=CALL_BUCKETS, registry=r)
        self.escalations = Counter("vlrb_cascade_escalations", "Cascade escalations: after an answer of `from_model`, "
                                   "a call to `to_model`", ["from_model", "to_model"], registry=r)
        self.cascade_cut = Counter("vlrb_cascade_incomplete", "Cascades an upstream failure stopped early (the last "
                                   "answer received was returned)", ["model"], registry=r)
        self.upstream_state = Gauge("vlrb_upstream_state", "1 for each upstream's circuit-breaker state (closed, open, "
                                    "half_open), 0 for the others", ["model", "state"], registry=r)
        self.breaker_openings = Counter("vlrb_breaker_openings", "Times an upstream's circuit breaker opened", ["model"],
                                        registry=r)
        self.feedback_failures = Counter("vlrb_feedback_log_failures", "Decisions the feedback log could not write "
                                         "(the requests were served)", registry=r)
        self.feedback_posts = Counter("vlrb_feedback_posts", "POST /v1/feedback rows appended", registry=r)
        self.disconnects = Counter("vlrb_client_disconnects", "Requests whose client went away before the response "
                                   "ended (status 499, not server errors)", ["endpoint"], registry=r)

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def on_attempt(self, model: str, outcome: str) -> None:
        self.upstream.labels(model, outcome).inc()

    def on_breaker_open(self, model: str) -> None:
        self.breaker_openings.labels(model).inc()

    def on_feedback_failure(self, n: int) -> None:
        self.feedback_failures.inc(n)

    def set_breakers(self, snapshot: dict[str, dict]) -> None:
        for model, info in snapshot.items():
            for state in STATES:
                self.upstream_state.labels(model, state).set(1.0 if info["state"] == state else 0.0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def endpoint_of(scope) -> str:
    """The path template of the route the request matched (a 405 matched its path too), or "other"."""
    return getattr(scope.get("route"), "path", None) or OTHER


class RequestCounter:
    """ASGI middleware counting every HTTP request, its status and its latency (streams: to their end) under the
    path template of its route; `app.add_middleware(RequestCounter, metrics=...)`. It reads the route after the
    request ran: the routing sets `scope["route"]` in the scope it was handed, which is this one."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        metrics = self.metrics
        status = [500]  # what a request that raised ends as
        state = {"gone": False, "ended": False}

        async def receive_():
            message = await receive()
            if message["type"] == "http.disconnect" and not state["ended"]:
                state["gone"] = True  # the client left before its response ended
            return message

        async def send_(message):
            if state["gone"]:  # nobody reads it: the request still counts as abandoned by its client
                return await send(message)
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            try:
                await send(message)
            except OSError:  # the connection is gone (uvicorn raises on a send to a closed socket)
                state["gone"] = True
                raise
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                state["ended"] = True

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive_, send_)
        finally:
            endpoint = endpoint_of(scope)
            if (state["gone"] and not state["ended"]) or status[0] == CLIENT_CLOSED:
                status[0] = CLIENT_CLOSED  # nginx's code: not a server error, counted apart
                metrics.disconnects.labels(endpoint).inc()
            code = str(status[0])
            metrics.requests.labels(endpoint, code).inc()
            if 400 <= status[0] and status[0] != CLIENT_CLOSED:
                metrics.errors.labels(endpoint, code).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
