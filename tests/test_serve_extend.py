"""Extending the routing server (vlrb.serve.app): a new endpoint is one decorated function on a router of one's own,
passed to `create_app(..., extra_routers=[...])`, with nothing under vlrb/ edited. Its requests appear in /metrics
under its own path template, auth applies when it asks for it, and it belongs to the apps it was given to, no other.

Metrics label every request by the path template of the route it matched (no list of endpoints kept anywhere); a
path that no route serves is "other"."""
import re

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi import APIRouter, Depends  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from serve_support import MEAN_COST, MODELS  # noqa: E402
from vlrb.serve import routes  # noqa: E402
from vlrb.serve.app import create_app  # noqa: E402
from vlrb.serve.dependencies import Service, authorized  # noqa: E402
from vlrb.serve.settings import ServeSettings  # noqa: E402

NAME = "vlrb-test"
KEY = {"Authorization": "Bearer k1"}


class Stub:
    """Scores [cheap, mid, dear] = [3, 1, 0] for every prompt: every request goes to 'cheap'."""

    models = MODELS
    prices = None
    mean_cost = MEAN_COST
    name = "stub"

    def score_raw(self, prompts, images):
        return np.array([[3.0, 1.0, 0.0]] * len(prompts))


def settings(**kw) -> ServeSettings:
    return ServeSettings(**{"model_name": NAME, **kw})


def count(text: str, metric: str, endpoint: str, code: str | None = None) -> float:
    """The value of `metric{code=...,endpoint=...}` in a Prometheus exposition (0 when absent)."""
    labels = (f'code="{code}",' if code else "") + f'endpoint="{endpoint}"'
    m = re.search(rf"^{metric}\{{{re.escape(labels)}\}} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_new_endpoint_is_one_decorated_function_counted_under_its_path():
    mine = APIRouter(dependencies=[Depends(authorized)])

    @mine.get("/v1/hello")
    async def hello(svc: Service):
        return {"hello": svc.settings.model_name, "models": svc.models}

    with TestClient(create_app(Stub(), settings(api_keys=frozenset({"k1"})), extra_routers=[mine])) as c:
        r = c.get("/v1/hello")  # the auth dependency applies: an OpenAI-style 401 like the built-in routes'
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        for _ in range(2):
            r = c.get("/v1/hello", headers=KEY)
            assert r.status_code == 200 and r.json() == {"hello": NAME, "models": MODELS}
        text = c.get("/metrics", headers=KEY).text
    assert 'vlrb_requests_total{code="200",endpoint="/v1/hello"} 2.0' in text
    assert 'vlrb_errors_total{code="401",endpoint="/v1/hello"} 1.0' in text
    assert count(text, "vlrb_request_latency_seconds_count", "/v1/hello") == 3


def test_an_extension_belongs_to_its_app_only():
    """Two apps in one process, one extended: the other has no such route, and each endpoint reads its own app's
    service. The built-in routers are not changed by an extension."""
    mine = APIRouter()  # no auth dependency: an open endpoint

    @mine.get("/v1/whoami")
    async def whoami(svc: Service):
        return {"model": svc.settings.model_name}

    before = [(r.path, sorted(r.methods)) for r in routes.public.routes + routes.api.routes]
    keyed = settings(model_name="a", api_keys=frozenset({"k1"}))
    with TestClient(create_app(Stub(), keyed, extra_routers=[mine])) as a, \
            TestClient(create_app(Stub(), settings(model_name="b"), extra_routers=[mine])) as b, \
            TestClient(create_app(Stub(), settings())) as plain:
        assert a.get("/v1/whoami").json() == {"model": "a"}  # open: no key needed
        assert b.get("/v1/whoami").json() == {"model": "b"}
        r = plain.get("/v1/whoami")
        assert r.status_code == 404 and "no route /v1/whoami" in r.json()["error"]["message"]
        text = plain.get("/metrics").text
    assert 'vlrb_requests_total{code="404",endpoint="other"} 1.0' in text and "/v1/whoami" not in text
    assert [(r.path, sorted(r.methods)) for r in routes.public.routes + routes.api.routes] == before


def test_a_route_with_parameters_is_counted_under_its_template():
    mine = APIRouter(prefix="/v1/models")  # a prefix goes in the router: the metrics read the route's own path

    @mine.get("/{model}/price")
    async def price(model: str, svc: Service):
        return {"model": model, "mean_cost": svc.router.mean_cost.get(model)}

    with TestClient(create_app(Stub(), settings(), extra_routers=[mine])) as c:
        assert c.get("/v1/models").json()["data"][0]["id"] == NAME  # the built-in route is still there
        for m in MODELS:
            assert c.get(f"/v1/models/{m}/price").json() == {"model": m, "mean_cost": MEAN_COST[m]}
        text = c.get("/metrics").text
    assert 'vlrb_requests_total{code="200",endpoint="/v1/models/{model}/price"} 3.0' in text
    assert 'vlrb_requests_total{code="200",endpoint="/v1/models"} 1.0' in text
    assert "/v1/models/cheap" not in text  # label values stay bounded whatever the paths sent


def test_every_built_in_route_is_counted_under_its_own_path_and_others_are_other():
    with TestClient(create_app(Stub(), settings()), raise_server_exceptions=False) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/v1/models").status_code == 200
        assert c.post("/v1/route", json={"messages": [{"role": "user", "content": "hi"}]}).status_code == 200
        body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}]}
        assert c.post("/v1/chat/completions", json=body).status_code == 200
        assert c.get("/v1/chat/completions").status_code == 405  # the path matched, the method did not
        assert c.get("/nowhere").status_code == 404 and c.get("/v1/route/extra").status_code == 404
        c.get("/metrics")
        text = c.get("/metrics").text
    for path in ("/health", "/v1/models", "/v1/route", "/v1/chat/completions", "/metrics"):
        assert count(text, "vlrb_requests_total", path, "200") == 1, path  # /metrics: the first scrape, the
        # second (being answered) is counted once it has ended
    assert count(text, "vlrb_errors_total", "/v1/chat/completions", "405") == 1
    assert count(text, "vlrb_requests_total", "other", "404") == 2
    assert set(re.findall(r'endpoint="([^"]+)"', text)) == {"/health", "/v1/models", "/v1/route",
                                                              "/v1/chat/completions", "/metrics", "other"}


