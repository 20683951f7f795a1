"""`Benchmark`: a built routing benchmark in memory (Y, C, models, meta, splits, prompts, images).

Reads the upstream-compatible layout (docs/layout.md#built-benchmark) that `build_data.py` writes. Row i of meta is
row i of Y and C; column j is `models[j]`. Prompts and images come from `data/registry/samples.parquet`,
or, in a folder written by the original VL-RouterBench tools, from `BENCHMARKS/<task>/<dataset>_samples.jsonl`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from vlrb.data.datasets import DATASETS
from vlrb.data.images import ImageLoader
from vlrb.io import safe_pickle_load

SPLIT_NAMES = ("train", "dev", "test")


@dataclass(kw_only=True)
class Requests:
    """Rows to route: what a router reads (features, prompts and images of `source`, datasets), no labels."""

    idx: np.ndarray  # row positions in `source` (or 0..n-1 for new requests)
    models: list[str] = field(default_factory=list)  # the candidate models, in score-column order
    X: np.ndarray | None = None  # (n, D) fused features, attached by feature-level pipelines
    sample_ids: np.ndarray | None = None
    datasets: np.ndarray | None = None
    groups: np.ndarray | None = None
    input_tokens: np.ndarray | None = None  # (n,) tokens the routed request carries (prompt + 256 per image)
    answer_format: np.ndarray | None = None  # (n,) choice | number | yesno | text (vlrb.data.answers)
    n_options: np.ndarray | None = None  # (n,) options of a choice item (0: unknown)
    source: "Benchmark | None" = field(default=None, repr=False, compare=False)  # prompts/images of rows `idx`
    name: str = "requests"

    def __post_init__(self):  # new requests: no ids, no dataset (routers treat "" as an unseen dataset)
        n = len(self.idx)
        if self.sample_ids is None:
            self.sample_ids = np.asarray([f"input/{i}" for i in range(n)], dtype=object)
        for key in ("datasets", "groups"):
            if getattr(self, key) is None:
                setattr(self, key, np.full(n, "", dtype=object))
        if self.input_tokens is None:
            self.input_tokens = np.zeros(n, np.int64)
        if self.answer_format is None:
            self.answer_format = np.full(n, "text", dtype=object)
        if self.n_options is None:
            self.n_options = np.zeros(n, np.int64)

    def __len__(self) -> int:
        return len(self.idx)

    @classmethod
    def new(cls, n: int, models: Sequence[str], X: np.ndarray | None = None) -> "Requests":
        """`n` new requests (raw inputs already encoded into `X` where the router reads features)."""
        return cls(idx=np.arange(n), models=list(models), X=X)

    def with_features(self, X: np.ndarray) -> "Requests":
        if len(X) != len(self.idx):
            raise ValueError(f"{self.name}: {len(X)} feature rows for {len(self.idx)} samples")
        return replace(self, X=X)


@dataclass(kw_only=True)
class Split(Requests):
    """The rows of one split of a benchmark: the requests with their labels, for fitting and for metrics."""

    Y: np.ndarray  # (n, K) int8 correctness
    C: np.ndarray  # (n, K) float32, $ per sample
    scores: np.ndarray  # (n, K) float32 raw (possibly fractional) correctness
    answers: np.ndarray | None = None  # (n, K) str: each model's final answer ("" none); None: not in the benchmark


class Benchmark:
    def __init__(self, Y, C, models, meta: pd.DataFrame, *, scores=None, cost_bounds: dict | None = None,
                 samples: pd.DataFrame | None = None, root: Path | None = None, answers=None):
        Y = np.asarray(Y)
        C = np.asarray(C, dtype=np.float32)
        if Y.ndim != 2 or Y.shape != C.shape:
            raise ValueError(f"Y and C must be N×K matrices of one shape; got Y {Y.shape} and C {C.shape}")
        if len(meta) != Y.shape[0]:
            raise ValueError(f"meta has {len(meta)} rows but Y has {Y.shape[0]}")
        if len(models) != Y.shape[1]:
            raise ValueError(f"{len(models)} model ids for {Y.shape[1]} columns of Y")
        self.Y = Y.astype(np.int8, copy=False)
        self.C = C
        self.scores = self.Y.astype(np.float32) if scores is None else np.asarray(scores, np.float32)
        self.models = list(models)
        self.meta = meta.reset_index(drop=True)
        self.root = root
        self._samples = samples
        if answers is not None and np.shape(answers) != self.Y.shape:
            raise ValueError(f"answers must be an N×K table like Y {self.Y.shape}; got {np.shape(answers)}")
        self._answers = None if answers is None else np.asarray(answers, dtype=object)
        self.cost_bounds = cost_bounds or compute_cost_bounds(self.C, self.models)

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, root: str | Path) -> "Benchmark":
        root = Path(root)
        mdir, rdir = root / "data" / "matrices", root / "data" / "registry"
        need = [mdir / "Y.npz", mdir / "C.npy", rdir / "meta.parquet"]
        missing = [str(p) for p in need if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"{root} is not a built benchmark (missing {', '.join(missing)}); run `python build_data.py` first")
        with np.load(mdir / "Y.npz") as z:
            Y = z["Y"]
            scores = z["scores"] if "scores" in z.files else None
        C = np.load(mdir / "C.npy")
        meta = pd.read_parquet(rdir / "meta.parquet")
        if (rdir / "model_index.json").exists():
            models = json.loads((rdir / "model_index.json").read_text())
        else:  # a benchmark built by the original tools: plain-data pickle, read without executing code
            models = list(safe_pickle_load(rdir / "model_index.pkl"))
        bounds = json.loads((mdir / "cost_bounds.json").read_text()) if (mdir / "cost_bounds.json").exists() else None
        samples = pd.read_parquet(rdir / "samples.parquet") if (rdir / "samples.parquet").exists() else None
        return cls(Y, C, models, meta, scores=scores, cost_bounds=bounds, samples=samples, root=root)

    @classmethod
    def from_arrays(cls, Y, C, models: Sequence[str] | None = None, *, datasets: Sequence[str] | None = None,
                    sample_ids: Sequence[str] | None = None, splits: Sequence[str] | None = None,
                    prompts: Sequence[str] | None = None, input_tokens: Sequence[int] | None = None,
                    seed: int = 42, scores=None, answers=None, answer_format: Sequence[str] | str | None = None,
                    n_options: Sequence[int] | int | None = None) -> "Benchmark":
        """An in-memory benchmark (tests, notebooks). Splits default to the 70/10/20 rule. `answers` (N×K) are the
        models' final answers, for cascades; `answer_format`/`n_options` per sample (or one for all)."""
        from vlrb.data.splits import random_split

        Y = np.asarray(Y)
        n, k = Y.shape
        models = list(models) if models is not None else [f"m{j}" for j in range(k)]
        sample_ids = list(sample_ids) if sample_ids is not None else [f"toy/{i:06d}" for i in range(n)]
        datasets = list(datasets) if datasets is not None else [s.split("/")[0] for s in sample_ids]
        if splits is None:
            assign = random_split(sample_ids, seed=seed)
            splits = [assign[s] for s in sample_ids]
        meta = pd.DataFrame({
            "sample_id": sample_ids, "dataset": datasets, "split": list(splits),
            "task": [DATASETS[d].task_type if d in DATASETS else "unknown" for d in datasets],
            "group": [DATASETS[d].group if d in DATASETS else "Other" for d in datasets],
            "input_tokens": np.asarray(input_tokens if input_tokens is not None else np.full(n, 100), np.int64),
        })
        if answer_format is not None or n_options is not None:
            meta["answer_format"] = np.broadcast_to(np.asarray(answer_format or "text", dtype=object), n)
            meta["n_options"] = np.broadcast_to(np.asarray(n_options or 0, dtype=np.int64), n)
        samples = None
        if prompts is not None:
            samples = pd.DataFrame({"sample_id": sample_ids, "prompt": list(prompts), "image_kind": "none",
                                    "image_ref": "", "tsv_file": ""})
        return cls(Y, C, models, meta, scores=scores, samples=samples, answers=answers)

    # ------------------------------------------------------------------ views
    @property
    def fingerprint(self) -> str | None:
        """The build's input fingerprint (manifest.json): runs record it, so evaluate.py knows their benchmark."""
        f = Path(self.root) / "manifest.json" if self.root is not None else None
        if f is None or not f.exists():
            return None
        try:
            return json.loads(f.read_text()).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            return None

    @property
    def n_samples(self) -> int:
        return self.Y.shape[0]

    @property
    def n_models(self) -> int:
        return self.Y.shape[1]

    @property
    def sample_ids(self) -> np.ndarray:
        return self.meta["sample_id"].to_numpy()

    @cached_property
    def splits(self) -> dict[str, np.ndarray]:
        """split name -> row positions, in row order."""
        col = self.meta["split"].to_numpy()
        return {s: np.flatnonzero(col == s) for s in SPLIT_NAMES}

    def split(self, name: str) -> Split:
        if name == "all":
            idx = np.arange(self.n_samples)
        elif name in self.splits:
            idx = self.splits[name]
        else:
            raise KeyError(f"unknown split {name!r}; expected one of {SPLIT_NAMES} or 'all'")
        m = self.meta
        groups = m["group"] if "group" in m else m["dataset"].map(lambda d: DATASETS[d].group if d in DATASETS else "Other")
        tokens = m["input_tokens"] if "input_tokens" in m else pd.Series(np.full(len(m), 100))
        fmt = m["answer_format"].to_numpy(dtype=object) if "answer_format" in m else np.full(len(m), "text", object)
        nopt = m["n_options"].to_numpy(np.int64) if "n_options" in m else np.zeros(len(m), np.int64)
        answers = self.answers
        return Split(name=name, idx=idx, Y=self.Y[idx], C=self.C[idx], scores=self.scores[idx],
                     sample_ids=m["sample_id"].to_numpy()[idx], datasets=m["dataset"].to_numpy()[idx],
                     groups=np.asarray(groups)[idx], input_tokens=np.asarray(tokens, np.int64)[idx],
                     answer_format=fmt[idx], n_options=nopt[idx],
                     answers=None if answers is None else answers[idx], models=self.models, source=self)

    @property
    def answers(self) -> np.ndarray | None:
        """(N, K) each model's final answer ("" where none was found), from data/matrices/answers.parquet; None for
        a benchmark built without answers (before vlrb 0.5, or by the original tools)."""
        if self._answers is None and self.root is not None:
            f = Path(self.root) / "data" / "matrices" / "answers.parquet"
            if f.exists():
                table = pd.read_parquet(f)
                missing = [m for m in self.models if m not in table.columns]
                if missing or len(table) != self.n_samples:
                    raise ValueError(f"{f}: expected {self.n_samples} rows and one column per model; "
                                     f"{len(table)} rows, models missing: {missing[:5]}")
                self._answers = table[self.models].fillna("").to_numpy(dtype=object)
        return self._answers

    @cached_property
    def samples(self) -> pd.DataFrame:
        """sample_id, prompt, image_kind, image_ref, tsv_file aligned to meta rows."""
        if self._samples is None and self.root is not None:
            self._samples = read_samples_jsonl(self.root, self.sample_ids)
        if self._samples is None:  # an in-memory benchmark built without prompts
            return pd.DataFrame({"sample_id": self.sample_ids, "prompt": "", "image_kind": "none",
                                 "image_ref": "", "tsv_file": ""})
        s = self._samples.set_index("sample_id").reindex(self.sample_ids)
        s["prompt"] = s["prompt"].fillna("")
        s["image_kind"] = s["image_kind"].fillna("none")
        return s.fillna("").reset_index()

    @property
    def prompts(self) -> list[str]:
        return self.samples["prompt"].tolist()

    @cached_property
    def images(self) -> ImageLoader:
        s = self.samples
        return ImageLoader(s["image_kind"].tolist(), s["image_ref"].tolist(), s["tsv_file"].tolist(),
                           sample_ids=s["sample_id"].tolist())

    def summary(self) -> dict:
        """Counts, per-model accuracy and cost, the Oracle's accuracy."""
        acc = self.Y.mean(0)
        cost = self.C.mean(0)
        best = int(acc.argmax())
        return {
            "root": str(self.root) if self.root else None,
            "n_samples": self.n_samples, "n_models": self.n_models,
            "splits": {k: int(len(v)) for k, v in self.splits.items()},
            "datasets": self.meta["dataset"].value_counts().sort_index().to_dict(),
            "per_model": {m: {"accuracy": float(a), "avg_cost": float(c)} for m, a, c in zip(self.models, acc, cost)},
            "most_accurate_model": self.models[best], "most_accurate_accuracy": float(acc[best]),
            "oracle_accuracy": float(self.Y.max(1).mean()),
        }


