"""Availability (README "Serving a router": pool restriction, circuit breakers): a request's `vlrb.models` restricts
its candidates on /v1/chat/completions and /v1/route (bad lists are 4xx); a circuit breaker per upstream takes a
failing model out of routing after `breaker.failures` failures within `window_s`, lets one probe through after
`open_s`, and closes on its success; /health and /metrics show the states.

The breaker's state machine runs on a fake clock; the served tests use the stub router of test_serve.py ("hard"
prompts score dear > mid > cheap) in process and the fake OpenAI-compatible upstream of serve_support, whose
`up-dear` answers 500 to every call."""
from __future__ import annotations

import pytest

from serve_support import MODELS, FakeUpstream, StubRouter
from vlrb.errors import ConfigError
from vlrb.serve.health import CLOSED, HALF_OPEN, OPEN, Breaker, Breakers
from vlrb.serve.settings import ServeSettings, Upstream

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from vlrb.serve.app import create_app  # noqa: E402

NAME = "vlrb-pool"


def user(text: str, **vlrb) -> dict:
    body = {"model": NAME, "messages": [{"role": "user", "content": text}]}
    return body | ({"vlrb": vlrb} if vlrb else {})


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# ------------------------------------------------------------------------------------------ the state machine
def test_breaker_opens_after_n_failures_within_the_window():
    clock = Clock()
    b = Breaker(failures=3, window_s=10, open_s=5, clock=clock)
    assert b.state == CLOSED and b.available()
    for _ in range(2):
        assert b.record(False, b.acquire()) is False
        clock.t += 6  # spread over more than the window: the oldest is forgotten
    assert b.recent_failures() == 1 and b.state == CLOSED
    assert b.record(True, b.acquire()) is False  # a success in between changes nothing
    b.record(False, b.acquire())
    assert b.state == CLOSED and b.recent_failures() == 2
    assert b.record(False, b.acquire()) is True  # the third within 10 s
    assert b.state == OPEN and not b.available() and b.acquire() is None and b.openings == 1
    assert b.retry_in() == pytest.approx(5.0)
    b.record(False, "call")  # a call that left before it opened: no longer counts
    assert b.retry_in() == pytest.approx(5.0) and b.openings == 1


def test_breaker_half_open_lets_one_probe_through():
    clock = Clock()
    b = Breaker(failures=1, window_s=10, open_s=5, clock=clock)
    b.record(False, b.acquire())
    assert b.state == OPEN
    clock.t += 5
    assert b.state == HALF_OPEN and b.available() and b.retry_in() == 0
    assert b.acquire() == "probe"
    assert not b.available() and b.acquire() is None  # one probe at a time
    assert b.record(False, "probe") is True  # the probe failed: open again, for open_s more
    assert b.state == OPEN and b.openings == 2 and b.retry_in() == pytest.approx(5.0)
    clock.t += 5.01
    ticket = b.acquire()
    b.release(ticket)  # the probe's client left: nothing learned, the probe is free again
    assert b.state == HALF_OPEN and b.acquire() == "probe"
    b.record(True, "probe")
    assert b.state == CLOSED and b.recent_failures() == 0 and b.acquire() == "call"


def test_breakers_collection_and_off_switch():
    clock, opened = Clock(), []
    bs = Breakers(MODELS, failures=2, window_s=10, open_s=3, clock=clock, on_open=opened.append)
    for _ in range(2):
        bs.record("dear", False, bs.acquire("dear"))
    assert opened == ["dear"] and not bs.available("dear") and bs.available("mid") and bs.available("other")
    assert bs.retry_in(["dear"]) == pytest.approx(3.0) and bs.retry_in(["mid"]) == 0
    snap = bs.snapshot()
    assert snap["dear"] == {"state": "open", "recent_failures": 0, "probe_in_s": 3.0, "openings": 1}
    assert snap["mid"]["state"] == "closed"
    off = Breakers(MODELS, failures=0, window_s=10, open_s=3, clock=clock)
    for _ in range(10):
        off.record("dear", False, off.acquire("dear"))
    assert off.available("dear") and off.snapshot()["dear"]["state"] == "closed"


def test_breaker_and_pool_settings_and_their_errors():
    s = ServeSettings.from_config({"route_only": True, "breaker": {"failures": 2, "window_s": 5, "open_s": 0.5}},
                                  MODELS)
    assert (s.breaker_failures, s.breaker_window_s, s.breaker_open_s) == (2, 5.0, 0.5)
    assert ServeSettings.from_config({"route_only": True}, MODELS).breaker_failures == 5
    bad = [({"breaker": {"failures": -1}}, "breaker.failures must be an integer >= 0"),
           ({"breaker": {"window_s": 0}}, "breaker.window_s must be a finite number >= 0.001"),
           ({"breaker": {"open_s": "soon"}}, "breaker.open_s must be a number"),
           ({"breaker": [1]}, "breaker must be a mapping")]
    for cfg, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            ServeSettings.from_config({"route_only": True, **cfg}, MODELS)


