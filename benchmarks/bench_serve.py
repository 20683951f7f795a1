"""Serving speed: the router's own latency per request and the server's throughput, as ratios to the bare encoder
forward and to the offline batched rate, measured in one run on the same inputs (README "Serving a router").

    python benchmarks/bench_serve.py                          # a k-NN feature router on the default encoders, CPU
    python benchmarks/bench_serve.py --router logs/train/runs/<time>/router --requests 512

Two workloads: a 20-60-word question alone (text), and with an inline 640 x 480 JPEG (text + image). The server is a
real uvicorn process (`serve.py route_only=true`, loopback, any free port); the clients are asyncio connections in a
child process at a lower priority (`Connection`: raw keep-alive HTTP/1.1, so the load generator costs the shared
cores little), each sending its next request when the previous one is answered (closed loop), at concurrency 1, 16
and 64. Both sides run the encoders' fast path (ONNX Runtime on a CPU, prepared before the clock starts, as the
server prepares it at start). Each ratio is taken round by round against its reference measured just before (the
speed of a shared machine drifts by 2x within minutes), and reported as the median of `--rounds`. Reported:
* router latency: what the server spends on a request's routing (queue + batch forward), as it reports it in the
  response (`vlrb.router_latency_ms`); p50 at concurrency 1 against the bare forward of the router's encoders at
  batch 1 on the same input (text encoder + image encoder, model calls only), measured in this run.
  Target: <= 1.5x.
* throughput: requests/s at concurrency 64 against offline `TrainedRouter.route_raw` in batches of `--batch` on
  the same requests (decoding and encoding included, as in the server). Target: >= 1.0x.
`--json FILE` writes the numbers. Without `--router`, the router is a k-NN on random features of the default
encoder pair (its choices are meaningless; its cost is the encoders', which is what serving pays).
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
LATENCY_TARGET = 1.5  # router p50 at concurrency 1 / bare encoder forward at batch 1
THROUGHPUT_TARGET = 1.0  # requests/s at concurrency 64 / offline batched route_raw


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
    from vlrb.routers.knn import KNNRouter

    rng = np.random.default_rng(seed)
    recipe = FeatureRecipe.from_config(default_encoder())
    dim = sum(int(recipe.encoder[m]["dim"]) for m in ("text", "vision"))
    recipe.scaler = FeatureScaler.from_arrays(np.zeros(dim), np.ones(dim))
    models = [f"model{j}" for j in range(k)]
    Y = (rng.random((n_train, k)) < np.linspace(0.4, 0.8, k)).astype(np.int8)
    C = np.tile(np.geomspace(1e-5, 1e-3, k).astype(np.float32), (n_train, 1))
    X = rng.normal(size=(n_train, dim)).astype(np.float32)
    train = Split(name="train", idx=np.arange(n_train), Y=Y, C=C, scores=Y.astype(np.float32), models=models, X=X)
    router = KNNRouter(k=5).fit(train)
    prices = {m: {"input_per_1m": float(p), "output_per_1m": float(4 * p)} for m, p in zip(models, np.geomspace(0.05, 5, k))}
    mean_cost = {m: float(c) for m, c in zip(models, train.C.mean(0))}
    return save_trained_router(router, folder, recipe=recipe, prices=prices, mean_cost=mean_cost)


def make_requests(n: int, w: int = 640, h: int = 480, seed: int = 0) -> tuple[list[str], list[str]]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    prompts, uris = [], []
    for i in range(n):
        prompts.append(" ".join(rng.choice(WORDS, size=int(rng.integers(20, 60)))) + "?")
        arr = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)
        img = Image.fromarray(arr).resize((w, h))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        uris.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
    return prompts, uris


def bare_forward_ms(tr, prompts, uris, repeats: int = 3) -> float:
    """Median ms of the router's encoders' model calls at batch 1 over the requests the server gets (inputs
    prepared beforehand): the floor of a request's routing."""
    import torch

    from vlrb.data.images import ImageList

    rec = tr.recipe
    requests = []
    for i, prompt in enumerate(prompts):
        calls = []
        for mod in rec.modalities:
            enc, fwd = rec._encoder(mod), rec._forward(mod)
            if mod == "text":
                calls.append((fwd, enc.collate([enc.preprocess(prompt)])))
            elif uris is not None:
                calls.append((fwd, enc.collate([enc.preprocess(ImageList([uris[i]])[0])])))
        requests.append(calls)
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            for calls in requests:
                t0 = time.perf_counter()
                for f, batch in calls:
                    f(batch)
                times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def offline_rate(tr, prompts, uris, batch: int) -> float:
    """requests/s of `route_raw` on the requests in batches of `batch` (decoding and encoding included)."""
    n, t0 = 0, time.perf_counter()
    for s in range(0, len(prompts) - batch + 1, batch):
        tr.route_raw(prompts[s:s + batch], uris[s:s + batch])
        n += batch
    return n / (time.perf_counter() - t0)


