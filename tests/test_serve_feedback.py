"""Feedback, the server's side (README "Serving a router": Feedback): every routed request gets a request id, its
decision is logged (vlrb.feedback.store) with the router's scores, the candidate pool, the propensity of the pick
and the features the router read, POST /v1/feedback appends what the client learned, concurrent posts lose nothing,
the database survives a writer killed mid-write, and ε-greedy exploration logs exact propensities."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from serve_support import (BLUE, MEAN_COST, MODELS, RED, AppServer, FakeUpstream, StubRouter, build_tiny_router,
                           data_uri)
from vlrb.errors import ConfigError
from vlrb.feedback.store import FeedbackStore, read_log
from vlrb.serve.explore import Explorer
from vlrb.serve.settings import ServeSettings, Upstream

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from vlrb.serve.app import create_app  # noqa: E402

NAME = "vlrb-fb"


def user(text: str, image: str | None = None, **vlrb) -> dict:
    content = [{"type": "text", "text": text}] + ([{"type": "image_url", "image_url": {"url": image}}] if image else [])
    return {"model": NAME, "messages": [{"role": "user", "content": content}]} | ({"vlrb": vlrb} if vlrb else {})


def settings(path=None, **kw) -> ServeSettings:
    return ServeSettings(**{"model_name": NAME, "feedback_path": None if path is None else str(path), **kw})


def db_rows(path, sql: str) -> list:
    with sqlite3.connect(str(path)) as db:
        return db.execute(sql).fetchall()


# ------------------------------------------------------------------------------------------ the round trip
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_router(tmp_path_factory.mktemp("fb") / "router")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from vlrb.artifact import load_router

    return load_router(tiny_dir)


def test_score_raw_can_return_the_features_it_read(tiny):
    prompts, images = ["Which colour?", "And this?"], [data_uri(RED), data_uri(BLUE)]
    scores, X = tiny.score_raw(prompts, images, return_features=True)
    assert np.array_equal(scores, tiny.score_raw(prompts, images))  # unchanged without the option
    assert X.dtype == np.float32 and X.shape == (2, tiny.recipe.encode(prompts[:1], images[:1]).shape[1])


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream(slow_s=2.0) as up:
        yield up


def test_feedback_round_trip(tiny, tiny_dir, upstream, tmp_path):
    path = tmp_path / "fb.sqlite"
    ups = {m: Upstream(upstream.url, f"up-{m}") for m in MODELS}
    upstream.behaviour.clear()
    with TestClient(create_app(tiny, settings(path, route_only=False, upstreams=ups, router_dir=str(tiny_dir)))) as c:
        r = c.post("/v1/route", json=user("Which colour is this square?", data_uri(RED), dataset="ColorBench"))
        assert r.status_code == 200 and r.json()["model"] == "cheap" and r.json()["propensity"] == 1.0
        rid = r.headers["x-vlrb-request-id"]
        assert rid == r.json()["request_id"] and rid.startswith("vlrb-")
        scores = r.json()["scores"]
        assert c.post("/v1/feedback", json={"id": rid, "correct": True, "cost": 2e-5}).status_code == 200

        upstream.behaviour["up-dear"] = "500"  # blue goes to dear, which fails: mid answers
        r = c.post("/v1/chat/completions", json=user("Which colour is this square?", data_uri(BLUE)))
        assert r.status_code == 200 and r.headers["x-vlrb-model"] != "dear"
        rid2 = r.headers["x-vlrb-request-id"]
        assert r.json()["vlrb"]["request_id"] == rid2
        r = c.post("/v1/feedback", json={"id": rid2, "reward": 0.25})
        assert r.status_code == 200 and r.json() == {"object": "vlrb.feedback", "id": rid2, "reward": 0.25, "cost": None}
        assert "vlrb_feedback_posts_total 2.0" in c.get("/metrics").text
        assert c.get("/health").json()["feedback"] == str(path)
    upstream.behaviour.clear()
    store = FeedbackStore(path, create=False)
    rows = {r[0]: r for r in store.rows()}
    assert store.meta() == {"router": tiny.name, "models": MODELS, "model_name": NAME, "router_dir": str(tiny_dir)}
    store.close()
    row = rows[rid]  # id, time, router, models, pool, chosen, answered_by, propensity, policy, scores, costs, mu, ...
    assert row[5] == "cheap" and row[6] is None and row[7] == 1.0 and row[8] == "greedy" and row[12] == "ColorBench"
    assert json.loads(row[3]) == MODELS and json.loads(row[4]) == MODELS
    assert json.loads(row[9]) == pytest.approx([scores[m] for m in MODELS])
    assert json.loads(row[10]) == pytest.approx([MEAN_COST[m] for m in MODELS])
    dim = len(np.frombuffer(row[13], dtype="<f4"))
    assert dim == tiny.score_raw(["x"], [None], return_features=True)[1].shape[1]
    assert row[14] == 1.0 and row[15] == 2e-5
    assert rows[rid2][5] == "dear" and rows[rid2][6] != "dear" and rows[rid2][14] == 0.25
    log = read_log(path)  # the training side's view: the fallback's answer says nothing about dear
    assert list(log.ids) == [rid] and log.X.shape == (1, dim) and log.chosen.tolist() == [0]


def test_bad_feedback_is_a_4xx(tmp_path):
    with TestClient(create_app(StubRouter(), settings(tmp_path / "fb.sqlite"))) as c:
        rid = c.post("/v1/route", json=user("hard")).headers["x-vlrb-request-id"]
        cases = [(b"{oops", 400), (b"", 400), (b"[1, 2]", 400), (json.dumps({"reward": 1}).encode(), 400),
                 (json.dumps({"id": rid}).encode(), 400), (json.dumps({"id": rid, "reward": 1.5}).encode(), 400),
                 (json.dumps({"id": rid, "reward": "high"}).encode(), 400),
                 (json.dumps({"id": rid, "reward": 1, "correct": True}).encode(), 400),
                 (json.dumps({"id": rid, "correct": 1}).encode(), 400),
                 (json.dumps({"id": rid, "reward": 1, "cost": -1}).encode(), 400),
                 (json.dumps({"id": rid, "reward": 1, "extra": 0}).encode(), 400),
                 (json.dumps({"id": "vlrb-nope", "reward": 1}).encode(), 404)]
        for body, status in cases:
            r = c.post("/v1/feedback", content=body, headers={"content-type": "application/json"})
            assert r.status_code == status and "error" in r.json(), (body, r.text)
        assert c.post("/v1/feedback", json={"id": rid, "reward": 1}).status_code == 200
    with TestClient(create_app(StubRouter(), settings(None, api_keys=frozenset({"k"})))) as c:
        assert c.post("/v1/feedback", json={"id": rid, "reward": 1}).status_code == 401  # auth first
        r = c.post("/v1/feedback", json={"id": rid, "reward": 1}, headers={"Authorization": "Bearer k"})
        assert r.status_code == 409 and "feedback is off" in r.json()["error"]["message"]
        r = c.post("/v1/route", json=user("hard"), headers={"Authorization": "Bearer k"})
        assert r.headers["x-vlrb-request-id"].startswith("vlrb-")  # an id even when nothing is logged


def test_a_failing_log_never_fails_the_request(tmp_path):
    app = create_app(StubRouter(), settings(tmp_path / "fb.sqlite"))
    with TestClient(app) as c:
        def broken(decisions):
            raise sqlite3.OperationalError("disk I/O error")

        app.state.service.feedback.store.log_decisions = broken
        for _ in range(3):
            assert c.post("/v1/chat/completions", json=user("hard")).status_code == 200
        for _ in range(100):
            if "vlrb_feedback_log_failures_total 3.0" in c.get("/metrics").text:
                break
            time.sleep(0.05)
        assert "vlrb_feedback_log_failures_total 3.0" in c.get("/metrics").text


# ------------------------------------------------------------------------------------------ concurrency
def test_a_thousand_concurrent_feedback_posts_lose_none(tmp_path):
    import httpx

    path = tmp_path / "fb.sqlite"
    n_ids, n_posts, n_clients = 50, 1000, 16
    with AppServer(create_app(StubRouter(), settings(path))) as server:
        async def main():
            async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as ac:
                ids = [r.headers["x-vlrb-request-id"] for r in await asyncio.gather(
                    *[ac.post("/v1/route", json=user("hard" if i % 2 else "easy")) for i in range(n_ids)])]
            todo = list(range(n_posts))

            async def client(k: int):  # each client its own connection pool
                codes = []
                async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as ac:
                    while todo:
                        i = todo.pop()
                        r = await ac.post("/v1/feedback", json={"id": ids[i % n_ids], "reward": (i % 5) / 4})
                        codes.append(r.status_code)
                return codes

            return ids, [c for codes in await asyncio.gather(*[client(k) for k in range(n_clients)]) for c in codes]

        ids, codes = asyncio.run(main())
    assert codes == [200] * n_posts
    assert db_rows(path, "SELECT COUNT(*) FROM feedback") == [(n_posts,)]
    assert db_rows(path, "SELECT COUNT(*) FROM decisions") == [(n_ids,)]
    per_id = dict(db_rows(path, "SELECT id, COUNT(*) FROM feedback GROUP BY id"))
    assert per_id == {rid: n_posts // n_ids for rid in ids}


# ------------------------------------------------------------------------------------------ a writer killed
WRITER = textwrap.dedent("""
    import sys, numpy as np
    from vlrb.feedback.store import Decision, FeedbackStore
    store = FeedbackStore(sys.argv[1])
    i = 0
    while True:
        ds = [Decision(id=f"r{i}-{j}", router="stub", models=["a", "b", "c"], pool=["a", "b", "c"], chosen="b",
                       propensity=0.5, policy="epsilon_greedy", scores=[0.1, 0.2, 0.3], costs=[1e-5, 2e-5, 3e-5],
                       features=np.full(64, i, np.float32)) for j in range(20)]
        store.log_decisions(ds)
        store.add_feedback(f"r{i}-0", reward=1.0, cost=1e-5)
        i += 1
        if i == 5:
            print("writing", flush=True)
