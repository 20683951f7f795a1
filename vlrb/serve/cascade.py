"""Serving a cascade (vlrb.routers.cascade; README "Serving a cascade"): call a model, read its answer as the
benchmark reads one (`vlrb.data.answers.extract_answer`), ask the policy whether to stop or which model to call
next, and so on; the last answer received is the response.

    policy.first(rows)                            the first model: in the router's batch (MicroBatcher), where the
                                                  features of a learned cascade are encoded, once per request
    policy.next_call(rows, order, answers, mu)    the next model or STOP: per request, in a worker thread, on the
                                                  same rows (the features are reused by every step)

These are the decisions the replay on a benchmark (`router.route(split)`) makes for the same inputs and answers.
Each call is one non-streamed upstream call to the model the policy chose (no fallback to another model; a model
without an upstream is a failed call). A call that fails after an answer was received ends the cascade there: the
last answer is returned, with the header `x-vlrb-cascade-incomplete`. When the first call fails, the request fails
as a one-shot request does (502, 504 on a timeout, or the upstream's own 4xx as it came). Per-request μ
(`vlrb.mu`, else budget.mu) goes to `next_call`: larger stops earlier, negative escalates more.
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from vlrb.data.answers import extract_answer, infer_format
from vlrb.data.benchmark import Requests
from vlrb.errors import ConfigError
from vlrb.routers.cascade import STOP
from vlrb.routing.calls import CHAIN_SEP
from vlrb.serve.errors import ApiError
from vlrb.serve.schema import ChatRequest

log = logging.getLogger("vlrb.serve")
NOT_FORWARDED = ("stream", "stream_options")  # a cascade reads whole answers: every call is non-streamed


def cascade_policy(router) -> Any | None:
    """The cascade a served router runs (`first`, `next_call`, `max_calls`), or None for a one-shot router."""
    policy = getattr(router, "router", router)
    return policy if "answers" in getattr(policy, "inputs", ()) else None


def check_settings(router, settings) -> list[str]:
    """A cascade needs its models' answers: route_only is refused (a ConfigError, before anything loads). Returns
    the models without an upstream (a call the cascade makes to one fails)."""
    policy = cascade_policy(router)
    if policy is None:
        return []
    if settings.route_only:
        raise ConfigError(f"route_only=true: {getattr(policy, 'label', 'this router')} is a cascade, which decides "
                          "after each answer whether to call another model, so it needs the models' answers; give "
                          "it upstreams (README: Serving a cascade)")
    return [m for m in router.models if m not in settings.upstreams]


def request_format(req: ChatRequest) -> tuple[str, int]:
    """How the request's answers are read: `vlrb.answer_format` / `vlrb.n_options` where given (n_options alone: a
    choice item), else inferred from the prompt (vlrb.data.answers.infer_format)."""
    fmt, n = req.answer_format, req.n_options
    guess = infer_format(req.prompt)
    if fmt is None and n is None:
        return guess
    fmt = fmt or "choice"
    if n is None:
        n = guess[1] if guess[0] == fmt == "choice" else 0
    return fmt, int(n)


@dataclass
class CascadeStart:
    """One request's first step: its row for the policy (features, answer format, options), the first model."""

    rows: Requests
    first: int
    costs: np.ndarray  # (K,) estimated $ of a call to each model
    mu: float
    latency: float  # seconds waiting for the router so far (queue, batch forward, next_call steps)

    @property
    def answer_format(self) -> tuple[str, int]:
        return str(self.rows.answer_format[0]), int(self.rows.n_options[0])


@dataclass
class CascadeResult:
    order: list[int] = field(default_factory=list)  # the calls that answered, in order
    answers: list[str] = field(default_factory=list)  # their extracted answers
    reply: Any = None  # the last reply received (the response's body)
    incomplete: str | None = None  # "model: outcome" of a call that failed after an answer


