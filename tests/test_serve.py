"""The routing server (vlrb.serve, serve.py): routing, the budget rule, forwarding with fallback, streaming,
micro-batching, metrics, auth, and a 4xx OpenAI-style JSON error for every bad request.

In-process tests use FastAPI's TestClient with a stub router (its scores follow the prompt: "hard" questions
score the dear model highest) and, for forwarding, a fake OpenAI-compatible upstream on loopback. The
real-process tests run `serve.py` under uvicorn with a tiny trained k-NN router (red squares -> cheap,
blue squares -> dear) and talk to it with httpx and the official `openai` client."""
from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import time

import numpy as np
import pytest

from serve_support import (BLUE, MEAN_COST, MODELS, RED, FakeUpstream, ServeProcess, StubRouter, bomb_uri,
                           build_tiny_router, data_uri)
from vlrb.errors import ConfigError
from vlrb.serve.batching import MicroBatcher, Overloaded
from vlrb.serve.decide import CostModel, choose, decide, log_softmax
from vlrb.serve.settings import ServeSettings, Upstream

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from vlrb.serve.app import create_app  # noqa: E402

NAME = "vlrb-test"
PRICES = {"cheap": {"input_per_1m": 0.1, "output_per_1m": 0.4}, "mid": {"input_per_1m": 0.5, "output_per_1m": 2.0},
          "dear": {"input_per_1m": 5.0, "output_per_1m": 20.0}}


def user(*parts, **extra) -> dict:
    content = [{"type": "text", "text": p} if not p.startswith("data:") and not p.startswith(("http", "/", "file:"))
               else {"type": "image_url", "image_url": {"url": p}} for p in parts]
    return {"model": NAME, "messages": [{"role": "user", "content": content}], **extra}


def settings(**kw) -> ServeSettings:
    return ServeSettings(**{"model_name": NAME, **kw})


@pytest.fixture
def client():
    router = StubRouter()
    with TestClient(create_app(router, settings())) as c:
        c.router = router
        yield c


# ------------------------------------------------------------------------------------------ the budget rule
def test_budget_rule_golden_values():
    scores = np.array([[0.0, 1.0, 3.0]])
    costs = np.array([[2e-5, 1e-4, 1e-3]])
    lp = log_softmax(scores)[0]
    assert lp == pytest.approx([-3.1698, -2.1698, -0.1698], abs=1e-4) and math.isclose(np.exp(lp).sum(), 1)
    # u_k = log p_k - mu * c_k / 1e-3: dear 3 - mu, mid 1 - 0.1 mu, cheap -0.02 mu (up to the shared log-sum-exp)
    assert [MODELS[choose(scores, costs, mu, 1e-3)[0]] for mu in (0, 2.5, 20, -5)] == ["dear", "mid", "cheap", "dear"]
    d = decide(MODELS, scores[0], costs[0], 2.5, 1e-3)
    assert d.order == ["mid", "dear", "cheap"] and d.model == "mid" and d.cost == 1e-4
    assert decide(MODELS, scores[0], costs[0], 0.0, 1e-3, allowed={"cheap", "mid"}).order == ["mid", "cheap"]


def test_cost_model_estimates():
    cm = CostModel.for_router(MODELS, PRICES, MEAN_COST, mode="tokens", output_tokens=100)
    est = cm.estimate([1000, 0], [None, 10])
    assert est[0] == pytest.approx([(1000 * 0.1 + 100 * 0.4) / 1e6, (1000 * 0.5 + 100 * 2) / 1e6, (1000 * 5 + 100 * 20) / 1e6])
    assert est[1] == pytest.approx([10 * 0.4 / 1e6, 10 * 2 / 1e6, 10 * 20 / 1e6])
    assert cm.scale == 1e-3  # the dearest model's mean cost
    mc = CostModel.for_router(MODELS, PRICES, MEAN_COST)
    assert mc.estimate([5, 7]).tolist() == [[2e-5, 1e-4, 1e-3]] * 2
    with pytest.raises(ConfigError, match="no mean cost.*use budget.cost_estimate=tokens"):
        CostModel.for_router(MODELS, PRICES, None)
    with pytest.raises(ConfigError, match="no prices"):
        CostModel.for_router(MODELS, None, MEAN_COST, mode="tokens")


