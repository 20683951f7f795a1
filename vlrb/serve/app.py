"""The FastAPI app: an OpenAI-compatible chat endpoint in front of a trained router.

`create_app(router, settings)` builds the app's `RouterService` (`vlrb.serve.service`, kept in `app.state`),
includes the routers of `vlrb.serve.routes` (the endpoints, module-level functions), installs the OpenAI-style
error handlers and the metrics middleware (`vlrb.serve.metrics.RequestCounter`). It holds no endpoint itself.

Adding an endpoint: one decorated function on an `APIRouter` of your own, passed to `create_app(...,
extra_routers=[yours])`; it reaches the service and auth through the dependencies of `vlrb.serve.dependencies`, and
its requests are counted in /metrics under its path template, like the built-in ones:

    from fastapi import APIRouter, Depends
    from vlrb.serve.app import create_app
    from vlrb.serve.dependencies import Service, authorized

    mine = APIRouter(dependencies=[Depends(authorized)])  # leave `dependencies` out for an open endpoint

    @mine.get("/v1/hello")
    async def hello(svc: Service):
        return {"hello": svc.settings.model_name, "models": svc.models}

    app = create_app(trained_router, settings, extra_routers=[mine])

Your router belongs to the apps you pass it to; do not decorate the routers of `vlrb.serve.routes`: every app of
the process includes them (by reference: a route added there appears in apps already built). A prefix goes in
your router (`APIRouter(prefix="/x")`), not in an `include_router` call: the metrics read the route's own path.
Built-in routes come first and a user route on one of their paths and methods is refused (a ValueError).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from vlrb.serve import routes
from vlrb.serve.errors import ApiError, error_body
from vlrb.serve.metrics import CLIENT_CLOSED, RequestCounter
from vlrb.serve.service import RouterService
from vlrb.serve.settings import ServeSettings

log = logging.getLogger("vlrb.serve")
BUILT_IN = (routes.public, routes.api)


def create_app(router, settings: ServeSettings | None = None, *,
               extra_routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The app serving `router` (a `vlrb.artifact.TrainedRouter`, or anything with `.models`, `.prices`,
    `.mean_cost`, `.label` and `.score_raw(prompts, images)`), with the endpoints of `extra_routers` (your
    `fastapi.APIRouter`s: HTTP routes, not routing models) after the built-in ones."""
    settings = settings or ServeSettings()
    _refuse_clashes(extra_routers)
    app = FastAPI(title="vlrb router", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  exception_handlers=EXCEPTION_HANDLERS)
    app.state.service = svc = RouterService(router, settings)
    for r in (*BUILT_IN, *extra_routers):
        app.include_router(r)
    app.add_middleware(RequestCounter, metrics=svc.metrics)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI):
    svc: RouterService = app.state.service
    s = svc.settings
    await svc.start()
    log.info("serving %s: %d models, %s, mu=%g, batches of <= %d%s", s.model_name, len(svc.models),
             "route_only" if s.route_only else f"{len(s.upstreams)} upstreams", s.mu, s.max_batch,
             f"; a cascade of up to {svc.policy.max_calls} calls" if svc.policy is not None else "")
    try:
        yield
    finally:
        await svc.stop()


def _refuse_clashes(routers: Sequence[APIRouter]) -> None:
    taken = _served(BUILT_IN)
    for r in routers:
        if not isinstance(r, APIRouter):
            raise TypeError(f"extra_routers: expected fastapi.APIRouter objects, got {type(r).__name__}")
        clash = sorted(_served([r]) & taken)
        if clash:
            method, path = clash[0]
            raise ValueError(f"extra_routers: {method} {path} is already served (by vlrb.serve.routes or an "
                             "earlier router)")
        taken |= _served([r])


def _served(routers) -> set[tuple[str, str]]:
    """(method, path) of every route of `routers` (their own routes; a router they include is not looked into)."""
    return {(m, r.path) for rt in routers for r in rt.routes for m in (getattr(r, "methods", None) or ())}


# ------------------------------------------------------------------------------------------ errors
async def _api_error(request: Request, e: ApiError):
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _http_error(request: Request, e: StarletteHTTPException):
    err = ApiError(e.status_code, str(e.detail) if e.status_code != 404 else f"no route {request.url.path}")
    return JSONResponse(err.body(), status_code=e.status_code, headers=getattr(e, "headers", None))


async def _gone(request: Request, e: ClientDisconnect):  # the client left while sending its body: no one to answer
    return Response(status_code=CLIENT_CLOSED)


async def _internal(request: Request, e: Exception):
    log.error("internal error on %s: %s: %s", request.url.path, type(e).__name__, e)
    return JSONResponse(error_body("internal server error", "server_error"), status_code=500)


EXCEPTION_HANDLERS = {ApiError: _api_error, StarletteHTTPException: _http_error, ClientDisconnect: _gone,
                      Exception: _internal}