def read_samples_jsonl(root: str | Path, sample_ids: Sequence[str]) -> pd.DataFrame:
    """Prompts and image references from `BENCHMARKS/<task>/<dataset>_samples.jsonl` (the original tools' layout).

    A record holds `sample_id`, `prompt` and `assets`; the first image asset is used:
    `{"type": "image", "uri"}` (a file, relative to the benchmark root or absolute),
    `{"type": "image_base64", "data"}`, or `{"type": "image_tsv", "tsv_file", "index"}` (`index` is the TSV
    row position; `tsv_key`, which vlrb also writes, is the TSV `index` value and wins when present).
    A sample listed in several files keeps its first record. Errors name the file and what is missing.
    """
    root = Path(root)
    files = sorted((root / "BENCHMARKS").glob("*/*_samples.jsonl"))
    if not files:
        raise FileNotFoundError(
            f"{root} has no prompts or images: expected data/registry/samples.parquet (written by build_data.py) "
            f"or BENCHMARKS/<task>/<dataset>_samples.jsonl (the original VL-RouterBench layout)")
    rows: dict[str, tuple] = {}
    tsv_rows: dict[Path, list] = {}  # TSV row positions to turn into `index` keys, per file
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    sid = str(rec["sample_id"])
                except (ValueError, KeyError, TypeError):
                    raise ValueError(f"{f}:{n}: expected a JSON object with a 'sample_id'") from None
                if sid in rows:
                    continue
                prompt = next((rec[k] for k in ("prompt", "question", "text") if rec.get(k) is not None), "")
                kind, ref, tsv = _image_asset(rec.get("assets") or [], root, f, n)
                if kind == "tsv_row":
                    tsv_rows.setdefault(Path(tsv), []).append(sid)
                rows[sid] = (str(prompt), kind, ref, tsv)
    for tsv, sids in tsv_rows.items():
        keys = _tsv_index_column(tsv)
        for sid in sids:
            prompt, _, row, _ = rows[sid]
            # an absent TSV or row stays a TSV reference: extraction counts it as a decode failure, with the reason
            key = keys[int(row)] if keys is not None and 0 <= int(row) < len(keys) else f"row {row}"
            rows[sid] = (prompt, "tsv", key, str(tsv))
    missing = [s for s in map(str, sample_ids) if s not in rows]
    if missing:
        raise ValueError(f"{root / 'BENCHMARKS'}: {len(missing)} of {len(sample_ids)} benchmark samples have no "
                         f"record in any *_samples.jsonl (e.g. {missing[:5]}); the folder's files disagree")
    return pd.DataFrame([(sid, *v) for sid, v in rows.items()],
                        columns=["sample_id", "prompt", "image_kind", "image_ref", "tsv_file"])