# ------------------------------------------------------------------------------------------ settings
def test_settings_from_config_and_their_errors():
    env = {"UP_KEY": "sk-up", "KEYS": "k1, k2"}
    s = ServeSettings.from_config({"route_only": False, "budget": {"mu": 0.5},
                                   "upstreams": {"dear": {"base_url": "http://127.0.0.1:9/v1/", "model": "gpt",
                                                          "api_key_env": "UP_KEY"}},
                                   "auth": {"api_keys_env": "KEYS"}}, MODELS, "mlp", environ=env)
    assert s.model_name == "vlrb-mlp" and s.mu == 0.5 and s.api_keys == {"k1", "k2"}
    assert s.upstreams["dear"] == Upstream("http://127.0.0.1:9/v1", "gpt", "sk-up")
    bad = [({"route_only": False}, "upstreams is empty"),
           ({"upstreams": {"nope": {"base_url": "http://x"}}}, r"upstreams.nope: 'nope' is not one of"),
           ({"upstreams": {"dear": {"base_url": "ftp://x"}}}, "base_url must start with http"),
           ({"upstreams": {"dear": {"base_url": "http://x", "api_key_env": "MISSING"}}}, "MISSING: the environment"),
           ({"route_only": True, "auth": {"api_keys_env": "MISSING"}}, "auth.api_keys_env=MISSING"),
           ({"route_only": True, "batching": {"max_batch": 0}}, "batching.max_batch must be an integer >= 1"),
           ({"route_only": True, "budget": {"mu": "lots"}}, "budget.mu must be a number"),
           ({"route_only": True, "budget": {"cost_estimate": "vibes"}}, "budget.cost_estimate must be one of"),
           ({"route_only": True, "batching": {"fast_path": "soon"}}, "batching.fast_path must be one of")]
    for cfg, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            ServeSettings.from_config(cfg, MODELS, environ=env)


# ------------------------------------------------------------------------------------------ route_only serving
def test_route_only_completion_names_the_chosen_model(client):
    r = client.post("/v1/chat/completions", json=user("an easy question"))
    assert r.status_code == 200 and r.headers["x-vlrb-model"] == "cheap"
    assert r.json()["choices"][0]["message"]["content"] == "cheap" and r.json()["model"] == "cheap"
    r = client.post("/v1/chat/completions", json=user("a hard question", data_uri(RED)))
    assert r.headers["x-vlrb-model"] == "dear" and float(r.headers["x-vlrb-estimated-cost"]) == 1e-3
    body = r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == "dear"
    assert body["vlrb"]["model"] == "dear" and body["vlrb"]["router_latency_ms"] > 0


def test_route_endpoint_reports_every_score_and_cost(client):
    r = client.post("/v1/route", json={"messages": [{"role": "user", "content": "hard one"}]})
    assert r.status_code == 200
    d = r.json()
    assert d["model"] == "dear" and d["order"] == ["dear", "mid", "cheap"]
    assert d["scores"] == {"cheap": 0.0, "mid": 1.0, "dear": 3.0}
    assert d["estimated_costs"] == MEAN_COST and d["estimated_cost"] == 1e-3 and d["router_latency_ms"] > 0


def test_budget_from_config_and_per_request_override():
    with TestClient(create_app(StubRouter(), settings(mu=20.0))) as c:
        assert c.post("/v1/route", json=user("hard")).json()["model"] == "cheap"  # the server's budget
        r = c.post("/v1/route", json=user("hard", vlrb={"mu": 2.5}))  # extra_body={"vlrb": {"mu": 2.5}}
        assert r.json()["model"] == "mid" and r.json()["mu"] == 2.5
        assert c.post("/v1/chat/completions", json=user("hard", vlrb={"mu": 0})).json()["model"] == "dear"