def test_a_user_route_cannot_shadow_a_built_in_one():
    clash = APIRouter()

    @clash.post("/v1/route")
    async def my_route():
        return {}

    with pytest.raises(ValueError, match=r"POST /v1/route is already served"):
        create_app(Stub(), settings(), extra_routers=[clash])
    with pytest.raises(TypeError, match="APIRouter"):
        create_app(Stub(), settings(), extra_routers=[lambda: None])
    other_method = APIRouter()

    @other_method.get("/v1/route")  # another method on a built-in path is a route of its own
    async def route_help():
        return {"help": "POST a chat request here"}

    with TestClient(create_app(Stub(), settings(), extra_routers=[other_method])) as c:
        assert c.get("/v1/route").json() == {"help": "POST a chat request here"}
        assert c.post("/v1/route", json={"messages": [{"role": "user", "content": "hi"}]}).json()["model"] == "cheap"


def test_the_recipe_in_the_app_docstring_runs():
    import textwrap

    import vlrb.serve.app as app_module

    doc = app_module.__doc__
    start = doc.index("    from fastapi import APIRouter")
    code = textwrap.dedent(doc[start:doc.index("\n\n", doc.index("create_app(trained_router"))])
    ns = {"trained_router": Stub(), "settings": settings(api_keys=frozenset({"k1"}))}
    exec(compile(code, "vlrb/serve/app.py docstring", "exec"), ns)
    with TestClient(ns["app"]) as c:
        assert c.get("/v1/hello").status_code == 401
        assert c.get("/v1/hello", headers=KEY).json() == {"hello": NAME, "models": MODELS}
        assert 'vlrb_requests_total{code="200",endpoint="/v1/hello"} 1.0' in c.get("/metrics", headers=KEY).text