# ------------------------------------------------------------------------------------------ pool restriction
def test_a_request_restricts_the_pool_on_both_endpoints():
    with TestClient(create_app(StubRouter(), ServeSettings(model_name=NAME))) as c:
        r = c.post("/v1/route", json=user("hard", models=["cheap", "mid"]))
        assert r.status_code == 200 and r.json()["model"] == "mid" and r.json()["order"] == ["mid", "cheap"]
        r = c.post("/v1/chat/completions", json=user("hard", models=["cheap"]))
        assert r.status_code == 200 and r.headers["x-vlrb-model"] == "cheap"
        assert r.json()["choices"][0]["message"]["content"] == "cheap"
        assert c.post("/v1/route", json=user("hard", models=["dear", "dear"])).json()["order"] == ["dear"]
        for body, status, words in [(user("hard", models=["mid", "gpt-9", "x"]), 400, "unknown model ids ['gpt-9', 'x']"),
                                    (user("hard", models=[]), 400, "'vlrb.models' is empty"),
                                    (user("hard", models="mid"), 400, "must be a list of model ids"),
                                    (user("hard", models=[1]), 400, "must be a list of model ids")]:
            for path in ("/v1/route", "/v1/chat/completions"):
                r = c.post(path, json=body)
                assert r.status_code == status and words in r.json()["error"]["message"], (path, r.text)
                assert r.json()["error"]["param"] == "vlrb.models"


def test_a_restriction_to_models_without_an_upstream_is_a_400(upstream):
    ups = {"cheap": Upstream(upstream.url, "up-cheap")}
    with TestClient(create_app(StubRouter(), ServeSettings(model_name=NAME, route_only=False, upstreams=ups))) as c:
        r = c.post("/v1/chat/completions", json=user("hard", models=["dear"]))
        assert r.status_code == 400 and "none of ['dear'] has an upstream" in r.json()["error"]["message"]


# ------------------------------------------------------------------------------------------ breakers, served
@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream(slow_s=2.0) as up:
        yield up


def served(up: FakeUpstream, **kw):
    ups = {m: Upstream(up.url, f"up-{m}") for m in MODELS}
    settings = {"model_name": NAME, "route_only": False, "upstreams": ups, "timeout_s": 2.0,
                "breaker_failures": 3, "breaker_window_s": 30.0, "breaker_open_s": 0.6, **kw}
    return create_app(StubRouter(), ServeSettings(**settings))


def dear_calls(up: FakeUpstream) -> int:
    return sum(c["model"] == "up-dear" for c in up.calls)


def test_a_failing_upstream_is_taken_out_then_probed(upstream):
    upstream.behaviour.clear()
    upstream.calls.clear()
    upstream.behaviour["up-dear"] = "500"
    app, clock = served(upstream), Clock()
    for b in app.state.service.breakers.by_model.values():  # time moves when the test says (a busy machine is slow)
        b.clock = clock
    with TestClient(app) as c:
        for i in range(12):  # every request is answered, by mid (dear's fallback)
            r = c.post("/v1/chat/completions", json=user("a hard one"))
            assert r.status_code == 200 and r.headers["x-vlrb-model"] == "mid", (i, r.text)
        assert dear_calls(upstream) == 3  # the breaker opened after 3 failures: no request waited on dear since
        assert c.post("/v1/route", json=user("hard")).json()["order"] == ["mid", "cheap"]  # open: not a candidate
        health = c.get("/health").json()["upstreams"]
        assert health["dear"]["state"] == "open" and health["dear"]["probe_in_s"] == 0.6
        assert health["mid"] == {"state": "closed", "recent_failures": 0, "probe_in_s": 0.0, "openings": 0}
        text = c.get("/metrics").text
        assert 'vlrb_upstream_state{model="dear",state="open"} 1.0' in text
        assert 'vlrb_upstream_state{model="dear",state="closed"} 0.0' in text
        assert 'vlrb_upstream_state{model="mid",state="closed"} 1.0' in text
        assert 'vlrb_breaker_openings_total{model="dear"} 1.0' in text

        clock.t += 0.7  # open_s: half-open, the next request is the probe (it fails: open again)
        assert c.get("/health").json()["upstreams"]["dear"]["state"] == "half_open"
        r = c.post("/v1/chat/completions", json=user("hard"))
        assert r.status_code == 200 and r.headers["x-vlrb-model"] == "mid" and r.json()["vlrb"]["attempts"] == ["dear", "mid"]
        for _ in range(3):
            assert c.post("/v1/chat/completions", json=user("hard")).headers["x-vlrb-model"] == "mid"
        assert dear_calls(upstream) == 4 and c.get("/health").json()["upstreams"]["dear"]["openings"] == 2

        upstream.behaviour.clear()  # dear recovers: the next probe closes the breaker
        clock.t += 0.7
        r = c.post("/v1/chat/completions", json=user("hard"))
        assert r.status_code == 200 and r.headers["x-vlrb-model"] == "dear"
        assert c.get("/health").json()["upstreams"]["dear"]["state"] == "closed"
        assert c.post("/v1/chat/completions", json=user("hard")).headers["x-vlrb-model"] == "dear"


