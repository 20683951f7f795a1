"""What the serving tests share: a tiny trained router on disk, a fake OpenAI-compatible upstream (a uvicorn
server in a thread of the test process), `serve.py` as a real process, and images. Loopback addresses only;
every wait is bounded; every server is stopped by its context manager."""

import asyncio
import base64
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from conftest import REPO, make_router

TINY_ENC = {"text": {"family": "hf_text", "tiny": True}, "vision": {"family": "hf_vision", "tiny": "dinov2"},
            "fusion": "normalize_concat", "batch_size": 8, "num_workers": 0, "device": "cpu"}
MODELS = ["cheap", "mid", "dear"]
PRICES = {"cheap": (0.1, 0.4), "mid": (0.5, 2.0), "dear": (5.0, 20.0)}
MEAN_COST = {"cheap": 2e-5, "mid": 1e-4, "dear": 1e-3}
RED, BLUE = (220, 30, 30), (30, 30, 220)


def png_bytes(color=RED, size=(24, 24), mode="RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def noise_png(size: int = 100) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def data_uri(color=RED, size=(24, 24)) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(color, size)).decode()


def bomb_uri() -> str:
    """A 12000 x 12000 PNG of a few kilobytes: 144 M pixels once decoded."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(0, (12000, 12000), mode="1")).decode()


def build_tiny_router(path: Path) -> Path:
    """A k-NN feature router on the tiny encoders: red squares -> 'cheap' is right, blue squares -> only 'dear'."""
    from vlrb.artifact import save_trained_router
    from vlrb.data.benchmark import Split
    from vlrb.features.fusion import FeatureScaler
    from vlrb.features.recipe import FeatureRecipe

    from PIL import Image

    recipe = FeatureRecipe.from_config(TINY_ENC)
    dim = recipe._encoder("text").dim + recipe._encoder("vision").dim
    recipe.scaler = FeatureScaler.from_arrays(np.zeros(dim), np.ones(dim))
    colours = [RED, BLUE] * 6
    prompts = [f"What colour is square {i}?" for i in range(len(colours))]
    X = recipe.encode(prompts, [Image.new("RGB", (24, 24), c) for c in colours])
    Y = np.asarray([[1, 1, 1] if c == RED else [0, 0, 1] for c in colours], np.int8)
    C = np.tile(np.asarray([MEAN_COST[m] for m in MODELS], np.float32), (len(colours), 1))
    train = Split(name="train", idx=np.arange(len(colours)), Y=Y, C=C, scores=Y.astype(np.float32), models=MODELS, X=X)
    router = make_router("knn", k=3).fit(train)
    prices = {m: {"input_per_1m": p, "output_per_1m": q} for m, (p, q) in PRICES.items()}
    return save_trained_router(router, path, recipe=recipe, prices=prices, mean_cost=dict(MEAN_COST))



class StubRouter:
    """A served router without encoders: scores [cheap, mid, dear] = [0, 1, 3] for prompts with "hard", else
    [3, 1, 0]; records each batch's size and images (`delay_s`: a slow forward)."""

    models = MODELS
    prices = {m: {"input_per_1m": p, "output_per_1m": q} for m, (p, q) in PRICES.items()}
    mean_cost = MEAN_COST
    name = "stub"

    def __init__(self, delay_s: float = 0.0):
        self.batches: list[int] = []
        self.images: list = []
        self.delay_s = delay_s

    def score_raw(self, prompts, images):
        self.batches.append(len(prompts))
        self.images += list(images)
        if self.delay_s:
            time.sleep(self.delay_s)
        return np.array([[0.0, 1.0, 3.0] if "hard" in p else [3.0, 1.0, 0.0] for p in prompts])

# ------------------------------------------------------------------------------------------ fake upstream
class FakeUpstream:
    """An OpenAI-compatible /v1/chat/completions; `behaviour[upstream model] = ok | 500 | slow | 400`, `replies[upstream
    model]` its reply text (a string, or a function of the request body; default "answer from <model>") and
    `calls` records what arrived (upstream model, body, Authorization header)."""

    def __init__(self, slow_s: float = 3.0):
        self.behaviour: dict[str, str] = {}
        self.replies: dict = {}
        self.calls: list[dict] = []
        self.slow_s = slow_s
        self.app = self._app()
        self.url = ""

    def _app(self):
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

        app = FastAPI()

        @app.get("/files/{name}")  # images for the remote-URL tests
        async def files(name: str):
            if name == "redirect.png":
                return RedirectResponse("/files/red.png")
            if name == "slow.png":
                await asyncio.sleep(self.slow_s)
            if name == "page.html":
                return Response("<html></html>", media_type="text/html")
            if name == "big.png":  # noise does not compress: about 30 KB
                return Response(noise_png(), media_type="image/png")
            return Response(png_bytes(RED, (20, 10)), media_type="image/png")

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            name = body.get("model")
            self.calls.append({"model": name, "body": body, "auth": request.headers.get("authorization")})
            mode = self.behaviour.get(name, "ok")
            if mode == "500":
                return JSONResponse({"error": {"message": "upstream exploded", "type": "server_error"}}, 500)
            if mode == "400":
                return JSONResponse({"error": {"message": "upstream says no", "type": "invalid_request_error"}}, 400)
            if mode == "slow":
                await asyncio.sleep(self.slow_s)
            reply = self.replies.get(name, f"answer from {name}")
            text = reply(body) if callable(reply) else reply
            if body.get("stream"):
                async def events():
                    for piece in (text[:7], text[7:]):
                        yield "data: " + json.dumps(_chunk(name, {"content": piece})) + "\n\n"
                    yield "data: " + json.dumps(_chunk(name, {}, "stop")) + "\n\n"
                    yield "data: [DONE]\n\n"
                return StreamingResponse(events(), media_type="text/event-stream")
            return {"id": "chatcmpl-up", "object": "chat.completion", "created": 0, "model": name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}

        return app

    def __enter__(self) -> "FakeUpstream":
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(400):  # bounded: 20 s
            if self.server.started:
                break
            time.sleep(0.05)
        assert self.server.started, "the fake upstream did not start"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def _chunk(model: str, delta: dict, finish: str | None = None) -> dict:
    return {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class AppServer:
    """Any ASGI app (e.g. `vlrb.serve.app.create_app(...)`) under uvicorn in a thread of the test process, on a free
    loopback port: `.url` once it is up; its lifespan runs, so its service starts and stops as in serve.py."""

    def __init__(self, app):
        self.app = app
        self.url = ""

    def __enter__(self) -> "AppServer":
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(600):  # bounded: 30 s
            if self.server.started or not self.thread.is_alive():
                break
            time.sleep(0.05)
        assert self.server.started, "the app did not start"
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(20)


# ------------------------------------------------------------------------------------------ serve.py process
class ServeProcess:
    """`python serve.py <overrides> port=0` as a process; `.url` once uvicorn says where it listens."""

    def __init__(self, overrides: list[str], run_dir: Path, env: dict | None = None, timeout_s: float = 240):
        self.overrides, self.run_dir, self.timeout_s = overrides, run_dir, timeout_s
        self.env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", **(env or {})}
        self.log = run_dir / "serve.out"
        self.url = ""

    def __enter__(self) -> "ServeProcess":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # the feedback log in the test's folder, not the checkout's logs/ (unless the test names one)
        log = [] if any(o.startswith("feedback") for o in self.overrides) else [
            f"feedback.path={self.run_dir / 'feedback.sqlite'}"]
        cmd = [sys.executable, "serve.py", *self.overrides, *log, "port=0", f"hydra.run.dir={self.run_dir / 'hydra'}"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        deadline = time.time() + self.timeout_s
        while time.time() < deadline:
            m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", self.output())
            if m:
                self.url = m.group(1)
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.__exit__()
        raise AssertionError(f"serve.py did not start:\n{self.output()[-4000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
