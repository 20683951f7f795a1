"""A trained router that can leave its run directory: `router/` holds everything needed to route new inputs.

    router/
      README.md       a model card: models, prices, λ, the benchmark it was trained on, its test scores
      artifact.json   format, vlrb version, router name, λ, models with their prices and mean train cost, benchmark
      config.yaml     the run's resolved config (what `train.py` was asked to do)
      router.json     the router's class and parameters and fit_info
      state.safetensors | weights.safetensors   the learned state, once
      recipe.json + scaler.safetensors          feature routers: the encoder config, fusion and the train-fitted scaler

    tr = vlrb.load_router("logs/train/runs/<time>/router")    # or a hub-style id from the local HF cache
    tr.models                                   # model ids, in score order
    tr.route_raw(["What is shown?"], ["cat.jpg"])   # -> ["GPT4o"]: encodes with the recorded encoder
    tr.route(bench.split("test"))               # row choices on a benchmark (features from its cache)

A router folder is data, never code (README "What vlrb guarantees"): `load_router` builds only vlrb's own router,
encoder and backbone classes from it, with parameters that are plain values, and reads arrays whose shapes are
checked before they are allocated and whose values are checked finite. Code outside vlrb (a router of your own)
loads only with `load_router(path, trust_code=True)`. Folders saved by earlier versions (state.npz, weights.pt,
scaler.npz) load the same way.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlrb.components import ArtifactError
from vlrb.data.benchmark import Requests, Split
from vlrb.routers.base import Router, read_router

ARTIFACT_JSON = "artifact.json"
CARD = "README.md"
FORMAT = "vlrb-trained-router/1"


@dataclass
class TrainedRouter:
    router: Router
    recipe: Any = None  # FeatureRecipe for feature-level routers
    prices: dict | None = None  # model -> {"input_per_1m", "output_per_1m"} ($ per 1M tokens), when known
    mean_cost: dict | None = None  # model -> mean $ per request on the training split
    lam: Any = None
    info: dict | None = None

    @property
    def models(self) -> list[str]:
        return list(self.router.models)

    @property
    def name(self) -> str:
        return self.router.label

    @property
    def benchmark_root(self) -> str | None:
        """The folder of the benchmark the router was trained on (artifact.json; older folders: their config)."""
        bench = (self.info or {}).get("benchmark") or {}
        return bench.get("root") if isinstance(bench, dict) else None

    # ------------------------------------------------------------------ benchmark rows
    def with_inputs(self, split: Split) -> Split:
        """The split with what the router reads attached (features made by the recorded recipe)."""
        if "features" in self.router.inputs and split.X is None:
            if split.source is None:
                raise ValueError("this split has no benchmark to read features from; use route_raw")
            return split.with_features(self.recipe.transform_bench(split.source, split.name))
        return split

    def predict_scores(self, split: Split) -> np.ndarray:
        return self.router.predict_scores(self.with_inputs(split))

    def route(self, split: Split) -> np.ndarray:
        return self.router.route(self.with_inputs(split))

    # ------------------------------------------------------------------ raw inputs
    def score_raw(self, prompts: Sequence[str], images: Sequence[Any] | None = None, *,
                  return_features: bool = False):
        """(n, K) router scores of raw prompts and images (each None, a path, bytes, a PIL image or a data URI);
        a ValueError, never a silent choice, when the router gives NaN or infinite scores. `return_features=True`:
        (scores, X) with X the (n, D) float32 fused features the router read (None for a router that reads no
        features: an end-to-end one), e.g. for the server's feedback log."""
        from vlrb.data.images import ImageList
        from vlrb.devices import one_blas_thread

        prompts = ["" if p is None else str(p) for p in prompts]
        images = list(images) if images is not None else [None] * len(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images (use None for no image)")
        r = self.router
        if "labels" in r.inputs:
            raise ValueError(f"{r.label} reads the answers' correctness, so it cannot route new inputs")
        if "answers" in r.inputs:
            raise ValueError(f"{r.label} is a cascade: it decides on the answers of the models it calls, so it routes "
                             "new inputs by calling them (serve.py), or replays a benchmark's logged answers")
        X = None
        with one_blas_thread():
            if "raw" in r.inputs:
                scores = np.asarray(r.predict_raw(prompts, ImageList(images)))
            else:
                X = self.recipe.encode(prompts, images) if "features" in r.inputs else None
                scores = np.asarray(r.predict_scores(Requests.new(len(prompts), self.models, X=X)))
        if scores.shape != (len(prompts), len(self.models)):
            raise ValueError(f"{r.label}: scores of shape {scores.shape} for {len(prompts)} inputs and "
                             f"{len(self.models)} models")
        if not np.isfinite(scores).all():
            raise ValueError(f"{r.label}: NaN or infinite scores for {int((~np.isfinite(scores)).any(1).sum())} of "
                             f"{len(prompts)} inputs (the router's state is broken)")
        if return_features:
            return scores, None if X is None else np.asarray(X, dtype=np.float32)
        return scores

    def requests_raw(self, prompts: Sequence[str], images: Sequence[Any] | None = None,
                     formats: Sequence[tuple[str, int] | None] | None = None) -> Requests:
        """The rows a cascade's policy reads (`first`, `next_call`) for raw prompts and images: the features of the
        recorded recipe where the router reads them (encoded once: every step of a request reuses them), and each
        request's answer format and options (`formats`: (format, n_options) per request, None: inferred from the
        prompt by vlrb.data.answers.infer_format)."""
        from vlrb.data.answers import infer_format
        from vlrb.devices import one_blas_thread

        prompts = ["" if p is None else str(p) for p in prompts]
        images = list(images) if images is not None else [None] * len(prompts)
        formats = list(formats) if formats is not None else [None] * len(prompts)
        if not len(images) == len(formats) == len(prompts):
            raise ValueError(f"{len(prompts)} prompts, {len(images)} images and {len(formats)} formats (use None)")
        X = None
        if "features" in self.router.inputs:
            with one_blas_thread():
                X = self.recipe.encode(prompts, images)
        fmts = [f if f is not None else infer_format(p) for f, p in zip(formats, prompts)]
        rows = Requests.new(len(prompts), self.models, X=X)
        rows.answer_format = np.asarray([str(f) for f, _ in fmts], dtype=object)
        rows.n_options = np.asarray([int(k) for _, k in fmts], dtype=np.int64)
        return rows

    def prepare(self, wait: bool = False) -> None:
        """The encoders' fast path now (a feature-level router's recipe, `FeatureRecipe.prepare`); a server calls
        it at start so that it does not wait for hundreds of requests. Nothing for a router that reads no features."""
        if "features" in self.router.inputs and self.recipe is not None:
            self.recipe.prepare(wait=wait)

    def input_limits(self) -> tuple[int | None, Any]:
        """(the most prompt characters that can change this router's input, the resize step its image encoder starts
        with), from its encoders (built on first use); None where the router reads no text, or no image (or its
        image processor is not a torchvision resize).

        A text encoder reads at most max_length tokens and a token spans at most its vocabulary's longest entry, so
        a longer prompt can be cut to max_length x (longest + 1) characters before it is tokenised, unchanged. The
        resize step can run where an image is decoded, apart from the router's forward: applied again to its own
        output it changes nothing, so the pixels the encoder reads are the same."""
        r = self.router
        text, pixels = None, None
        if "raw" in r.inputs and getattr(r, "module", None) is not None:
            proc = r.module.backbone.processor
            text, pixels = (proc.tokenizer, proc.max_length), proc.pixels
        elif "features" in r.inputs and self.recipe is not None:
            mods = self.recipe.modalities
            if "text" in mods:
                enc = self.recipe._encoder("text")
                text = (enc.tokenizer, enc.max_length) if hasattr(enc, "tokenizer") else None
            if "vision" in mods:
                pixels = getattr(self.recipe._encoder("vision"), "preprocess", None)
        chars = None
        if text is not None:
            vocab = text[0].get_vocab() if hasattr(text[0], "get_vocab") else {}
            longest = max((len(t.removeprefix("##")) for t in vocab), default=32)
            chars = int(text[1]) * (longest + 1)
        return chars, _first_resize(pixels)

    def route_raw(self, prompts: Sequence[str], images: Sequence[Any] | None = None) -> list[str]:
        """The chosen model id for each (prompt, image)."""
        scores = self.score_raw(prompts, images)
        return [self.models[j] for j in scores.argmax(1)] if len(scores) else []


def _first_resize(pixels):
    """The first step of an ImagePreprocess, when it is a torchvision Resize; None otherwise."""
    steps = getattr(getattr(pixels, "resize", None), "transforms", []) or []
    return steps[0] if steps and type(steps[0]).__name__ == "Resize" else None


def save_trained_router(router: Router, path: str | Path, *, recipe=None, prices: dict | None = None,
                        mean_cost: dict | None = None, lam: Any = None, config: Any = None,
                        benchmark: dict | None = None, metrics: dict | None = None) -> Path:
    """Write `router/` (see the module docstring); the router's own `save` writes its state once."""
    import yaml

    from vlrb.io import write_json, write_text
    from vlrb.version import __version__

    path = Path(path)
    router.save(path)
    if recipe is not None:
        recipe.save(path)
    if config is not None:  # the run's resolved config, as plain data (the job converts it)
        write_text(path / "config.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    info = {"format": FORMAT, "vlrb_version": __version__, "router": router.name, "label": router.label,
            "lambda": lam, "models": router.models, "prices": prices, "mean_cost": mean_cost,
            "features": recipe is not None, "inputs": list(router.inputs), "benchmark": benchmark}
    write_json(path / ARTIFACT_JSON, info)
    write_text(path / CARD, model_card(info, metrics or {}, recipe))
    return path


def model_card(info: dict, metrics: dict, recipe=None) -> str:
    """README.md of a router folder, in the model-card layout of model hubs (YAML front matter, then prose)."""
    models = info.get("models") or []
    prices, mean_cost = info.get("prices") or {}, info.get("mean_cost") or {}
    bench = info.get("benchmark") or {}
    lines = ["---", "library_name: vlrb", "tags: [vlrb, llm-routing, vlm-routing]", "---", "",
             f"# vlrb router: {info.get('label')}", "",
             f"Routes each image + question to one of {len(models)} vision–language models "
             f"([vlrb](https://arxiv.org/abs/2512.23562) {info.get('vlrb_version')}, router `{info.get('router')}`"
             + (f", λ = {info['lambda']}" if info.get("lambda") is not None else "") + ").", "",
             "```python", "import vlrb", "tr = vlrb.load_router(\"<this folder>\")",
             "tr.route_raw([\"What is in the chart?\"], [\"chart.png\"])   # -> a model id per request", "```", "",
             "A router folder is data: loading it runs no code of its own (vlrb builds only its own classes from it).",
             "", "## Models", "", "| model | $ / 1M input tokens | $ / 1M output tokens | mean $ per request (train) |",
             "|---|---|---|---|"]
    for m in models:
        p = prices.get(m) or {}
        mc = f"{mean_cost[m]:.3g}" if m in mean_cost else "–"
        lines.append(f"| {m} | {p.get('input_per_1m', '–')} | {p.get('output_per_1m', '–')} | {mc} |")
    lines += ["", "## Training data", "",
              f"Benchmark at `{bench.get('root', 'unknown')}` (fingerprint `{str(bench.get('fingerprint'))[:16]}`)"
              + (f"; inputs encoded by `{recipe.encoder.get('text', {}).get('_target_', '?')}` + "
                 f"`{recipe.encoder.get('vision', {}).get('_target_', '?')}`, fusion {recipe.fusion}"
                 if recipe is not None else "") + "."]
    if metrics:
        lines += ["", "## Test scores", "", "| accuracy | $ per 10K requests | rank score | vs best single model |",
                  "|---|---|---|---|"]

        def num(k, scale=100.0, fmt=".2f"):
            v = metrics.get(k)
            return format(v * scale, fmt) if isinstance(v, (int, float)) else "–"

        lines.append(f"| {num('test/accuracy')} % | {num('test/avg_cost', 1e4, '.3f')} | {num('test/rank_score')} | "
                     f"{metrics.get('test/best_single/model', '–')}: {num('test/vs_best_single/delta_rank_score', 100, '+.2f')}"
                     f" ({metrics.get('test/vs_best_single/outcome', '–')}) |")
    return "\n".join(lines) + "\n"


def load_router(path: str | Path, *, trust_code: bool = False) -> TrainedRouter:
    """A trained router from its `router/` folder (or its run directory, or a hub-style id `org/name` found in the
    local Hugging Face cache: nothing is downloaded), ready for `route_raw` in a fresh process. Only vlrb's own
    classes are built from the folder unless `trust_code=True` (see the module docstring)."""
    path = _locate(path)
    router = read_router(path, trust_code=trust_code)
    meta = _read_artifact(path, router)
    recipe = None
    if "features" in router.inputs:
        from vlrb.features.recipe import RECIPE_JSON, FeatureRecipe

        if not (path / RECIPE_JSON).exists():
            raise ArtifactError(f"{path}: a feature router without {RECIPE_JSON} (saved by an older vlrb?); "
                                "retrain it to route new inputs")
        recipe = FeatureRecipe.load(path, trust_code=trust_code)
    return TrainedRouter(router, recipe, prices=meta.get("prices"), mean_cost=meta.get("mean_cost"),
                         lam=meta.get("lambda"), info=meta)


def router_folder(path: str | Path) -> Path:
    """The router folder that `path` (a folder, a run directory, a hub-style id) names: what load_router reads."""
    return _locate(path)


def _locate(path: str | Path) -> Path:
    """A router folder from a folder, a run directory, or a hub-style id resolved in the local HF cache."""
    p = Path(path).expanduser()
    if not p.exists() and isinstance(path, str) and path.count("/") == 1 and not path.startswith((".", "/", "~")):
        from vlrb.weights import local_snapshot

        p = local_snapshot(path, "router", f"Download it once with `hf download {path}`, or give its folder.")
    if (p / "router").is_dir() and not (p / ARTIFACT_JSON).exists():
        p = p / "router"  # a run directory was given
    if not p.is_dir():
        raise ArtifactError(f"{path}: no such router folder (a train run's router/ folder, or its run directory)")
    return p


def _read_artifact(path: Path, router: Router) -> dict:
    """artifact.json, checked: its models are the router's, each once; prices and mean costs finite and >= 0."""
    f = path / ARTIFACT_JSON
    meta: dict = {}
    if f.exists():
        try:
            meta = json.loads(f.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{f}: not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise ArtifactError(f"{f}: expected a JSON object")
    models = meta.get("models", router.models)
    if list(models or []) != list(router.models):
        raise ArtifactError(f"{f}: its models {list(models or [])[:3]}... are not the router's {router.models[:3]}...")
    for key in ("mean_cost", "prices"):
        table = meta.get(key)
        if table is None:
            continue
        if not isinstance(table, dict) or set(table) - set(router.models):
            raise ArtifactError(f"{f}: '{key}' must map the router's models to their values")
        for m, v in table.items():
            values = [v] if key == "mean_cost" else [(v or {}).get("input_per_1m"), (v or {}).get("output_per_1m")] \
                if isinstance(v, dict) else [None]
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0
                       for x in values):
                raise ArtifactError(f"{f}: {key} of {m!r} must be finite and >= 0 ($), got {v!r}")
    if not meta.get("benchmark"):
        meta["benchmark"] = _benchmark_from_config(path)
    return meta


def _benchmark_from_config(path: Path) -> dict | None:
    """A folder saved before artifact.json named its benchmark: data.root of its resolved config.yaml."""
    import yaml

    try:
        cfg = yaml.safe_load((path / "config.yaml").read_text())
        root = cfg["data"]["root"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return {"root": str(root)} if isinstance(root, str) else None