def test_every_candidate_open_is_a_503_with_retry_after(upstream):
    upstream.behaviour.clear()
    upstream.behaviour.update({"up-dear": "500", "up-mid": "500", "up-cheap": "500"})
    with TestClient(served(upstream, breaker_failures=1, breaker_open_s=30.0)) as c:
        r = c.post("/v1/chat/completions", json=user("hard"))
        assert r.status_code == 502  # the three failed: each breaker opened
        upstream.calls.clear()
        for path in ("/v1/chat/completions", "/v1/route"):
            r = c.post(path, json=user("hard"))
            assert r.status_code == 503 and r.json()["error"]["code"] == "upstreams_unavailable", r.text
            assert "circuit breaker open" in r.json()["error"]["message"] and int(r.headers["retry-after"]) >= 29
        assert upstream.calls == []
        # a restriction to open models only is the same 503; a healthy model elsewhere would have been chosen
        assert c.post("/v1/route", json=user("hard", models=["cheap"])).status_code == 503
    upstream.behaviour.clear()


def test_streaming_and_concurrent_requests_skip_an_open_upstream(upstream):
    import httpx

    upstream.behaviour.clear()
    upstream.calls.clear()
    upstream.behaviour["up-dear"] = "500"
    with TestClient(served(upstream, breaker_open_s=30.0)) as c:
        for _ in range(3):
            c.post("/v1/chat/completions", json=user("hard"))
        before = dear_calls(upstream)
        r = c.post("/v1/chat/completions", json=user("hard") | {"stream": True})
        assert r.status_code == 200 and r.headers["x-vlrb-model"] == "mid" and "[DONE]" in r.text

        async def many():
            transport = httpx.ASGITransport(app=c.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
                import asyncio

                rs = await asyncio.gather(*[ac.post("/v1/chat/completions", json=user("hard")) for _ in range(16)])
            return rs

        rs = c.portal.call(many)
        assert all(r.status_code == 200 and r.headers["x-vlrb-model"] == "mid" for r in rs)
        assert dear_calls(upstream) == before == 3
    upstream.behaviour.clear()


# ------------------------------------------------------------------------------------------ a cascade
def test_a_cascade_refuses_a_restriction_and_skips_an_open_model(tmp_path, upstream):
    from test_serve_cascade import N_TRAIN, benchmark, save

    from conftest import make_router

    router = make_router("cascade_validity", max_calls=3).fit(benchmark(range(N_TRAIN), "train").split("train"))
    tr = save(router, tmp_path / "router")
    ups = {m: Upstream(upstream.url, f"up-{m}") for m in MODELS}
    settings = ServeSettings(model_name=NAME, route_only=False, upstreams=ups, breaker_failures=1,
                             breaker_open_s=30.0)
    upstream.behaviour.clear()
    with TestClient(create_app(tr, settings)) as c:
        first = c.post("/v1/route", json=user("Question 1: which colour?\nA. red\nB. blue")).json()["first"]
        r = c.post("/v1/chat/completions", json=user("Question 1", models=["mid"]))
        assert r.status_code == 400 and "cannot restrict a cascade" in r.json()["error"]["message"]
        upstream.behaviour[f"up-{first}"] = "500"
        upstream.calls.clear()
        body = user("Question 1: which colour?\nA. red\nB. blue")
        assert c.post("/v1/chat/completions", json=body).status_code == 502  # the first call failed: it opens
        assert c.post("/v1/chat/completions", json=body).status_code == 502  # skipped without a call
        assert [x["model"] for x in upstream.calls] == [f"up-{first}"]
        assert c.get("/health").json()["upstreams"][first]["state"] == "open"
    upstream.behaviour.clear()
