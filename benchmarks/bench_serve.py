"""Serving throughput: requests/s and p50/p99 latency of `serve.py` at concurrency 1, 16 and 64, next to the
offline `route_raw` rate at the server's batch size, measured in one run on the same inputs.

    python benchmarks/bench_serve.py                          # a k-NN feature router on the default encoders, CPU
    python benchmarks/bench_serve.py --router logs/train/runs/<time>/router --requests 512

The server is a real uvicorn process (`serve.py route_only=true`, loopback, any free port) micro-batching up to
`--batch` requests per router forward; the clients are asyncio tasks here, each sending its next request when
the previous one is answered (closed loop). A request is a 20–60-word question with an inline 224 px JPEG
(`data:image/jpeg;base64,...`), as in the demo benchmark. Offline: `TrainedRouter.route_raw` on the same
prompts and data URIs in batches of `--batch` (decoding and encoding included, as in the server).
Target: at concurrency 64 the server reaches >= 70% of the offline rate. `--json FILE` writes the numbers.
Without `--router`, the router is a k-NN on random features of the default encoder pair (its choices are
meaningless; its cost is the encoders', which is what serving pays).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

WORDS = "chart table photo diagram text map graph figure plot scene axis value colour label".split()
TARGET = 0.70


def default_encoder() -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["encoder=default"])
    return OmegaConf.to_container(cfg.encoder, resolve=True)


def make_router(folder: Path, n_train: int = 512, k: int = 5, seed: int = 0) -> Path:
    """A k-NN feature router on random features of the default encoders' size, saved as a trained router."""
    from vlrb.artifact import save_trained_router
    from vlrb.data.benchmark import Split
    from vlrb.features.fusion import FeatureScaler
    from vlrb.features.recipe import FeatureRecipe
    from vlrb.routers import create_router

    rng = np.random.default_rng(seed)
    recipe = FeatureRecipe.from_config(default_encoder())
    dim = sum(int(recipe.encoder[m]["dim"]) for m in ("text", "vision"))
    recipe.scaler = FeatureScaler.from_arrays(np.zeros(dim), np.ones(dim))
    models = [f"model{j}" for j in range(k)]
    train = Split.for_inputs(n_train, models, X=rng.normal(size=(n_train, dim)).astype(np.float32))
    train.Y[:] = rng.random((n_train, k)) < np.linspace(0.4, 0.8, k)
    train.C[:] = np.geomspace(1e-5, 1e-3, k)
    router = create_router("knn", k=5).fit(train)
    prices = {m: {"input_per_1m": float(p), "output_per_1m": float(4 * p)} for m, p in zip(models, np.geomspace(0.05, 5, k))}
    mean_cost = {m: float(c) for m, c in zip(models, train.C.mean(0))}
    return save_trained_router(router, folder, recipe=recipe, prices=prices, mean_cost=mean_cost)


