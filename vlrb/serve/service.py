"""The routing service behind the HTTP API: the trained router behind the micro-batcher, its cost model, the
upstream pool and the metrics, one per app (`request.app.state.service`, reached by the routes through the
dependency `vlrb.serve.dependencies.service`). For a cascade (vlrb.serve.cascade) the batcher runs each request's
first step (features encoded once, the first model) and `next_call` the later ones, one request at a time.

A one-shot request is routed among its candidate pool: the router's models with an upstream (all in route_only),
minus those the request's `vlrb.models` leaves out (unknown ids: a 400), minus those whose circuit breaker is open
(vlrb.serve.health; all of them open: a 503 with Retry-After). The exploration policy (vlrb.serve.explore) may pick
another candidate than the budget rule; each decision gets a request id and, with feedback.path set, is logged
(vlrb.serve.feedback) with the features the router read."""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import replace

import numpy as np

from vlrb.feedback.store import Decision as Logged
from vlrb.routers.cascade import STOP
from vlrb.routing.metrics import take_rows
from vlrb.serve import security
from vlrb.serve.batching import MicroBatcher, Overloaded
from vlrb.serve.cascade import CascadeStart, cascade_policy, check_settings, request_format
from vlrb.serve.decide import CostModel, Decision, decide
from vlrb.serve.errors import ApiError, bad_request
from vlrb.serve.explore import Explorer
from vlrb.serve.feedback import FeedbackWriter, new_request_id
from vlrb.serve.health import Breakers
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
        self.breakers = Breakers(settings.upstreams if not settings.route_only else (),
                                 failures=settings.breaker_failures, window_s=settings.breaker_window_s,
                                 open_s=settings.breaker_open_s, on_open=self.metrics.on_breaker_open)
        self.explorer = Explorer(settings.explore, settings.epsilon, settings.explore_seed)
        self.feedback: FeedbackWriter | None = None  # the decision log, when feedback.path is set (opened at start)
        # the features the router read go to the log: asked for only when logging and the router can give them
        self.with_features = bool(settings.feedback_path) and self.policy is None and _takes_features(router)
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
        prepare = getattr(self.router, "prepare", None)
        if prepare is not None and self.settings.fast_path != "lazy":  # the encoders' fast path (ONNX Runtime)
            await asyncio.to_thread(prepare, wait=self.settings.fast_path == "start")
        limits = getattr(self.router, "input_limits", None)
        self.prompt_chars, self.image_resize = await asyncio.to_thread(limits) if limits else (None, None)
        await self.batcher.start()
        if not self.settings.route_only:
            self.upstreams = UpstreamPool(self.settings.upstreams, timeout_s=self.settings.timeout_s,
                                          attempts=self.settings.attempts, on_attempt=self.metrics.on_attempt,
                                          breakers=self.breakers)
        if self.settings.feedback_path and self.policy is None:
            meta = {"router": self.label, "models": self.models, "model_name": self.settings.model_name,
                    **({"router_dir": self.settings.router_dir} if self.settings.router_dir else {})}
            self.feedback = await asyncio.to_thread(FeedbackWriter, self.settings.feedback_path, meta=meta,
                                                    on_failure=self.metrics.on_feedback_failure)
            self.feedback.start()
            log.info("feedback log: %s", self.settings.feedback_path)
        if self.settings.allow_remote_images:
            import httpx

            self.fetcher = httpx.AsyncClient(follow_redirects=False, trust_env=False)

    @property
    def label(self) -> str:
        return str(getattr(self.router, "name", None) or "router")

    async def stop(self) -> None:
        await self.batcher.stop()
        if self.feedback is not None:
            await self.feedback.stop()
        for client in (self.upstreams, self.fetcher):
            if client is not None:
                await client.aclose()

    def _forward(self, items: list) -> list:
        """One router forward for a batch of (prompt, image, answer format) (runs in the batcher's worker thread):
        each request's scores, or for a cascade (its row for the policy, its first model)."""
        if self.policy is not None:
            return self._first_steps(items)
        prompts, images = [p for p, _, _ in items], [im for _, im, _ in items]
        X = None
        if self.with_features:
            scores, X = self.router.score_raw(prompts, images, return_features=True)
        else:
            scores = self.router.score_raw(prompts, images)
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(items), len(self.models)) or not np.isfinite(scores).all():
            raise RuntimeError(f"the router gave scores of shape {scores.shape} with non-finite values or a wrong size")
        rows = [None] * len(items) if X is None else list(np.asarray(X, dtype=np.float32).reshape(len(items), -1))
        return list(zip(scores, rows))

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
        if req.models is not None:  # its policy picks models by its own rule, one after another
            raise bad_request("'vlrb.models' cannot restrict a cascade: it chooses which models to call, in its own "
                              "order (README: Serving a cascade)", "vlrb.models", code="cascade_pool")
        (rows, first), costs, mu, latency = await self._submit(req, image)
        self.metrics.routed.labels(self.models[first]).inc()
        return CascadeStart(rows, first, costs, mu, latency)

    async def route(self, req: ChatRequest, image) -> tuple[Decision, float]:
        """The decision for one request (with its request id, the policy's pick and propensity) and the seconds it
        waited for the router (queue + batch forward)."""
        wanted = self.restriction(req)
        (scores, features), costs, mu, latency = await self._submit(req, image)
        pool = self.pool(wanted)
        d = decide(self.models, scores, costs, mu, self.costs.scale, allowed=pool)
        order, propensity = self.explorer.pick(d.order)
        d = replace(d, order=order, propensity=propensity, policy=self.explorer.name, request_id=new_request_id(),
                    features=features)
        self.metrics.routed.labels(d.model).inc()
        return d, latency

    def restriction(self, req: ChatRequest) -> list[str]:
        """The models this request may go to before health: its `vlrb.models` (checked) among those with an
        upstream; a 400 naming unknown ids, or when none of them can be reached here."""
        reachable = [m for m in self.models if self.allowed is None or m in self.allowed]
        if req.models is None:
            return reachable
        unknown = [m for m in req.models if m not in self.models]
        if unknown:
            raise bad_request(f"'vlrb.models': unknown model ids {unknown}; this router's models are {self.models}",
                              "vlrb.models", code="unknown_model")
        wanted = [m for m in reachable if m in req.models]
        if not wanted:
            raise bad_request(f"'vlrb.models': none of {req.models} has an upstream on this server (those with one: "
                              f"{reachable})", "vlrb.models", code="no_upstream")
        return wanted

    def pool(self, wanted: list[str]) -> list[str]:
        """`wanted` minus the models whose circuit breaker is open; a 503 when that leaves none."""
        pool = [m for m in wanted if self.breakers.available(m)]
        if not pool:
            wait = self.breakers.retry_in(wanted)
            raise ApiError(503, f"every candidate model's upstream is failing (circuit breaker open: {wanted}); the "
                           f"next probe in {wait:.1f} s; retry later", code="upstreams_unavailable",
                           headers={"Retry-After": str(max(1, int(np.ceil(wait))))})
        return pool

    def log_decision(self, d: Decision, req: ChatRequest, answered_by: str | None) -> None:
        """Queue the decision for the feedback log (when on): never blocks, never fails the request."""
        if self.feedback is None:
            return
        try:
            self.feedback.log(Logged(
                id=d.request_id, router=self.label, models=self.models, pool=[m for m in self.models if m in d.order],
                chosen=d.model, propensity=d.propensity, policy=d.policy, scores=[d.scores[m] for m in self.models],
                costs=[d.costs[m] for m in self.models], mu=d.mu, answered_by=answered_by, dataset=req.dataset or "",
                features=d.features))
        except Exception as e:  # a bug here must cost the log a row, not the client its answer
            log.warning("feedback log: decision %s not queued (%s: %s)", d.request_id, type(e).__name__, e)
            self.metrics.on_feedback_failure(1)


def _takes_features(router) -> bool:
    """Whether `router.score_raw` can also return the features it read (vlrb.artifact.TrainedRouter can)."""
    try:
        return "return_features" in inspect.signature(router.score_raw).parameters
    except (TypeError, ValueError, AttributeError):
        return False