def test_route_only_streams_server_sent_events(client):
    r = client.post("/v1/chat/completions", json=user("hard", stream=True))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-vlrb-model"] == "dear"
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "dear"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_the_routed_image_is_the_latest_user_image_decoded_in_memory(client):
    body = {"model": NAME, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(RED, (10, 10))}}]},
        {"role": "assistant", "content": "a red square"},
        {"role": "user", "content": [{"type": "text", "text": "and this one?"},
                                     {"type": "image_url", "image_url": {"url": data_uri(BLUE, (12, 8))}}]}]}
    assert client.post("/v1/route", json=body).status_code == 200
    img = client.router.images[-1]
    assert img.size == (12, 8) and img.getpixel((0, 0)) == BLUE
    assert client.post("/v1/route", json=user("text only")).status_code == 200
    assert client.router.images[-1] is None


# ------------------------------------------------------------------------------------------ bad requests
def _big(n):
    return json.dumps(user("x" * n)).encode()


BAD = {
    "malformed JSON": (b'{"model": "vlrb-test", "messages": [', 400, "invalid_json"),
    "not an object": (b"[1, 2]", 400, "invalid_json"),
    "empty body": (b"", 400, "invalid_json"),
    "deeply nested": (b"[" * 5000 + b"]" * 5000, 400, "invalid_json"),
    "missing messages": ({"model": NAME}, 400, None),
    "empty messages": ({"model": NAME, "messages": []}, 400, None),
    "missing model": ({"messages": [{"role": "user", "content": "hi"}]}, 400, None),
    "unknown model": ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "model_not_found"),
    "oversized body": (_big(300_000), 413, "request_too_large"),
    "decompression bomb": (user("what is this?", bomb_uri()), 400, "image_too_large"),
    "remote URL": (user("what is this?", "https://example.com/cat.png"), 400, "invalid_image_url"),
    "non-image data URI": (user("what?", "data:text/plain;base64,aGVsbG8="), 400, "invalid_image"),
    "image data URI of text": (user("what?", "data:image/png;base64," + base64.b64encode(b"not a png").decode()),
                               400, "invalid_image"),
    "bad base64": (user("what?", "data:image/png;base64,@@@"), 400, "invalid_image"),
    "file path": (user("what?", "/etc/passwd"), 400, "invalid_image_url"),
    "file URL": (user("what?", "file:///etc/passwd"), 400, "invalid_image_url"),
    "unsupported part": ({"model": NAME, "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, 400, None),
    "bad role": ({"model": NAME, "messages": [{"role": "wizard", "content": "hi"}]}, 400, None),
    "no user message": ({"model": NAME, "messages": [{"role": "system", "content": "hi"}]}, 400, None),
    "bad mu": (user("hi", vlrb={"mu": "cheap please"}), 400, None),
    "unknown vlrb key": (user("hi", vlrb={"budget": 1}), 400, None),
    "stream not a bool": (user("hi", stream="yes"), 400, None),
    "bad max_tokens": (user("hi", max_tokens=-3), 400, None),
    "too many images": (user("hi", *[data_uri()] * 9), 400, "too_many_images"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_request_gets_its_4xx_json_error(case):
    body, status, code = BAD[case]
    router = StubRouter()
    with TestClient(create_app(router, settings(max_body_bytes=200_000)), raise_server_exceptions=False) as c:
        for path in ("/v1/chat/completions", "/v1/route"):
            if path == "/v1/route" and case in ("missing model", "unknown model"):
                continue  # /v1/route does not need a model
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = c.post(path, content=raw, headers={"content-type": "application/json"})
            assert r.status_code == status, (path, r.text)
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["type"]
            if code:
                assert err["code"] == code, err
    assert router.batches == [1]  # only the start-up warm-up: no bad request reached the router


def test_paths_and_methods_outside_the_api_are_json_errors(client):
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    r = client.get("/nowhere")
    assert r.status_code == 404 and "no route /nowhere" in r.json()["error"]["message"]


def test_bearer_auth():
    with TestClient(create_app(StubRouter(), settings(api_keys=frozenset({"k1", "k2"})))) as c:
        assert c.get("/health").status_code == 200  # liveness stays open
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic k1"}):
            r = c.post("/v1/chat/completions", json=user("hi"), headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert c.get("/metrics").status_code == 401 and c.get("/v1/models").status_code == 401
        ok = {"Authorization": "Bearer k2"}
        assert c.post("/v1/chat/completions", json=user("hi"), headers=ok).status_code == 200
        assert c.get("/v1/models", headers=ok).json()["data"][0]["id"] == NAME


def test_remote_images_when_allowed_still_refuse_inside_addresses():
    from vlrb.serve.security import is_public_address

    assert is_public_address("8.8.8.8") and is_public_address("2001:4860:4860::8888")
    for a in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.4", "169.254.169.254", "100.64.0.1", "0.0.0.0",
              "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "224.0.0.1", "not an ip"):
        assert not is_public_address(a), a
    with TestClient(create_app(StubRouter(), settings(allow_remote_images=True))) as c:
        for url in ("http://127.0.0.1:9/cat.png", "http://localhost:9/cat.png", "https://[::1]/x.png",
                    "http://169.254.169.254/latest/meta-data"):
            r = c.post("/v1/route", json=user("what?", url))
            assert r.status_code == 400 and "non-public address" in r.json()["error"]["message"], (url, r.text)


def test_remote_images_fetched_with_limits(upstream, monkeypatch):
    """With remote URLs allowed, an image is fetched (here from loopback, the address check switched off for the
    test) with no redirect, an image content type, and the size and time limits."""
    from vlrb.serve import security

    monkeypatch.setattr(security, "is_public_address", lambda addr: True)
    base = upstream.url.removesuffix("/v1") + "/files"
    router = StubRouter()
    s = settings(allow_remote_images=True, remote_max_bytes=4000, remote_timeout_s=1.5)  # slow.png takes 3 s
    with TestClient(create_app(router, s)) as c:
        r = c.post("/v1/route", json=user("what?", f"{base}/red.png"))
        assert r.status_code == 200 and router.images[-1].size == (20, 10)
        for name, msg in (("redirect.png", "HTTP 307"), ("big.png", "over 4000 bytes"),
                          ("page.html", "is not an image"), ("slow.png", "within 1.5 s")):
            r = c.post("/v1/route", json=user("what?", f"{base}/{name}"))
            assert r.status_code == 400 and msg in r.json()["error"]["message"], (name, r.text)


# ------------------------------------------------------------------------------------------ batching, metrics
def test_concurrent_requests_share_router_forwards():
    import httpx

    router = StubRouter(delay_s=0.05)
    app = create_app(router, settings(max_batch=8, max_wait_ms=20))

    async def run():
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                rs = await asyncio.gather(*(c.post("/v1/route", json=user("hard" if i % 2 else "easy"))
                                            for i in range(24)))
        return rs

    rs = asyncio.run(run())
    assert all(r.status_code == 200 for r in rs)
    assert [r.json()["model"] for r in rs] == ["cheap", "dear"] * 12  # each request gets its own row back
    batches = router.batches[1:]  # after the warm-up forward
    assert sum(batches) == 24 and max(batches) <= 8 and len(batches) <= 6


def test_batcher_bounds_its_queue_and_keeps_order():
    async def run():
        gate = asyncio.Event()
        loop = asyncio.get_running_loop()

        def fn(items):
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(5)  # hold the forward until released
            return [x * 10 for x in items]

        b = MicroBatcher(fn, max_batch=1, max_wait_ms=0, max_queue=1)
        await b.start()
        first = asyncio.create_task(b.submit(1))
        for _ in range(100):  # bounded: until the first item is in the (held) forward
            await asyncio.sleep(0.01)
            if b._queue.empty():
                break
        second = asyncio.create_task(b.submit(2))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            await b.submit(3)  # one in the forward, one waiting: the queue (1) is full
        gate.set()
        out = await asyncio.gather(first, second)
        await b.stop()
        return out

    assert asyncio.run(run()) == [10, 20]


def test_metrics_in_prometheus_text_format(client):
    for body in (user("hard"), user("easy"), user("easy")):
        client.post("/v1/chat/completions", json=body)
    client.post("/v1/chat/completions", content=b"{")
    text = client.get("/metrics").text
    assert 'vlrb_requests_total{code="200",endpoint="/v1/chat/completions"} 3.0' in text
    assert 'vlrb_errors_total{code="400",endpoint="/v1/chat/completions"} 1.0' in text
    assert 'vlrb_routed_total{model="cheap"} 2.0' in text and 'vlrb_routed_total{model="dear"} 1.0' in text
    assert re.search(r'^vlrb_request_latency_seconds_bucket\{endpoint="/v1/chat/completions",le="\+Inf"\} 4\.0$', text, re.M)
    assert re.search(r"^vlrb_batch_size_count [0-9.]+$", text, re.M) and "vlrb_router_batch_seconds_sum" in text


# ------------------------------------------------------------------------------------------ forwarding (in process)
@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream(slow_s=2.0) as up:
        yield up


def forwarding_app(up: FakeUpstream, **kw):
    ups = {m: Upstream(up.url, f"up-{m}", api_key=f"sk-{m}") for m in MODELS}
    return create_app(StubRouter(), settings(route_only=False, upstreams=ups, timeout_s=0.5, **kw))


def test_forwarding_to_the_chosen_models_upstream(upstream):
    upstream.behaviour.clear()
    upstream.calls.clear()
    with TestClient(forwarding_app(upstream)) as c:
        r = c.post("/v1/chat/completions", json=user("hard", data_uri(), vlrb={"mu": 0}, max_tokens=5))
    assert r.status_code == 200 and r.headers["x-vlrb-model"] == "dear"
    body = r.json()
    assert body["model"] == "dear" and body["choices"][0]["message"]["content"] == "answer from up-dear"
    assert body["vlrb"]["attempts"] == ["dear"]
    call = upstream.calls[-1]
    assert call["model"] == "up-dear" and call["auth"] == "Bearer sk-dear"
    assert "vlrb" not in call["body"] and call["body"]["max_tokens"] == 5  # our field removed, the rest as sent
    assert call["body"]["messages"][0]["content"][1]["image_url"]["url"] == data_uri()


@pytest.mark.parametrize("failure", ["500", "slow"])
def test_fallback_to_the_next_model_on_an_upstream_error_or_timeout(upstream, failure):
    upstream.behaviour.clear()
    upstream.behaviour["up-dear"] = failure
    upstream.calls.clear()
    with TestClient(forwarding_app(upstream)) as c:
        r = c.post("/v1/chat/completions", json=user("hard"))
        text = c.get("/metrics").text
    assert r.status_code == 200 and r.headers["x-vlrb-model"] == "mid" and r.json()["model"] == "mid"
    assert float(r.headers["x-vlrb-estimated-cost"]) == MEAN_COST["mid"]
    assert [c_["model"] for c_ in upstream.calls] == ["up-dear", "up-mid"] and r.json()["vlrb"]["attempts"] == ["dear", "mid"]
    outcome = "timeout" if failure == "slow" else "http_500"
    assert f'vlrb_upstream_attempts_total{{model="dear",outcome="{outcome}"}} 1.0' in text


def test_every_attempt_failing_is_a_502_and_a_client_error_passes_through(upstream):
    upstream.behaviour.clear()
    upstream.behaviour.update({"up-dear": "500", "up-mid": "500", "up-cheap": "500"})
    with TestClient(forwarding_app(upstream, attempts=2)) as c:
        r = c.post("/v1/chat/completions", json=user("hard"))
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_failed"
        assert "dear: HTTP 500; mid: HTTP 500" in r.json()["error"]["message"]
        upstream.behaviour.update({"up-dear": "400"})
        r = c.post("/v1/chat/completions", json=user("hard"))
        assert r.status_code == 400 and r.json()["error"]["message"] == "upstream says no"


def test_streaming_is_passed_through_with_fallback(upstream):
    upstream.behaviour.clear()
    upstream.behaviour["up-dear"] = "500"
    with TestClient(forwarding_app(upstream)) as c:
        r = c.post("/v1/chat/completions", json=user("hard", stream=True))
    assert r.status_code == 200 and r.headers["x-vlrb-model"] == "mid"
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == "answer from up-mid"


def test_only_models_with_an_upstream_are_routed_to(upstream):
    upstream.behaviour.clear()
    ups = {"cheap": Upstream(upstream.url, "up-cheap"), "mid": Upstream(upstream.url, "up-mid")}
    with TestClient(create_app(StubRouter(), settings(route_only=False, upstreams=ups))) as c:
        assert c.post("/v1/route", json=user("hard")).json()["order"] == ["mid", "cheap"]
        assert c.post("/v1/chat/completions", json=user("hard")).json()["model"] == "mid"


# ------------------------------------------------------------------------------------------ serve.py, for real
@pytest.fixture(scope="module")
def tiny_router(tmp_path_factory):
    return build_tiny_router(tmp_path_factory.mktemp("serve") / "router")


@pytest.fixture(scope="module")
def live(tiny_router, upstream, tmp_path_factory):
    """serve.py with upstreams for the three models, bearer auth and a 1 s upstream timeout."""
    run = tmp_path_factory.mktemp("live")
    (run / "upstreams.yaml").write_text("".join(  # the YAML-file form (the README's other form is inline)
        f'{m}: {{base_url: "{upstream.url}", model: up-{m}, api_key_env: UP_KEY}}\n' for m in MODELS))
    overrides = [f"router_dir={tiny_router}", f"upstreams={run / 'upstreams.yaml'}", "fallback.timeout_s=1",
                 "auth.api_keys_env=VLRB_TEST_KEYS", "limits.max_body_bytes=200000", f"model_name={NAME}"]
    with ServeProcess(overrides, run,
                      env={"UP_KEY": "sk-up", "VLRB_TEST_KEYS": "secret-1,secret-2"}) as proc:
        yield proc


def test_the_encoders_fast_path_is_ready_at_start_as_configured(tiny_router):
    """batching.fast_path: `start` prepares a feature router's encoders (ONNX Runtime on a CPU) before the first
    request, `background` asks for it without waiting, `lazy` leaves it to the 512th input; answers are the same."""
    import vlrb
    from vlrb.features.onnx_export import onnxruntime_available

    class Preparing(StubRouter):
        def __init__(self):
            super().__init__()
            self.asked = []

        def prepare(self, wait=False):
            self.asked.append(wait)

    for fast_path, asked in (("background", [False]), ("start", [True]), ("lazy", [])):
        stub = Preparing()
        with TestClient(create_app(stub, settings(fast_path=fast_path))) as c:
            assert stub.asked == asked
            assert c.post("/v1/chat/completions", json=user("a hard question")).headers["x-vlrb-model"] == "dear"
    if not onnxruntime_available():
        return
    router = vlrb.load_router(tiny_router)
    with TestClient(create_app(router, settings(fast_path="start"))) as c:
        runtimes = {m: router.recipe._forward(m)._prepared for m in ("text", "vision")}
        assert all(p is not None and p.runtime == "onnxruntime" for p in runtimes.values()), runtimes
        r = c.post("/v1/chat/completions", json=user("What colour is square 3?", data_uri(BLUE)))
        assert r.status_code == 200 and r.headers["x-vlrb-model"] == "dear"


AUTH = {"Authorization": "Bearer secret-2"}


def test_live_server_routes_and_forwards(live, upstream):
    import httpx

    upstream.behaviour.clear()
    assert httpx.get(f"{live.url}/health", trust_env=False).json()["models"] == MODELS
    for colour, model in ((RED, "cheap"), (BLUE, "dear")):
        r = httpx.post(f"{live.url}/v1/route", json=user("Which colour is this square?", data_uri(colour)),
                       headers=AUTH, trust_env=False, timeout=60)
        assert r.status_code == 200 and r.json()["model"] == model, r.text
        r = httpx.post(f"{live.url}/v1/chat/completions", json=user("Which colour is this square?", data_uri(colour)),
                       headers=AUTH, trust_env=False, timeout=60)
        assert r.status_code == 200 and r.headers["x-vlrb-model"] == model
        assert r.json()["choices"][0]["message"]["content"] == f"answer from up-{model}"
        assert upstream.calls[-1]["auth"] == "Bearer sk-up"


def test_live_server_streams(live, upstream):
    import httpx

    upstream.behaviour.clear()
    with httpx.stream("POST", f"{live.url}/v1/chat/completions", headers=AUTH, trust_env=False, timeout=60,
                      json=user("Which colour?", data_uri(BLUE), stream=True)) as r:
        assert r.status_code == 200 and r.headers["x-vlrb-model"] == "dear"
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "answer from up-dear"


@pytest.mark.parametrize("failure", ["500", "slow"])
def test_live_server_falls_back(live, upstream, failure):
    import httpx

    upstream.behaviour.clear()
    upstream.behaviour["up-dear"] = failure
    upstream.calls.clear()
    t0 = time.perf_counter()
    r = httpx.post(f"{live.url}/v1/chat/completions", json=user("Which colour?", data_uri(BLUE)), headers=AUTH,
                   trust_env=False, timeout=60)
    # blue: dear first; cheap and mid tie at 0 and keep the router's model order
    assert r.status_code == 200 and r.headers["x-vlrb-model"] == "cheap", r.text
    assert [c["model"] for c in upstream.calls] == ["up-dear", "up-cheap"]
    if failure == "slow":
        assert time.perf_counter() - t0 < 2.0  # the 1 s timeout, not the upstream's 2 s
    assert re.search(r"upstream attempt 1/3: dear failed \((HTTP 500|timeout)", live.output())


def test_live_server_auth_and_bad_requests(live):
    import httpx

    post = lambda body, **kw: httpx.post(f"{live.url}/v1/chat/completions", content=body,  # noqa: E731
                                         headers={"content-type": "application/json", **kw.pop("headers", AUTH)},
                                         trust_env=False, timeout=60)
    ok = json.dumps(user("hi")).encode()
    assert post(ok, headers={}).status_code == 401
    assert post(ok, headers={"Authorization": "Bearer wrong"}).json()["error"]["code"] == "invalid_api_key"

    def chunked():  # no Content-Length: the limit is enforced while reading
        for _ in range(50):
            yield b" " * 10_000

    cases = [(b"{oops", 400), (json.dumps({"model": NAME}).encode(), 400),
             (json.dumps(user("hi") | {"model": "other"}).encode(), 404), (_big(300_000), 413), (chunked(), 413),
             (json.dumps(user("what?", bomb_uri())).encode(), 400),
             (json.dumps(user("what?", "http://example.com/a.png")).encode(), 400),
             (json.dumps(user("what?", "data:application/pdf;base64,JVBERi0=")).encode(), 400)]
    for body, status in cases:
        r = post(body)
        assert r.status_code == status and "error" in r.json(), r.text


def test_openai_client_through_the_fake_upstream(live, upstream):
    openai = pytest.importorskip("openai")
    upstream.behaviour.clear()
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="secret-1", max_retries=0, timeout=60)
    r = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": [
        {"type": "text", "text": "Which colour is this square?"},
        {"type": "image_url", "image_url": {"url": data_uri(RED)}}]}], extra_body={"vlrb": {"mu": 0.0}})
    assert r.model == "cheap" and r.choices[0].message.content == "answer from up-cheap"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{live.url}/v1", api_key="nope", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


