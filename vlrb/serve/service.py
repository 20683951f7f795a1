"""The routing service behind the HTTP API: the trained router behind the micro-batcher, its cost model, the
upstream pool and the metrics, one per app (`request.app.state.service`, reached by the routes through the
dependency `vlrb.serve.dependencies.service`). For a cascade (vlrb.serve.cascade) the batcher runs each request's
first step (features encoded once, the first model) and `next_call` the later ones, one request at a time."""
from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from vlrb.routers.cascade import STOP
from vlrb.routing.metrics import take_rows
from vlrb.serve import security
from vlrb.serve.batching import MicroBatcher, Overloaded
from vlrb.serve.cascade import CascadeStart, cascade_policy, check_settings, request_format
from vlrb.serve.decide import CostModel, Decision, decide
from vlrb.serve.errors import ApiError, bad_request
from vlrb.serve.metrics import Metrics
from vlrb.serve.schema import ChatRequest
from vlrb.serve.settings import ServeSettings
from vlrb.serve.upstream import UpstreamPool

log = logging.getLogger("vlrb.serve")
IMAGE_TOKENS = 256  # input tokens charged per image (the benchmark's rule, vlrb.data.datasets.IMAGE_TOKENS)
COUNTED_CHARS = 200_000  # text counted token by token for a cost estimate; beyond, extrapolated
WARM_FORMAT = ("text", 0)


def warm_up(router) -> None:
    """One request's worth through the router (its encoders load; a router that cannot serve raises here): its
    scores, or a cascade's first step."""
    policy = cascade_policy(router)
    if policy is None:
        router.score_raw(["warm-up"], [None])
    else:
        policy.first(router.requests_raw(["warm-up"], [None], [WARM_FORMAT]))


