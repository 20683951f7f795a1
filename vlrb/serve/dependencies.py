"""FastAPI dependencies of the routes: the app's service, bearer auth, and a chat request read and checked.

    async def endpoint(svc: Service): ...                            # the RouterService of the app serving it
    @router.get("/path", dependencies=[Depends(authorized)])         # a key from auth.api_keys_env, when set
    async def endpoint(chat: ChatInput = Depends(chat_input)): ...   # body read, parsed, its images decoded

Nothing here is module state: each dependency reads the app that received the request (`request.app.state`), so
several apps in one process (tests) share no service, settings or counts.
"""
from __future__ import annotations

from typing import Annotated, Any, NamedTuple

from fastapi import Depends, Request

from vlrb.serve import security
from vlrb.serve.schema import ChatRequest, parse_chat
from vlrb.serve.service import RouterService


async def service(request: Request) -> RouterService:
    """The RouterService of the app that received the request (set by `vlrb.serve.app.create_app`)."""
    return request.app.state.service


Service = Annotated[RouterService, Depends(service)]  # `svc: Service` in an endpoint's signature


async def authorized(request: Request, svc: Service) -> None:
    """`Authorization: Bearer <key>` with one of the configured keys (none configured: open); else a 401."""
    security.check_auth(request.headers.get("authorization"), svc.settings.api_keys)


class ChatInput(NamedTuple):
    req: ChatRequest
    image: Any  # the routed image (PIL) or None


async def _read_chat(request: Request, svc: RouterService, *, model_required: bool) -> ChatInput:
    s = svc.settings
    raw = await security.read_body(request.headers, request.stream(), s.max_body_bytes)
    req = parse_chat(raw, s.model_name, model_required=model_required)
    return ChatInput(req, await svc.load_image(req))


async def chat_input(request: Request, svc: Service, _: None = Depends(authorized)) -> ChatInput:
    """A chat completion request (its `model` must name this server's router), authorized before it is read."""
    return await _read_chat(request, svc, model_required=True)


async def route_input(request: Request, svc: Service, _: None = Depends(authorized)) -> ChatInput:
    """The same body for /v1/route, where `model` is optional."""
    return await _read_chat(request, svc, model_required=False)