def load_router(router_dir: Path, prompts, uris, batch: int):
    """The router, its encoders' fast paths ready (exported once per machine, as the server prepares them at
    start) and warm: the steady state both sides are measured in."""
    import vlrb

    tr = vlrb.load_router(router_dir)
    tr.prepare(wait=True)
    tr.route_raw(prompts[:batch], uris[:batch])
    return tr


def start_server(router_dir: Path, run_dir: Path, batch: int, wait_ms: float,
                 extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str, Path]:
    log = run_dir / "server.out"
    cmd = [sys.executable, str(REPO / "serve.py"), f"router_dir={router_dir}", "route_only=true", "port=0", "model_name=bench",
           f"batching.max_batch={batch}", f"batching.max_wait_ms={wait_ms}", f"hydra.run.dir={run_dir / 'serve'}", *extra]
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


class Connection:
    """One keep-alive HTTP/1.1 connection with nothing but what the benchmark needs (a request's bytes prepared
    beforehand, a Content-Length response): the load generator shares the 2 cores with the server, and httpx spent
    about 13 ms of CPU per request here (a third of a core at 27 requests/s), which the server then lacked."""

    def __init__(self, url: str):
        m = re.match(r"http://([^:/]+):(\d+)", url)
        self.host, self.port = m.group(1), int(m.group(2))
        self.reader = self.writer = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def http_request(method: str, path: str, body: bytes = b"") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


async def load(url: str, prompts, uris, concurrency: int, n_requests: int) -> dict:
    """Closed-loop clients, one connection each; uris None: text-only requests."""

    def body(p, u):
        content = p if u is None else [{"type": "text", "text": p}, {"type": "image_url", "image_url": {"url": u}}]
        return json.dumps({"model": "bench", "messages": [{"role": "user", "content": content}]}).encode()

    raws = [http_request("POST", "/v1/chat/completions", body(p, None if uris is None else u))
            for p, u in zip(prompts, uris or prompts)]
    latencies: list[float] = []
    router_ms: list[float] = []
    todo = iter(range(n_requests))

    async def client(conn: Connection, work, record: bool):
        for i in work:  # a shared iterator: each request is sent once, by whichever client is free
            t0 = time.perf_counter()
            status, data = await conn.request(raws[i % len(raws)])
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {data[:300]!r}")
            if record:
                latencies.append(time.perf_counter() - t0)
                router_ms.append(json.loads(data)["vlrb"]["router_latency_ms"])

    conns = [Connection(url) for _ in range(concurrency)]
    metrics = lambda: conns[0].request(http_request("GET", "/metrics"))  # noqa: E731
    try:
        warm = iter(range(concurrency))  # opens the connections
        await asyncio.gather(*(client(c, warm, False) for c in conns))
        s0, n0 = batch_totals((await metrics())[1].decode())
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, todo, True) for c in conns))
        wall = time.perf_counter() - t0
        s1, n1 = batch_totals((await metrics())[1].decode())
    finally:
        for c in conns:
            c.close()
    lat = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": n_requests, "rps": n_requests / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "router_p50_ms": float(np.percentile(router_ms, 50)), "router_p99_ms": float(np.percentile(router_ms, 99)),
            "mean_batch": (s1 - s0) / max(n1 - n0, 1)}