@pytest.fixture(scope="module")
def dry(tiny_router, tmp_path_factory):
    """serve.py in route_only mode, named as the README's examples expect."""
    with ServeProcess([f"router_dir={tiny_router}", "route_only=true", "model_name=vlrb-mlp"],
                      tmp_path_factory.mktemp("dry")) as proc:
        yield proc


def test_openai_client_in_route_only_mode(dry):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{dry.url}/v1", api_key="unused", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list()] == ["vlrb-mlp"]
    for colour, model in ((RED, "cheap"), (BLUE, "dear")):
        r = client.chat.completions.create(model="vlrb-mlp", messages=[{"role": "user", "content": [
            {"type": "text", "text": "Which colour is this square?"},
            {"type": "image_url", "image_url": {"url": data_uri(colour)}}]}])
        assert r.choices[0].message.content == model and r.model == model
    stream = client.chat.completions.create(model="vlrb-mlp", stream=True, messages=[{"role": "user", "content": [
        {"type": "text", "text": "Which colour?"}, {"type": "image_url", "image_url": {"url": data_uri(BLUE)}}]}])
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "dear"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="vlrb-mlp", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])


def test_a_router_that_cannot_score_new_requests_is_refused_at_start(monkeypatch, tmp_path):
    import vlrb
    from omegaconf import OmegaConf

    from vlrb.jobs.serve import load

    class Oracle(StubRouter):
        def score_raw(self, prompts, images):
            raise ValueError("oracle reads the answers' correctness, so it cannot route new inputs")

    monkeypatch.setattr(vlrb, "load_router", lambda path, trust_code=False: Oracle())
    cfg = OmegaConf.create({"router_dir": str(tmp_path), "route_only": True, "host": "127.0.0.1"})
    with pytest.raises(ConfigError, match="this router cannot score new requests .*cannot route new inputs"):
        load(cfg)