def reply_text(data: Any) -> str:
    """The text of a chat completion's first choice ("" when it has none)."""
    try:
        content = data["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""
    if isinstance(content, list):  # content parts
        content = "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return content if isinstance(content, str) else ""


async def run(svc, start: CascadeStart, body: dict) -> CascadeResult:
    """The cascade for one request on `svc` (a RouterService): calls until the policy stops, the last call allowed
    (max_calls) or an upstream fails. The first call failing raises as a one-shot request would (ApiError), or
    returns the upstream's 4xx reply with an empty `order`."""
    body = {k: v for k, v in body.items() if k not in NOT_FORWARDED}
    models, policy = svc.models, svc.policy
    fmt, n_options = start.answer_format
    res, nxt = CascadeResult(), start.first
    while True:
        model = models[nxt]
        outcome, fwd = await svc.upstreams.call_one(body, model)
        if fwd is None or fwd.status != 200:
            if not res.order:  # nothing to return: the request fails as a one-shot one would
                if fwd is not None:
                    res.reply = fwd
                    return res
                status = 504 if outcome == "timeout" else 502
                raise ApiError(status, f"the cascade's first model {model} did not answer ({outcome})",
                               code="upstream_failed")
            res.incomplete = f"{model}: {outcome}"
            svc.metrics.cascade_cut.labels(model).inc()
            log.warning("cascade: %s failed (%s) after %s; returning %s's answer", model, outcome,
                        CHAIN_SEP.join(models[j] for j in res.order), models[res.order[-1]])
            break
        res.order.append(nxt)
        res.reply = fwd.data
        res.answers.append(extract_answer(reply_text(fwd.data), fmt, n_options))
        if len(res.order) >= min(int(policy.max_calls), len(models)):
            break
        nxt = await svc.next_call(start, res.order, res.answers)
        if nxt == STOP:
            break
        svc.metrics.escalations.labels(model, models[nxt]).inc()
    svc.metrics.cascade_calls.observe(len(res.order))
    return res


def summary(svc, start: CascadeStart, res: CascadeResult) -> tuple[dict, dict[str, str]]:
    """(the response's `vlrb` field, its headers) for a cascade that received at least one answer."""
    called = [svc.models[j] for j in res.order]
    cost = float(start.costs[res.order].sum())
    fmt, n_options = start.answer_format
    info = {"model": called[-1], "cascade": True, "models_called": called, "answers": res.answers,
            "answer_format": fmt, "n_options": n_options, "estimated_cost": cost,
            "estimated_costs": [float(start.costs[j]) for j in res.order], "mu": start.mu,
            "router_latency_ms": start.latency * 1000, "incomplete": res.incomplete}
    headers = {"x-vlrb-model": called[-1], "x-vlrb-models-called": CHAIN_SEP.join(called),
               "x-vlrb-estimated-cost": f"{cost:.6g}"}
    if res.incomplete:
        headers["x-vlrb-cascade-incomplete"] = _header_safe(res.incomplete)
    return info, headers


def route_info(svc, start: CascadeStart) -> dict:
    """/v1/route of a cascade: the first model only (the rest depends on the answers)."""
    first = svc.models[start.first]
    fmt, n_options = start.answer_format
    return {"object": "vlrb.route", "cascade": True, "model": first, "first": first,
            "max_calls": int(svc.policy.max_calls), "order": None, "mu": start.mu, "answer_format": fmt,
            "n_options": n_options, "estimated_cost": float(start.costs[start.first]),
            "estimated_costs": {m: float(c) for m, c in zip(svc.models, start.costs)},
            "router_latency_ms": start.latency * 1000,
            "note": "a cascade: whether it calls more models, and which, depends on the answers it receives "
                    "(POST /v1/chat/completions runs it)"}


def events(data: dict, info: dict) -> Iterator[bytes]:
    """A finished reply as the server-sent events of a stream (`stream: true` on a cascade): its whole text in one
    chunk, then the finish reason (with the `vlrb` field), then [DONE]."""
    choices = data.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    base = {"id": data.get("id", "chatcmpl-vlrb"), "object": "chat.completion.chunk",
            "created": data.get("created", int(time.time())), "model": info["model"]}
    chunk = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": reply_text(data)},
                                  "finish_reason": None, "logprobs": None}]}
    yield f"data: {json.dumps(chunk)}\n\n".encode()
    last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop",
                                 "logprobs": None}], "vlrb": info}
    yield f"data: {json.dumps(last)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def _header_safe(text: str) -> str:
    return re.sub(r"[^\x20-\x7e]", "?", text)[:300]