def load_niced(url: str, prompts, uris, concurrency: int, n_requests: int, nice: int) -> dict:
    """`load` in a child process at a lower priority: on a 2-core machine the clients share the cores with the
    server; niced, they take what the server leaves, as if they ran on another machine (0: same priority)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_load_child, (url, prompts, uris, concurrency, n_requests, nice))


def _load_child(url, prompts, uris, concurrency, n_requests, nice):
    os.nice(nice)
    return asyncio.run(load(url, prompts, uris, concurrency, n_requests))


def batch_totals(metrics: str) -> tuple[float, float]:
    """(sum, count) of the server's vlrb_batch_size histogram (GET /metrics): requests and router forwards so far."""
    get = lambda key: float(re.search(rf"^vlrb_batch_size_{key} ([0-9.e+]+)", metrics, re.M).group(1))  # noqa: E731
    return get("sum"), get("count")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--router", help="a trained router folder (default: a k-NN on the default encoders)")
    ap.add_argument("--batch", type=int, default=64, help="server max_batch and offline batch size")
    ap.add_argument("--wait-ms", type=float, default=0.0, help="server max_wait_ms")
    ap.add_argument("--requests", type=int, default=256, help="requests per concurrency level (>= 64)")
    ap.add_argument("--concurrency", default="16,64", help="levels above 1 (concurrency 1 is always measured)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each comparison, alternated with its reference")
    ap.add_argument("--client-nice", type=int, default=10, help="niceness of the load generator (0: as the server)")
    ap.add_argument("--json", help="also write the numbers to this file")
    ap.add_argument("--serve", nargs="*", default=[], help="more serve.py overrides, e.g. batching.workers=2")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",") if int(c) > 1]
    top_level = max(levels)
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    router_dir = Path(args.router) if args.router else make_router(tmp / "router")
    prompts, uris = make_requests(max(args.requests, args.batch))
    n1 = max(32, args.requests // 4)  # requests of a concurrency-1 round, and of its bare forward
    workloads = (("text", None), ("text+image", uris))
    tr = load_router(router_dir, prompts, uris, args.batch)
    proc, url, _ = start_server(router_dir, tmp, args.batch, args.wait_ms, tuple(args.serve))
    rows, ratios, offline, tp_ratios = [], {w: [] for w, _ in workloads}, [], []
    try:
        # on a shared machine the speed drifts: each figure is measured next to its reference, round by round
        for rnd in range(args.rounds):
            for work, work_uris in workloads:
                bare = bare_forward_ms(tr, prompts[:n1], None if work_uris is None else work_uris[:n1], repeats=1)
                r = {"workload": work, "round": rnd, "bare_forward_ms": bare,
                     **load_niced(url, prompts, work_uris, 1, n1, args.client_nice)}
                r["router_p50_vs_bare"] = r["router_p50_ms"] / bare
                ratios[work].append(r["router_p50_vs_bare"])
                rows.append(r)
                print(f"{work:10s} concurrency   1: router p50 {r['router_p50_ms']:6.1f} ms, bare forward {bare:6.1f} ms "
                      f"({r['router_p50_vs_bare']:.2f}x); request p50 {r['p50_ms']:6.1f} ms", flush=True)
        for work, work_uris in workloads:
            for c in levels:
                if work == "text+image" and c == top_level:
                    continue  # measured below, against the offline rate
                r = {"workload": work, **load_niced(url, prompts, work_uris, c, args.requests, args.client_nice)}
                rows.append(r)
                print(f"{work:10s} concurrency {c:3d}: {r['rps']:7.1f} requests/s   request p50 {r['p50_ms']:7.1f} ms "
                      f"p99 {r['p99_ms']:7.1f}   router p50 {r['router_p50_ms']:7.1f} ms   mean batch "
                      f"{r['mean_batch']:5.1f}", flush=True)
        for rnd in range(args.rounds):
            off = offline_rate(tr, prompts, uris, args.batch)
            r = {"workload": "text+image", "round": rnd, "offline_rps": off,
                 **load_niced(url, prompts, uris, top_level, args.requests, args.client_nice)}
            r["rps_vs_offline"] = r["rps"] / off
            offline.append(off)
            tp_ratios.append(r["rps_vs_offline"])
            rows.append(r)
            print(f"text+image concurrency {top_level:3d}: {r['rps']:7.1f} requests/s, offline route_raw at batch "
                  f"{args.batch} {off:6.1f} ({r['rps_vs_offline']:.2f}x)   request p50 {r['p50_ms']:7.1f} ms p99 "
                  f"{r['p99_ms']:7.1f}   mean batch {r['mean_batch']:5.1f}", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    latency = {w: float(np.median(v)) for w, v in ratios.items()}
    throughput = float(np.median(tp_ratios))
    lat_ok = all(v <= LATENCY_TARGET for v in latency.values())
    tp_ok = throughput >= THROUGHPUT_TARGET
    for w, v in latency.items():
        print(f"router p50 at concurrency 1, {w}: {v:.2f}x the bare forward (median of {args.rounds} rounds)")
    print(f"throughput at concurrency {top_level} (text + image): {throughput:.2f}x offline (median of {args.rounds} "
          "rounds)")
    print(f"targets: router p50 <= {LATENCY_TARGET}x bare forward: {'met' if lat_ok else 'MISSED'}; "
          f"throughput at {top_level} >= {THROUGHPUT_TARGET}x offline: {'met' if tp_ok else 'MISSED'}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"latency_vs_bare": latency, "throughput_vs_offline": throughput,
                                               "offline_rps": offline, "batch": args.batch, "levels": rows,
                                               "latency_target_met": lat_ok, "throughput_target_met": tp_ok,
                                               "cpu_count": os.cpu_count(), "client_nice": args.client_nice,
                                               "serve_overrides": args.serve}, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if lat_ok and tp_ok else 1


if __name__ == "__main__":
    sys.exit(main())