""")


def test_the_database_survives_a_writer_killed_mid_write(tmp_path):
    path = tmp_path / "fb.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(0.5)  # a few hundred transactions in: it is always in the middle of one
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert db_rows(path, "PRAGMA integrity_check") == [("ok",)]
    store = FeedbackStore(path, create=False)
    rows = store.rows(with_feedback=False)
    assert len(rows) >= 100 and len(rows) % 20 == 0  # whole transactions only
    for r in rows:
        i = int(r[0][1:].split("-")[0])
        assert json.loads(r[3]) == ["a", "b", "c"] and r[5] == "b" and r[7] == 0.5 and json.loads(r[9]) == [0.1, 0.2, 0.3]
        assert np.array_equal(np.frombuffer(r[13], dtype="<f4"), np.full(64, i, np.float32))
    assert store.count("feedback") in (len(rows) // 20, len(rows) // 20 - 1)
    from vlrb.feedback.store import Decision

    store.log_decisions([Decision(id="after", router="stub", models=["a", "b"], pool=["a"], chosen="a")])
    store.add_feedback("after", reward=0.0)
    assert store.count("decisions") == len(rows) + 1
    store.close()


# ------------------------------------------------------------------------------------------ exploration
def test_explorer_propensities_are_exact():
    order = ["b", "a", "c", "d"]
    assert Explorer("none").pick(order) == (order, 1.0)
    ex = Explorer("epsilon_greedy", 0.4, seed=1)
    picks = [ex.pick(order) for _ in range(4000)]
    for o, p in picks:
        assert sorted(o) == sorted(order) and [m for m in order if m != o[0]] == o[1:]  # the rest by the rule
        assert p == pytest.approx(0.6 + 0.1 if o[0] == "b" else 0.1)
    share = np.mean([o[0] == "b" for o, _ in picks])
    assert abs(share - 0.7) < 0.04
    with pytest.raises(ValueError, match="epsilon"):
        Explorer("epsilon_greedy", 1.5)


def test_exploration_spreads_choices_and_logs_propensities(tmp_path):
    path = tmp_path / "explore.sqlite"
    s = settings(path, explore="epsilon_greedy", epsilon=1.0, explore_seed=0)
    with TestClient(create_app(StubRouter(), s)) as c:
        got = [c.post("/v1/route", json=user("hard")).json() for _ in range(90)]
        restricted = c.post("/v1/route", json=user("hard", models=["mid", "dear"])).json()
    counts = {m: sum(g["model"] == m for g in got) for m in MODELS}
    assert all(n >= 15 for n in counts.values()), counts
    assert all(g["propensity"] == pytest.approx(1 / 3) and g["policy"] == "epsilon_greedy" for g in got)
    assert restricted["propensity"] == 0.5  # 1/|pool| of its own pool
    rows = db_rows(path, "SELECT chosen, propensity, policy, pool FROM decisions")
    assert len(rows) == 91 and sum(r[1] == pytest.approx(1 / 3) and r[2] == "epsilon_greedy" for r in rows) == 90
    assert sorted(json.loads(r[3]) for r in rows if r[1] == 0.5) == [["mid", "dear"]]

    off = tmp_path / "off.sqlite"
    with TestClient(create_app(StubRouter(), settings(off))) as c:
        got = [c.post("/v1/route", json=user("hard")).json() for _ in range(10)]
    assert {(g["model"], g["propensity"], g["policy"]) for g in got} == {("dear", 1.0, "greedy")}
    assert db_rows(off, "SELECT DISTINCT propensity, policy FROM decisions") == [(1.0, "greedy")]


# ------------------------------------------------------------------------------------------ settings
def test_feedback_settings_and_the_default_path(tmp_path):
    from omegaconf import OmegaConf

    from conftest import REPO
    from vlrb.jobs.entry import compose
    from vlrb.jobs.serve import check_feedback_path

    cfg = compose("serve", ["router_dir=x"], root=REPO)
    raw = OmegaConf.to_container(cfg.feedback, resolve=True)
    assert raw["path"].endswith("logs/feedback/{model_name}.sqlite") and raw["explore"]["policy"] == "none"
    s = ServeSettings.from_config({"route_only": True, "feedback": raw}, MODELS, "mlp")
    assert s.feedback_path.endswith("logs/feedback/vlrb-mlp.sqlite") and s.explore == "none"
    s = ServeSettings.from_config({"route_only": True, "model_name": "a/b c", "feedback": raw}, MODELS)
    assert s.feedback_path.endswith("feedback/a_b_c.sqlite")
    assert ServeSettings.from_config({"route_only": True, "feedback": {"path": None}}, MODELS).feedback_path is None
    s = ServeSettings.from_config({"route_only": True, "feedback": {"explore": {"policy": "epsilon_greedy",
                                                                                "epsilon": 0.2, "seed": 3}}}, MODELS)
    assert (s.explore, s.epsilon, s.explore_seed) == ("epsilon_greedy", 0.2, 3)
    bad = [({"feedback": {"path": 3}}, "feedback.path must be a file path"),
           ({"feedback": {"explore": {"policy": "thompson"}}}, "feedback.explore.policy must be one of"),
           ({"feedback": {"explore": {"epsilon": 2}}}, "feedback.explore.epsilon must be a finite number"),
           ({"feedback": {"explore": "yes"}}, "feedback.explore must be a mapping")]
    for cfg_, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            ServeSettings.from_config({"route_only": True, **cfg_}, MODELS)
    with pytest.raises(ConfigError, match="feedback.path=.*: the feedback log cannot be opened"):
        check_feedback_path(str(tmp_path))  # a folder
    (tmp_path / "not.sqlite").write_text("hello")
    with pytest.raises(ConfigError, match="not a vlrb feedback database"):
        check_feedback_path(str(tmp_path / "not.sqlite"))


def test_serve_py_records_the_router_folder_and_checks_the_log(tiny_dir, tmp_path):
    from omegaconf import OmegaConf

    from vlrb.jobs.serve import load

    cfg = OmegaConf.create({"router_dir": str(tiny_dir.parent), "route_only": True, "host": "127.0.0.1",
                            "feedback": {"path": str(tmp_path / "{model_name}.sqlite")}})
    _, s = load(cfg)  # a run directory: the router folder inside it is recorded
    assert s.router_dir == str(tiny_dir.resolve()) and s.feedback_path == str(tmp_path / f"{s.model_name}.sqlite")
    cfg.feedback.path = str(tmp_path)
    with pytest.raises(ConfigError, match="feedback.path=.*cannot be opened"):
        load(cfg)


def test_a_served_log_trains_a_router_that_learned_the_colours(tiny, tiny_dir, tmp_path):
    """The whole loop as a user runs it: serve.py explores (ε = 1) and logs, clients post feedback, and
    `train.py data=feedback router=offpolicy` learns from that log alone a router that routes as the feedback said
    (red squares: every model is right, so the cheapest; blue squares: only `dear`)."""
    from conftest import REPO
    from vlrb.artifact import load_router

    path = tmp_path / "served.sqlite"
    s = settings(path, route_only=True, explore="epsilon_greedy", epsilon=1.0, explore_seed=1, router_dir=str(tiny_dir))
    with TestClient(create_app(tiny, s)) as c:
        for i in range(96):
            colour = RED if i % 2 else BLUE
            r = c.post("/v1/route", json=user(f"Which colour is square {i}?", data_uri(colour))).json()
            right = colour == RED or r["model"] == "dear"
            assert c.post("/v1/feedback", json={"id": r["request_id"], "correct": right}).status_code == 200
    run = tmp_path / "run"
    run.mkdir()
    # train.py data=feedback's job in this process (tests/test_feedback_learning.py runs train.py itself): accuracy
    # alone (λ = 0), and a weak ridge penalty: 96 requests of 12-odd feature directions
    from vlrb.jobs.entry import compose
    from vlrb.jobs.feedback import train_on_feedback

    cfg = compose("train", ["data=feedback", f"data.path={path}", "router=offpolicy", "router.mu=lambda", "lambda=0",
                            "router.reward_alpha=1", "logger=none", f"paths.output_dir={run}"], root=REPO)
    train_on_feedback(cfg, run)
    learned = load_router(run / "router")
    assert learned.models == MODELS
    prompts = [f"Which colour is square {i}?" for i in range(4)]
    got = learned.route_raw(prompts, [data_uri(RED), data_uri(BLUE), data_uri(RED), data_uri(BLUE)])
    assert got == ["cheap", "dear", "cheap", "dear"]