def test_serve_py_refuses_a_bad_config_in_one_line(tiny_router, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    for overrides, msg in ([[f"router_dir={tiny_router}"], "upstreams is empty"],
                           [[f"router_dir={tiny_router}", "upstreams=/no/such.yaml"], "upstreams=/no/such.yaml: no such file"],
                           [["router_dir=/no/such/router", "route_only=true"], "router_dir=/no/such/router does not exist"],
                           [[], "router_dir is required"]):
        p = subprocess.run([sys.executable, "serve.py", *overrides, f"hydra.run.dir={tmp_path}"], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 1 and f"error: {msg}" in p.stdout + p.stderr, p.stdout[-2000:] + p.stderr[-2000:]


# ------------------------------------------------------------------------------------------ the README's examples
def _readme_blocks(lang: str) -> list[str]:
    from conftest import REPO

    text = (REPO / "README.md").read_text()
    start = text.index("## Serving a router")
    section = text[start:text.index("\n## ", start + 1)]
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


def test_readme_curl_examples_run(dry):
    import shutil
    import subprocess

    if shutil.which("curl") is None:
        pytest.skip("no curl on this machine")
    block = next(b for b in _readme_blocks("bash") if b.lstrip().startswith("curl"))
    script = block.replace("http://127.0.0.1:8000", dry.url)
    assert script.count(dry.url) == 2
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    decoder, out, objects = json.JSONDecoder(), p.stdout.strip(), []
    while out:  # the two answers, printed back to back
        obj, end = decoder.raw_decode(out)
        objects.append(obj)
        out = out[end:].strip()
    chat, route = objects
    assert chat["choices"][0]["message"]["content"] == chat["model"] and chat["model"] in MODELS
    assert route["model"] in MODELS and set(route["scores"]) == set(MODELS) and route["mu"] == 0.5
    assert route["router_latency_ms"] > 0 and set(route["estimated_costs"]) == set(MODELS)


def test_readme_openai_example_runs(dry, tmp_path):
    import subprocess
    import sys

    from serve_support import png_bytes

    block = next(b for b in _readme_blocks("python") if "OpenAI(" in b)
    code = block.replace("http://127.0.0.1:8000", dry.url)
    assert code != block
    (tmp_path / "chart.png").write_bytes(png_bytes(BLUE))
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split() == ["dear", "dear"]  # a blue square goes to 'dear', also at mu = 0.5
