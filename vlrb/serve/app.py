"""The FastAPI app: an OpenAI-compatible chat endpoint in front of a trained router.

    GET  /health                 liveness, the router and its models (no auth)
    GET  /metrics                Prometheus text format
    GET  /v1/models              the one model this server offers: the router (its name goes in "model")
    POST /v1/chat/completions    routed, then forwarded (or, with route_only, answered with the chosen model's id)
    POST /v1/route               the decision only: chosen model, every model's score and estimated cost, latency

Every response to a routed request carries the headers `x-vlrb-model` (the model that answered, or would)
and `x-vlrb-estimated-cost` ($, from the cost estimate of `vlrb.serve.decide`).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from vlrb.serve import security
from vlrb.serve.batching import MicroBatcher, Overloaded
from vlrb.serve.decide import CostModel, Decision, decide
from vlrb.serve.errors import ApiError, bad_request, error_body
from vlrb.serve.metrics import CLIENT_CLOSED, Metrics
from vlrb.serve.schema import ChatRequest, parse_chat
from vlrb.serve.settings import ServeSettings
from vlrb.serve.upstream import UpstreamPool, relay

log = logging.getLogger("vlrb.serve")
ENDPOINTS = {"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/route"}
IMAGE_TOKENS = 256  # input tokens charged per image (the benchmark's rule, vlrb.data.datasets.IMAGE_TOKENS)
COUNTED_CHARS = 200_000  # text counted token by token for a cost estimate; beyond, extrapolated


class RouterService:
    """The trained router behind the micro-batcher, its cost model, and the upstream pool."""

    def __init__(self, router, settings: ServeSettings):
        self.router = router
        self.settings = settings
        self.models = list(router.models)
        self.costs = CostModel.for_router(self.models, router.prices, router.mean_cost,
                                          mode=settings.cost_estimate, output_tokens=settings.output_tokens)
        self.allowed = None if settings.route_only else set(settings.upstreams)
        self.metrics = Metrics(ENDPOINTS)
        self.batcher = MicroBatcher(self._score_batch, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                                    workers=settings.workers, threads=settings.threads,
                                    max_queue=settings.max_queue, on_batch=self.metrics.on_batch)
        self.upstreams: UpstreamPool | None = None
        self.fetcher = None  # httpx client for remote images, only when they are allowed
        self.prompt_chars: int | None = None  # what of a prompt can reach the router (set at start)
        self.image_resize = None  # its image encoder's first resize, run while decoding (set at start)

    async def start(self) -> None:
        # one forward before the first request: the encoders load now, and a broken router fails at start-up
        await asyncio.to_thread(self._score_batch, [("", None)])
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

    def _score_batch(self, items: list) -> list[np.ndarray]:
        """One router forward for a batch of (prompt, image) (runs in the batcher's worker thread)."""
        scores = np.asarray(self.router.score_raw([p for p, _ in items], [im for _, im in items]), dtype=np.float64)
        if scores.shape != (len(items), len(self.models)) or not np.isfinite(scores).all():
            raise RuntimeError(f"the router gave scores of shape {scores.shape} with non-finite values or a wrong size")
        return list(scores)

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

    async def route(self, req: ChatRequest, image) -> tuple[Decision, float]:
        """The decision for one request and the seconds it waited for the router (queue + batch forward)."""
        mu = self.settings.mu if req.mu is None else req.mu
        tokens = self.input_tokens(req) if self.costs.mode == "tokens" else 0
        costs = self.costs.estimate([tokens], [req.max_tokens])[0]
        t0 = time.perf_counter()
        prompt = req.prompt if self.prompt_chars is None else req.prompt[:self.prompt_chars]
        try:
            scores = await self.batcher.submit((prompt, image))
        except Overloaded as e:
            raise ApiError(503, f"the router is overloaded: {e}; retry later", code="overloaded") from None
        latency = time.perf_counter() - t0
        d = decide(self.models, scores, costs, mu, self.costs.scale, allowed=self.allowed)
        self.metrics.routed.labels(d.model).inc()
        return d, latency


def create_app(router, settings: ServeSettings | None = None) -> FastAPI:
    """The app serving `router` (a `vlrb.artifact.TrainedRouter`, or anything with `.models`, `.prices`,
    `.mean_cost`, `.label` and `.score_raw(prompts, images)`)."""
    settings = settings or ServeSettings()
    svc = RouterService(router, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await svc.start()
        log.info("serving %s: %d models, %s, mu=%g, batches of <= %d", settings.model_name, len(svc.models),
                 "route_only" if settings.route_only else f"{len(settings.upstreams)} upstreams", settings.mu,
                 settings.max_batch)
        try:
            yield
        finally:
            await svc.stop()

    app = FastAPI(title="vlrb router", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = svc
    app.add_middleware(_Counted, metrics=svc.metrics)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        err = ApiError(e.status_code, str(e.detail) if e.status_code != 404 else f"no route {request.url.path}")
        return JSONResponse(err.body(), status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, e: ClientDisconnect):  # the client left while sending its body: no one to answer
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        log.error("internal error on %s: %s: %s", request.url.path, type(e).__name__, e)
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)

    def auth(request: Request) -> None:
        security.check_auth(request.headers.get("authorization"), settings.api_keys)

    async def chat_request(request: Request, *, model_required: bool) -> tuple[ChatRequest, Any]:
        auth(request)
        raw = await security.read_body(request.headers, request.stream(), settings.max_body_bytes)
        req = parse_chat(raw, settings.model_name, model_required=model_required)
        return req, await svc.load_image(req)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, "router": getattr(router, "name", "router"),
                "models": svc.models, "route_only": settings.route_only, "mu": settings.mu}

    @app.get("/metrics")
    async def metrics(request: Request):
        auth(request)
        return Response(svc.metrics.exposition(), media_type=svc.metrics.content_type)

    @app.get("/v1/models")
    async def models(request: Request):
        auth(request)
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "vlrb", "vlrb_models": svc.models}]}

    @app.post("/v1/route")
    async def route(request: Request):
        req, image = await chat_request(request, model_required=False)
        d, latency = await svc.route(req, image)
        return JSONResponse({"object": "vlrb.route", "model": d.model, "order": d.order, "mu": d.mu,
                             "scores": d.scores, "estimated_cost": d.cost, "estimated_costs": d.costs,
                             "router_latency_ms": latency * 1000}, headers=_headers(d.model, d.cost))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req, image = await chat_request(request, model_required=True)
        d, latency = await svc.route(req, image)
        info = {"model": d.model, "estimated_cost": d.cost, "mu": d.mu, "router_latency_ms": latency * 1000}
        if settings.route_only:
            return _route_only(req, d, info)
        fwd = await svc.upstreams.complete(req.body, d.order, stream=req.stream)
        info.update(model=fwd.model, estimated_cost=d.costs[fwd.model], attempts=[m for m, _ in fwd.attempts])
        headers = _headers(fwd.model, d.costs[fwd.model])
        if fwd.stream is not None:
            return StreamingResponse(relay(fwd.stream), headers=headers,
                                     media_type=fwd.stream.headers.get("content-type", "text/event-stream"))
        data = fwd.data
        if fwd.status == 200:
            data["model"] = fwd.model
            data["vlrb"] = info
        return JSONResponse(data, status_code=fwd.status, headers=headers)

    return app


class _Counted:
    """ASGI middleware class wrapping `Metrics.middleware` (what `app.add_middleware` expects)."""

    def __init__(self, app, metrics: Metrics):
        self.app = metrics.middleware(app)

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)


def _headers(model: str, cost: float) -> dict[str, str]:
    return {"x-vlrb-model": model, "x-vlrb-estimated-cost": f"{cost:.6g}"}


def _route_only(req: ChatRequest, d: Decision, info: dict) -> Response:
    """route_only: the completion's content is the chosen model's id (dry runs, tests)."""
    cid, created = f"chatcmpl-vlrb-{uuid.uuid4().hex[:24]}", int(time.time())
    headers = _headers(d.model, d.cost)
    if not req.stream:
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": d.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": d.model}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}, "vlrb": info}, headers=headers)

    def chunk(delta: dict, finish: str | None) -> bytes:
        c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": d.model,
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        return f"data: {json.dumps(c)}\n\n".encode()

    async def events():
        yield chunk({"role": "assistant", "content": d.model}, None)
        yield chunk({}, "stop")
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