class RouterService:
    """The trained router behind the micro-batcher, its cost model, and the upstream pool."""

    def __init__(self, router, settings: ServeSettings):
        self.router = router
        self.settings = settings
        self.policy = cascade_policy(router)  # a cascade's first / next_call; None: a one-shot router
        missing = check_settings(router, settings)
        if missing:
            log.warning("cascade: no upstream for %s; a call the cascade makes to one fails (the request gets the last "
                        "answer so far, else a 502)", missing)
        self.models = list(router.models)
        self.costs = CostModel.for_router(self.models, router.prices, router.mean_cost,
                                          mode=settings.cost_estimate, output_tokens=settings.output_tokens)
        self.allowed = None if settings.route_only else set(settings.upstreams)
        self.metrics = Metrics()
        self.batcher = MicroBatcher(self._forward, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                                    workers=settings.workers, threads=settings.threads,
                                    max_queue=settings.max_queue, on_batch=self.metrics.on_batch)
        self.upstreams: UpstreamPool | None = None
        self.fetcher = None  # httpx client for remote images, only when they are allowed
        self.prompt_chars: int | None = None  # what of a prompt can reach the router (set at start)
        self.image_resize = None  # its image encoder's first resize, run while decoding (set at start)

    async def start(self) -> None:
        # one forward before the first request: the encoders load now, and a broken router fails at start-up
        await asyncio.to_thread(self._forward, [("", None, WARM_FORMAT)])
        limits = getattr(self.router, "input_limits", None)
        self.prompt_chars, self.image_resize = await asyncio.to_thread(limits) if limits else (None, None)
        await self.batcher.start()
        if not self.settings.route_only:
            self.upstreams = UpstreamPool(self.settings.upstreams, timeout_s=self.settings.timeout_s,
                                          attempts=self.settings.attempts, on_attempt=self.metrics.on_attempt)
        if self.settings.allow_remote_images:
            import httpx

            self.fetcher = httpx.AsyncClient(follow_redirects=False, trust_env=False)

    async def stop(self) -> None:
        await self.batcher.stop()
        for client in (self.upstreams, self.fetcher):
            if client is not None:
                await client.aclose()

    def _forward(self, items: list) -> list:
        """One router forward for a batch of (prompt, image, answer format) (runs in the batcher's worker thread):
        each request's scores, or for a cascade (its row for the policy, its first model)."""
        if self.policy is not None:
            return self._first_steps(items)
        scores = np.asarray(self.router.score_raw([p for p, _, _ in items], [im for _, im, _ in items]),
                            dtype=np.float64)
        if scores.shape != (len(items), len(self.models)) or not np.isfinite(scores).all():
            raise RuntimeError(f"the router gave scores of shape {scores.shape} with non-finite values or a wrong size")
        return list(scores)

    def _first_steps(self, items: list) -> list[tuple]:
        rows = self.router.requests_raw([p for p, _, _ in items], [im for _, im, _ in items], [f for _, _, f in items])
        first = np.asarray(self.policy.first(rows), dtype=np.int64).reshape(-1)
        if len(first) != len(items) or (first < 0).any() or (first >= len(self.models)).any():
            raise RuntimeError(f"the cascade's first models {first.tolist()} are not one valid model per request")
        return [(take_rows(rows, [i]), int(j)) for i, j in enumerate(first)]

    def _next(self, start: CascadeStart, order: list[int], answers: list[str]) -> int:
        o = np.asarray([order], dtype=np.int64)
        a = np.empty((1, len(answers)), dtype=object)
        a[0, :] = answers
        nxt = int(np.asarray(self.policy.next_call(start.rows, o, a, mu=start.mu)).reshape(-1)[0])
        if nxt != STOP and not (0 <= nxt < len(self.models) and nxt not in order):
            raise RuntimeError(f"the cascade asked for model index {nxt} after the calls {order}")
        return nxt

    async def next_call(self, start: CascadeStart, order: list[int], answers: list[str]) -> int:
        """The cascade's next model after the calls `order` gave `answers`, or STOP (in a worker thread)."""
        t0 = time.perf_counter()
        nxt = await asyncio.to_thread(self._next, start, order, answers)
        start.latency += time.perf_counter() - t0
        return nxt

    async def load_image(self, req: ChatRequest):
        """Every image of the request checked and decoded under the limits; returns the routed one (PIL or None)."""
        s = self.settings
        security.refuse_other(req.image_urls, s.allow_remote_images)
        if len(req.image_urls) > s.max_images:
            raise bad_request(f"{len(req.image_urls)} images in one request; at most {s.max_images} "
                                       "(limits.max_images)", "messages", code="too_many_images")
        routed = None
        for url, param in req.image_urls:
            if security.image_url_kind(url) == "data":
                raw = security.data_uri_bytes(url, param)
            else:
                raw = await security.fetch_remote_image(self.fetcher, url, max_bytes=s.remote_max_bytes,
                                                        timeout_s=s.remote_timeout_s, param=param)
            img = await asyncio.to_thread(security.decode_image, raw, s.max_pixels, param, max_side=s.max_side,
                                          max_aspect=s.max_aspect, resize=self.image_resize)
            if param == req.image_param:
                routed = img
        return routed

    def input_tokens(self, req: ChatRequest) -> int:
        """cl100k tokens of the request's text (+256 per image); beyond COUNTED_CHARS characters the count of the
        first COUNTED_CHARS is scaled up (a 19 MB prompt costs as much as its size says, without 3 s of tokenising)."""
        from vlrb.data.tokens import count_tokens

        text = "\n".join(req.texts)
        tokens = count_tokens(text[:COUNTED_CHARS])
        if len(text) > COUNTED_CHARS:
            tokens = int(tokens * len(text) / COUNTED_CHARS)
        return tokens + IMAGE_TOKENS * len(req.image_urls)

    async def _submit(self, req: ChatRequest, image) -> tuple[object, np.ndarray, float, float]:
        """(the batch forward's result for this request, its (K,) estimated costs, μ, the seconds it waited)."""
        mu = self.settings.mu if req.mu is None else req.mu
        tokens = self.input_tokens(req) if self.costs.mode == "tokens" else 0
        costs = self.costs.estimate([tokens], [req.max_tokens])[0]
        t0 = time.perf_counter()
        prompt = req.prompt if self.prompt_chars is None else req.prompt[:self.prompt_chars]
        fmt = request_format(req) if self.policy is not None else None  # the whole prompt: its options may end it
        try:
            result = await self.batcher.submit((prompt, image, fmt))
        except Overloaded as e:
            raise ApiError(503, f"the router is overloaded: {e}; retry later", code="overloaded") from None
        return result, costs, mu, time.perf_counter() - t0

    async def start_cascade(self, req: ChatRequest, image) -> CascadeStart:
        """A cascade's first step for one request (vlrb.serve.cascade.run takes it from there)."""
        (rows, first), costs, mu, latency = await self._submit(req, image)
        self.metrics.routed.labels(self.models[first]).inc()
        return CascadeStart(rows, first, costs, mu, latency)

    async def route(self, req: ChatRequest, image) -> tuple[Decision, float]:
        """The decision for one request and the seconds it waited for the router (queue + batch forward)."""
        scores, costs, mu, latency = await self._submit(req, image)
        d = decide(self.models, scores, costs, mu, self.costs.scale, allowed=self.allowed)
        self.metrics.routed.labels(d.model).inc()
        return d, latency
