"""Serving a cascade (vlrb.serve.cascade, README "Serving a cascade"): the server calls the cascade's models one at a
time through their upstreams, reads each reply's answer as the benchmark reads one, and stops exactly where the
replay on a benchmark holding the same answers (`router.route(split)`) stops; the headers name every model called
and the summed cost, μ per request moves the stop, streaming sends the final answer, and an upstream that fails
mid-cascade leaves the answer received before it.

Fake upstreams (tests/serve_support.py) reply per model and per request from a script: `cheap` knows the even
questions and has no idea on the odd ones, `mid` answers two thirds of them, `dear` always answers."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import make_router
from serve_support import MEAN_COST, MODELS, PRICES, TINY_ENC, FakeUpstream
from vlrb.artifact import load_router, save_trained_router
from vlrb.data.answers import extract_answer
from vlrb.data.benchmark import Benchmark
from vlrb.errors import ConfigError
from vlrb.routing.calls import CHAIN_SEP
from vlrb.serve.settings import ServeSettings, Upstream

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from vlrb.serve.app import create_app  # noqa: E402

NAME = "vlrb-cascade"
OPTIONS = "\nA. red\nB. green\nC. blue\nD. black"
N_SERVED = 12  # requests served (and replayed)
N_TRAIN = 40


def prompt(i: int, options: bool = True) -> str:
    return f"Question {i}: which colour is the square?" + (OPTIONS if options else "")


def replies(i: int) -> dict[str, str]:
    return {"cheap": "I think the answer is (B)." if i % 2 == 0 else "No idea, sorry.",
            "mid": "The answer is C" if i % 3 else "Hmm.",
            "dear": "Answer: D"}


def answers(ids) -> np.ndarray:
    """(n, K) the extracted answers of the scripted replies (what a benchmark's build keeps)."""
    return np.asarray([[extract_answer(replies(i)[m], "choice", 4) for m in MODELS] for i in ids], dtype=object)


def benchmark(ids, split: str, prompts=None) -> Benchmark:
    """Right: cheap when it answers, mid on every fourth question, dear always."""
    ids = list(ids)
    Y = np.asarray([[i % 2 == 0, i % 4 == 1, 1] for i in ids], np.int8)
    C = np.tile(np.asarray([MEAN_COST[m] for m in MODELS], np.float32), (len(ids), 1))
    return Benchmark.from_arrays(Y, C, MODELS, answers=answers(ids), answer_format="choice", n_options=4,
                                 splits=[split] * len(ids), sample_ids=[f"toy/{i:06d}" for i in ids], prompts=prompts)


def save(router, path, recipe=None):
    prices = {m: {"input_per_1m": p, "output_per_1m": q} for m, (p, q) in PRICES.items()}
    return load_router(save_trained_router(router, path, recipe=recipe, prices=prices, mean_cost=dict(MEAN_COST)))


@pytest.fixture(scope="module")
def validity(tmp_path_factory):
    """cascade_validity (up to 3 calls) fitted on the scripted answers, loaded back from its router folder."""
    router = make_router("cascade_validity", max_calls=3).fit(benchmark(range(N_TRAIN), "train").split("train"))
    return save(router, tmp_path_factory.mktemp("cascade") / "router")


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream(slow_s=2.0) as up:
        for m in MODELS:
            up.replies[f"up-{m}"] = lambda body, m=m: replies(_question(body))[m]
        yield up


def _question(body: dict) -> int:
    content = body["messages"][-1]["content"]
    text = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
    return int(re.search(r"Question (\d+)", text).group(1))


def app(tr, up: FakeUpstream, **kw):
    ups = {m: Upstream(up.url, f"up-{m}") for m in MODELS}
    return create_app(tr, ServeSettings(**{"model_name": NAME, "route_only": False, "upstreams": ups,
                                           "timeout_s": 0.5, **kw}))


def chat(text: str, **extra) -> dict:
    return {"model": NAME, "messages": [{"role": "user", "content": text}], **extra}


def reset(up: FakeUpstream) -> None:
    up.behaviour.clear()
    up.calls.clear()


def replayed(tr, ids, X=None) -> list[str]:
    """The calls the replay makes on a benchmark holding the scripted answers: 'm1>m2' per request."""
    split = benchmark(ids, "test").split("test")
    if X is not None:
        split = split.with_features(X)
    return tr.route(split).labels(tr.models)


# ------------------------------------------------------------------------------------------ the rule cascade
def test_served_calls_are_the_replays(validity, upstream):
    chains = replayed(validity, range(N_SERVED))
    assert {len(c.split(CHAIN_SEP)) for c in chains} == {1, 2, 3}, chains  # stops after each of the calls
    reset(upstream)
    with TestClient(app(validity, upstream)) as c:
        for i, chain in enumerate(chains):
            upstream.calls.clear()
            r = c.post("/v1/chat/completions", json=chat(prompt(i), max_tokens=20))
            assert r.status_code == 200, r.text
            called = chain.split(CHAIN_SEP)
            assert [call["model"] for call in upstream.calls] == [f"up-{m}" for m in called]  # in order, no more
            assert all("stream" not in call["body"] and "vlrb" not in call["body"] and call["body"]["max_tokens"] == 20
                       for call in upstream.calls)
            assert r.headers["x-vlrb-models-called"] == chain and r.headers["x-vlrb-model"] == called[-1]
            assert float(r.headers["x-vlrb-estimated-cost"]) == pytest.approx(sum(MEAN_COST[m] for m in called))
            body = r.json()
            assert body["model"] == called[-1] and body["choices"][0]["message"]["content"] == replies(i)[called[-1]]
            info = body["vlrb"]
            assert info["cascade"] and info["models_called"] == called and info["incomplete"] is None
            assert info["answers"] == [extract_answer(replies(i)[m], "choice", 4) for m in called]
            assert (info["answer_format"], info["n_options"]) == ("choice", 4)  # inferred from the option lines


def test_mu_per_request_moves_the_stop(validity, upstream):
    first = validity.models[validity.router.chain_[0]]
    reset(upstream)
    with TestClient(app(validity, upstream)) as c:
        def calls(i, mu=None) -> list[str]:
            extra = {} if mu is None else {"vlrb": {"mu": mu}}
            r = c.post("/v1/chat/completions", json=chat(prompt(i), **extra))
            return r.headers["x-vlrb-models-called"].split(CHAIN_SEP)

        # question 0: the first model answers (a well-formed letter), question 1: it has no idea
        assert calls(0) == calls(0, 0.0) == [first] and len(calls(1)) == 2
        assert len(calls(0, -50.0)) > 1  # a negative μ escalates more
        assert calls(1, 50.0) == [first]  # a larger μ stops earlier, cheaper
    with TestClient(app(validity, upstream, mu=50.0)) as c:  # the server's budget.mu, and a request's own
        assert c.post("/v1/chat/completions", json=chat(prompt(1))).headers["x-vlrb-models-called"] == first
        r = c.post("/v1/chat/completions", json=chat(prompt(1), vlrb={"mu": 0}))
        assert r.headers["x-vlrb-models-called"] == replayed(validity, [1])[0] and r.json()["vlrb"]["mu"] == 0


def test_the_answer_format_from_the_request(validity, upstream):
    """Without option lines the prompt reads as free text ("No idea, sorry." is a well-formed text answer);
    `vlrb.answer_format` says it is a choice item, and the cascade escalates as the replay does."""
    first, second = (validity.models[j] for j in validity.router.chain_[:2])
    reset(upstream)
    with TestClient(app(validity, upstream)) as c:
        r = c.post("/v1/chat/completions", json=chat(prompt(1, options=False)))
        assert r.headers["x-vlrb-models-called"] == first and r.json()["vlrb"]["answer_format"] == "text"
        r = c.post("/v1/chat/completions", json=chat(prompt(1, options=False),
                                                     vlrb={"answer_format": "choice", "n_options": 4}))
        assert r.headers["x-vlrb-models-called"] == f"{first}>{second}" == replayed(validity, [1])[0]
        assert r.json()["vlrb"]["answers"] == ["", "C"]
        for bad, param in (({"answer_format": "essay"}, "vlrb.answer_format"), ({"n_options": 99}, "vlrb.n_options")):
            r = c.post("/v1/chat/completions", json=chat(prompt(1), vlrb=bad))
            assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_streaming_sends_the_final_answer_once_the_cascade_ends(validity, upstream):
    chain = replayed(validity, [3])[0]
    reset(upstream)
    with TestClient(app(validity, upstream)) as c:
        r = c.post("/v1/chat/completions", json=chat(prompt(3), stream=True, stream_options={"include_usage": True}))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-vlrb-models-called"] == chain
    assert all("stream" not in call["body"] and "stream_options" not in call["body"] for call in upstream.calls)
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    last = chain.split(CHAIN_SEP)[-1]
    assert len(upstream.calls) == len(chain.split(CHAIN_SEP)) == 3
    assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks) == replies(3)[last]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["vlrb"]["models_called"] == chain.split(CHAIN_SEP)
    assert {ch["model"] for ch in chunks} == {last}


