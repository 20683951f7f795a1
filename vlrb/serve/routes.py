"""The HTTP API's endpoints, plain module-level functions on two routers that `vlrb.serve.app.create_app` includes:

    public   GET  /health                 liveness, the router and its models, each upstream's circuit breaker
                                          (state, recent failures, seconds until its probe) (never needs a key)
    api      GET  /metrics                Prometheus text format
             GET  /v1/models              the one model this server offers: the router (its name goes in "model")
             POST /v1/chat/completions    routed, then forwarded (route_only: answered with the chosen model's id)
             POST /v1/route               the decision only: chosen model, every model's score and cost, latency
             POST /v1/feedback            {"id": <request id>, "reward": 0..1 | "correct": bool, "cost"?: $}: 200;
                                          400 a bad body, 404 an unknown id, 409 when feedback.path is off

Every route of `api` needs the `authorized` dependency (bearer auth when keys are configured). Every response to
a routed request carries the headers `x-vlrb-model` (the model that answered, or would) and
`x-vlrb-estimated-cost` ($, from the cost estimate of `vlrb.serve.decide`), and a one-shot router's response
`x-vlrb-request-id` (also `request_id` in the body's `vlrb` field; POST /v1/feedback names it). A cascade (vlrb.serve.cascade) adds
`x-vlrb-models-called` ("m1>m2") and its cost is that of every call; /v1/route names its first model only.

These routers are shared by every app in the process: add endpoints on a router of your own, passed to
`create_app(..., extra_routers=[...])`, never here from outside (see `vlrb.serve.app`).
"""
from __future__ import annotations

import json
import time
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from vlrb.feedback.store import FeedbackError, UnknownRequest
from vlrb.serve import cascade, security
from vlrb.serve.decide import Decision
from vlrb.serve.dependencies import ChatInput, Service, authorized, chat_input, route_input
from vlrb.serve.errors import ApiError
from vlrb.serve.feedback import parse_feedback
from vlrb.serve.schema import ChatRequest, parse_json
from vlrb.serve.upstream import relay

public = APIRouter()
api = APIRouter(dependencies=[Depends(authorized)])


@public.get("/health")
async def health(svc: Service):
    s = svc.settings
    return {"status": "ok", "model": s.model_name, "router": getattr(svc.router, "name", "router"),
            "models": svc.models, "route_only": s.route_only, "mu": s.mu, "cascade": svc.policy is not None,
            "upstreams": svc.breakers.snapshot(), "feedback": s.feedback_path if svc.feedback is not None else None,
            "explore": svc.explorer.name}


@api.get("/metrics")
async def metrics(svc: Service):
    svc.metrics.set_breakers(svc.breakers.snapshot())
    return Response(svc.metrics.exposition(), media_type=svc.metrics.content_type)


@api.get("/v1/models")
async def models(svc: Service):
    return {"object": "list", "data": [{"id": svc.settings.model_name, "object": "model", "created": 0,
                                        "owned_by": "vlrb", "vlrb_models": svc.models}]}


@api.post("/v1/route")
async def route(svc: Service, chat: ChatInput = Depends(route_input)):
    if svc.policy is not None:
        start = await svc.start_cascade(chat.req, chat.image)
        info = cascade.route_info(svc, start)
        return JSONResponse(info, headers=routed_headers(info["model"], info["estimated_cost"]))
    d, latency = await svc.route(chat.req, chat.image)
    svc.log_decision(d, chat.req, None)
    return JSONResponse({"object": "vlrb.route", "request_id": d.request_id, "model": d.model, "order": d.order,
                         "mu": d.mu, "scores": d.scores, "estimated_cost": d.cost, "estimated_costs": d.costs,
                         "propensity": d.propensity, "policy": d.policy, "router_latency_ms": latency * 1000},
                        headers=routed_headers(d.model, d.cost, d.request_id))


@api.post("/v1/chat/completions")
async def chat_completions(svc: Service, chat: ChatInput = Depends(chat_input)):
    req = chat.req
    if svc.policy is not None:
        return await _cascade(svc, chat)
    d, latency = await svc.route(req, chat.image)
    info = {"model": d.model, "estimated_cost": d.cost, "mu": d.mu, "router_latency_ms": latency * 1000,
            "request_id": d.request_id}
    if svc.settings.route_only:
        svc.log_decision(d, req, None)
        return _route_only(req, d, info)
    answered = None
    try:
        fwd = await svc.upstreams.complete(req.body, d.order, stream=req.stream)
        answered = fwd.model if fwd.status == 200 else None
    finally:  # a failed request's decision is logged too (answered by none)
        svc.log_decision(d, req, answered)
    info.update(model=fwd.model, estimated_cost=d.costs[fwd.model], attempts=[m for m, _ in fwd.attempts])
    headers = routed_headers(fwd.model, d.costs[fwd.model], d.request_id)
    if fwd.stream is not None:
        return StreamingResponse(relay(fwd.stream), headers=headers,
                                 media_type=fwd.stream.headers.get("content-type", "text/event-stream"))
    data = fwd.data
    if fwd.status == 200:
        data["model"] = fwd.model
        data["vlrb"] = info
    return JSONResponse(data, status_code=fwd.status, headers=headers)


@api.post("/v1/feedback")
async def feedback(request: Request, svc: Service):
    """What the client learned about a routed request's answer: appended to the feedback log."""
    if svc.feedback is None:
        raise ApiError(409, "feedback is off on this server: set feedback.path in conf/serve.yaml (serve.py "
                       "feedback.path=...)", code="feedback_off")
    raw = await security.read_body(request.headers, request.stream(), svc.settings.max_body_bytes)
    rid, reward, cost = parse_feedback(parse_json(raw))
    try:
        await svc.feedback.feedback(rid, reward, cost)
    except UnknownRequest:
        raise ApiError(404, f"no routed request with id {rid!r} in the feedback log", param="id",
                       code="unknown_request") from None
    except FeedbackError as e:
        raise ApiError(400, str(e)) from None
    svc.metrics.feedback_posts.inc()
    return {"object": "vlrb.feedback", "id": rid, "reward": reward, "cost": cost}


def routed_headers(model: str, cost: float, request_id: str | None = None) -> dict[str, str]:
    headers = {"x-vlrb-model": model, "x-vlrb-estimated-cost": f"{cost:.6g}"}
    if request_id:
        headers["x-vlrb-request-id"] = request_id
    return headers


async def _cascade(svc, chat: ChatInput) -> Response:
    """A cascade's calls, then the last answer received (streamed once it is known with `stream: true`)."""
    start = await svc.start_cascade(chat.req, chat.image)
    res = await cascade.run(svc, start, chat.req.body)
    if not res.order:  # the first model's upstream refused the request (its 4xx): as it came
        fwd = res.reply
        headers = routed_headers(fwd.model, float(start.costs[start.first]))
        return JSONResponse(fwd.data, status_code=fwd.status, headers=headers)
    info, headers = cascade.summary(svc, start, res)
    data = res.reply
    data["model"] = info["model"]
    if chat.req.stream:
        return StreamingResponse(cascade.events(data, info), media_type="text/event-stream", headers=headers)
    data["vlrb"] = info
    return JSONResponse(data, headers=headers)


def _route_only(req: ChatRequest, d: Decision, info: dict) -> Response:
    """route_only: the completion's content is the chosen model's id (dry runs, tests)."""
    cid, created = f"chatcmpl-vlrb-{uuid.uuid4().hex[:24]}", int(time.time())
    headers = routed_headers(d.model, d.cost, d.request_id)
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