def make_requests(n: int, px: int = 224, seed: int = 0) -> tuple[list[str], list[str]]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    prompts, uris = [], []
    for i in range(n):
        prompts.append(" ".join(rng.choice(WORDS, size=int(rng.integers(20, 60)))) + "?")
        arr = (rng.random((px // 8, px // 8, 3)) * 255).astype(np.uint8)
        img = Image.fromarray(arr).resize((px, px))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        uris.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
    return prompts, uris


def offline_rate(router_dir: Path, prompts, uris, batch: int, repeats: int) -> float:
    import vlrb

    tr = vlrb.load_router(router_dir)
    tr.route_raw(prompts[:batch], uris[:batch])  # warm-up: encoders loaded, first-call costs paid
    n, t0 = 0, time.perf_counter()
    for _ in range(repeats):
        for s in range(0, len(prompts) - batch + 1, batch):
            tr.route_raw(prompts[s:s + batch], uris[s:s + batch])
            n += batch
    return n / (time.perf_counter() - t0)


def start_server(router_dir: Path, run_dir: Path, batch: int, wait_ms: float) -> tuple[subprocess.Popen, str, Path]:
    log = run_dir / "server.out"
    cmd = [sys.executable, str(REPO / "serve.py"), f"router_dir={router_dir}", "route_only=true", "port=0", "model_name=bench",
           f"batching.max_batch={batch}", f"batching.max_wait_ms={wait_ms}", f"hydra.run.dir={run_dir / 'serve'}"]
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.time() + 300
    while time.time() < deadline:
        m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if m:
            return proc, m.group(1), log
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server did not start:\n{log.read_text()[-3000:]}")


async def load(url: str, prompts, uris, concurrency: int, n_requests: int) -> dict:
    import httpx

    bodies = [json.dumps({"model": "bench", "messages": [{"role": "user", "content": [
        {"type": "text", "text": p}, {"type": "image_url", "image_url": {"url": u}}]}]}).encode()
        for p, u in zip(prompts, uris)]
    latencies: list[float] = []
    todo = iter(range(n_requests))

    async def client(c: httpx.AsyncClient, work, record: bool):
        for i in work:  # a shared iterator: each request is sent once, by whichever client is free
            t0 = time.perf_counter()
            r = await c.post("/v1/chat/completions", content=bodies[i % len(bodies)],
                             headers={"content-type": "application/json"})
            if record:
                latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300, trust_env=False) as c:
        warm = iter(range(concurrency))  # opens the connections
        await asyncio.gather(*(client(c, warm, False) for _ in range(concurrency)))
        s0, n0 = batch_totals((await c.get("/metrics")).text)
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, todo, True) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        s1, n1 = batch_totals((await c.get("/metrics")).text)
    lat = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": n_requests, "rps": n_requests / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "mean_batch": (s1 - s0) / max(n1 - n0, 1)}


def batch_totals(metrics: str) -> tuple[float, float]:
    """(sum, count) of the server's vlrb_batch_size histogram (GET /metrics): requests and router forwards so far."""
    get = lambda key: float(re.search(rf"^vlrb_batch_size_{key} ([0-9.e+]+)", metrics, re.M).group(1))  # noqa: E731
    return get("sum"), get("count")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--router", help="a trained router folder (default: a k-NN on the default encoders)")
    ap.add_argument("--batch", type=int, default=64, help="server max_batch and offline batch size")
    ap.add_argument("--wait-ms", type=float, default=5.0, help="server max_wait_ms")
    ap.add_argument("--requests", type=int, default=256, help="requests per concurrency level (>= 64)")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    router_dir = Path(args.router) if args.router else make_router(tmp / "router")
    prompts, uris = make_requests(max(args.requests, args.batch))

    before = offline_rate(router_dir, prompts, uris, args.batch, repeats=1)
    print(f"offline route_raw at batch {args.batch}: {before:.1f} requests/s", flush=True)
    proc, url, _ = start_server(router_dir, tmp, args.batch, args.wait_ms)
    rows = []
    try:
        for c in levels:
            n = args.requests if c > 1 else max(16, args.requests // 8)  # concurrency 1 is slow: fewer requests
            r = asyncio.run(load(url, prompts, uris, c, n))
            rows.append(r)
            print(f"concurrency {c:3d}: {r['rps']:7.1f} requests/s   p50 {r['p50_ms']:8.1f} ms   p99 {r['p99_ms']:8.1f} ms"
                  f"   mean batch {r['mean_batch']:5.1f}", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    # measured again after the server: on a shared machine the load changes; the mean of both is the reference
    after = offline_rate(router_dir, prompts, uris, args.batch, repeats=1)
    offline = (before + after) / 2
    print(f"offline route_raw at batch {args.batch}, again: {after:.1f} requests/s (mean {offline:.1f})", flush=True)
    for r in rows:
        r["vs_offline"] = r["rps"] / offline
    top = next((r for r in rows if r["concurrency"] == max(levels)), None)
    ok = top is not None and top["rps"] >= TARGET * offline
    for r in rows:
        print(f"concurrency {r['concurrency']:3d}: {r['vs_offline']:.0%} of the offline rate")
    print(f"target: concurrency {max(levels)} >= {TARGET:.0%} of the offline rate: "
          f"{'met' if ok else 'MISSED'} ({top['vs_offline']:.0%})" if top else "no rows")
    if args.json:
        Path(args.json).write_text(json.dumps({"offline_rps": offline, "offline_rps_before_after": [before, after],
                                               "batch": args.batch, "levels": rows,
                                               "target_met": ok, "cpu_count": os.cpu_count()}, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