@pytest.mark.parametrize("failure,outcome", [("500", "HTTP 500"), ("slow", "timeout")])
def test_an_upstream_failing_mid_cascade_returns_the_answer_so_far(validity, upstream, failure, outcome):
    first, second = (validity.models[j] for j in validity.router.chain_[:2])
    reset(upstream)
    upstream.behaviour[f"up-{second}"] = failure
    with TestClient(app(validity, upstream)) as c:
        r = c.post("/v1/chat/completions", json=chat(prompt(1)))
        text = c.get("/metrics").text
    assert r.status_code == 200 and [call["model"] for call in upstream.calls] == [f"up-{first}", f"up-{second}"]
    assert r.headers["x-vlrb-model"] == first and r.headers["x-vlrb-models-called"] == first
    assert r.headers["x-vlrb-cascade-incomplete"] == f"{second}: {outcome}"
    assert float(r.headers["x-vlrb-estimated-cost"]) == pytest.approx(MEAN_COST[first])  # the failed call: not paid
    assert r.json()["choices"][0]["message"]["content"] == replies(1)[first]
    assert r.json()["vlrb"]["incomplete"] == f"{second}: {outcome}"
    assert f'vlrb_cascade_incomplete_total{{model="{second}"}} 1.0' in text


def test_the_first_call_failing_is_the_one_shot_error(validity, upstream):
    first = validity.models[validity.router.chain_[0]]
    reset(upstream)
    with TestClient(app(validity, upstream)) as c:
        upstream.behaviour[f"up-{first}"] = "500"
        r = c.post("/v1/chat/completions", json=chat(prompt(0)))
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_failed"
        assert f"{first} did not answer (HTTP 500)" in r.json()["error"]["message"]
        assert len(upstream.calls) == 1  # no other model: the cascade's policy chose this one
        upstream.behaviour[f"up-{first}"] = "400"  # the request's own problem: as it came
        r = c.post("/v1/chat/completions", json=chat(prompt(0)))
        assert r.status_code == 400 and r.json()["error"]["message"] == "upstream says no"
        assert r.headers["x-vlrb-model"] == first