def _image_asset(assets, root: Path, f: Path, n: int) -> tuple[str, str, str]:
    """(image_kind, image_ref, tsv_file) of the first image asset of a BENCHMARKS record."""
    if not isinstance(assets, list):
        raise ValueError(f"{f}:{n}: 'assets' must be a list")

    def local(p) -> str:  # relative paths are relative to the benchmark root
        p = Path(str(p))
        return str(p if p.is_absolute() else root / p)

    for a in assets:
        t = a.get("type") if isinstance(a, dict) else None
        if t == "image" and a.get("uri"):
            return "path", local(a["uri"]), ""
        if t == "image_base64" and a.get("data"):
            return "b64", str(a["data"]), ""
        if t == "image_tsv" and a.get("tsv_file"):
            key = a.get("tsv_key", a.get("tsv_index"))
            if key is not None:
                return "tsv", str(key), local(a["tsv_file"])
            row = str(a.get("index", a.get("row", ""))).strip()
            if not row.isdigit():
                raise ValueError(f"{f}:{n}: image_tsv asset needs an integer 'index' (TSV row) or a 'tsv_key'")
            return "tsv_row", row, local(a["tsv_file"])
    return "none", "", ""


def _tsv_index_column(tsv: Path) -> list[str] | None:
    """The `index` column of an LMUData TSV, in row order; None when the file cannot be read."""
    try:
        col = pd.read_csv(tsv, sep="\t", usecols=["index"], dtype=str, keep_default_na=False)["index"]
    except (OSError, ValueError):
        return None
    return col.str.strip().tolist()


def compute_cost_bounds(C: np.ndarray, models: Sequence[str]) -> dict:
    """cmin/cmax = the smallest and largest per-model mean cost over non-zero entries (docs/method.md#cost-bounds)."""
    C = np.asarray(C, dtype=np.float64)
    nz = C > 0
    counts = nz.sum(0)
    means = np.where(counts > 0, (C * nz).sum(0) / np.maximum(counts, 1), 0.0)
    valid = means > 0
    if not valid.any():
        raise ValueError("cost bounds: every cost is zero; the cost matrix C carries no prices")
    lo = int(np.flatnonzero(valid)[means[valid].argmin()])
    hi = int(means.argmax())
    return {
        "cmin": float(means[lo]), "cmax": float(means[hi]),
        "description": "cmin/cmax: smallest and largest per-model mean cost over non-zero entries ($ per sample)",
        "cmin_model": models[lo], "cmax_model": models[hi],
        "per_model_avg_costs": {m: float(c) for m, c in zip(models, means)},
    }