def test_route_health_and_metrics_of_a_cascade(validity, upstream):
    first, second = (validity.models[j] for j in validity.router.chain_[:2])
    reset(upstream)
    with TestClient(app(validity, upstream)) as c:
        assert c.get("/health").json()["cascade"] is True
        r = c.post("/v1/route", json=chat(prompt(1)))
        d = r.json()
        assert d["cascade"] is True and d["first"] == d["model"] == first
        assert d["max_calls"] == validity.router.max_calls == 3
        assert d["estimated_cost"] == MEAN_COST[first] and r.headers["x-vlrb-model"] == first
        assert "depends on the answers" in d["note"] and not upstream.calls  # nothing called
        for i in (0, 1, 3):
            c.post("/v1/chat/completions", json=chat(prompt(i)))
        text = c.get("/metrics").text
    third = validity.models[validity.router.chain_[2]]  # calls: 1 (question 0), 2 (1), 3 (3)
    assert "vlrb_cascade_calls_count 3.0" in text and "vlrb_cascade_calls_sum 6.0" in text
    assert f'vlrb_cascade_escalations_total{{from_model="{first}",to_model="{second}"}} 2.0' in text
    assert f'vlrb_cascade_escalations_total{{from_model="{second}",to_model="{third}"}} 1.0' in text
    assert f'vlrb_routed_total{{model="{first}"}} 4.0' in text  # the /v1/route request too


def test_a_cascade_is_refused_in_route_only_mode(validity, upstream, tmp_path):
    from omegaconf import OmegaConf

    from vlrb.jobs.serve import load

    with pytest.raises(ConfigError, match="route_only=true: cascade_validity.* a cascade.*needs the models' answers"):
        create_app(validity, ServeSettings(model_name=NAME, route_only=True))
    folder = tmp_path / "router"
    save_trained_router(validity.router, folder, mean_cost=dict(MEAN_COST))
    cfg = OmegaConf.create({"router_dir": str(folder), "route_only": True, "host": "127.0.0.1"})
    with pytest.raises(ConfigError, match="route_only=true: cascade_validity"):
        load(cfg)
    cfg = OmegaConf.create({"router_dir": str(folder), "route_only": False, "host": "127.0.0.1",
                            "upstreams": {m: {"base_url": upstream.url} for m in MODELS}})
    router, settings = load(cfg)  # serve.py's start: the cascade's first step warms up (no score_raw)
    assert router.router.name == "cascade_validity" and not settings.route_only


# ------------------------------------------------------------------------------------------ a learned cascade
def test_a_learned_cascade_encodes_once_per_request_and_stops_as_replayed(upstream, tmp_path):
    from vlrb.features.fusion import FeatureScaler
    from vlrb.features.recipe import FeatureRecipe

    recipe = FeatureRecipe.from_config(TINY_ENC)
    dim = recipe._encoder("text").dim + recipe._encoder("vision").dim
    recipe.scaler = FeatureScaler.from_arrays(np.zeros(dim), np.ones(dim))
    train = benchmark(range(N_TRAIN), "train").split("train")
    train = train.with_features(recipe.encode([prompt(i) for i in range(N_TRAIN)], [None] * N_TRAIN))
    tr = save(make_router("cascade_chain", n_components=4, folds=2).fit(train), tmp_path / "router", recipe=recipe)
    assert np.isfinite(tr.router.thresholds_).all()
    ids = range(N_SERVED)
    X = np.concatenate([tr.requests_raw([prompt(i)], [None]).X for i in ids])  # one at a time, as served
    chains = replayed(tr, ids, X)
    assert {len(ch.split(CHAIN_SEP)) for ch in chains} == {1, 2}, chains

    encoded = []
    encode = tr.recipe.encode
    tr.recipe.encode = lambda prompts, images: encoded.append(len(prompts)) or encode(prompts, images)
    reset(upstream)
    with TestClient(app(tr, upstream)) as c:
        encoded.clear()  # the warm-up at start
        for i, chain in zip(ids, chains):
            upstream.calls.clear()
            r = c.post("/v1/chat/completions", json=chat(prompt(i)))
            assert r.status_code == 200 and r.headers["x-vlrb-models-called"] == chain, (i, r.text)
            assert [call["model"] for call in upstream.calls] == [f"up-{m}" for m in chain.split(CHAIN_SEP)]
    assert encoded == [1] * N_SERVED  # once per request, whatever the number of steps
