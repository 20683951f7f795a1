"""Leaderboard and per-dataset tables: one row per (router, λ), written as CSV, JSON and Markdown.

CSV/JSON keep metrics.json units (accuracy and rank score in [0, 1], cost in $ per sample); the
Markdown shows accuracy and rank score ×100 and cost in $ per 10K samples, as the paper does.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from vlrb.io import write_text, write_with

COLUMNS = [
    "router", "lambda", "accuracy", "accuracy_lo", "accuracy_hi", "avg_cost", "avg_cost_lo", "avg_cost_hi",
    "rank_score", "rank_score_lo", "rank_score_hi", "throughput_ktok_s", "oracle_gap", "selection_entropy",
    "top_model_share", "vs_best_single", "selected", "kind", "n", "source",
]
PER_10K = 1e4


def leaderboard_row(router: str, metrics: Mapping[str, Any], ci: Mapping[str, float] | None = None, *,
                    lam: float | None = None, throughput: Mapping[str, Any] | None = None, prefix: str = "test/",
                    selected: bool = True, kind: str = "baseline", source: str = "", **extra: Any) -> dict[str, Any]:
    """Flatten one router's route_metrics / bootstrap_ci / throughput dicts into a leaderboard row."""
    ci = ci or {}
    row: dict[str, Any] = {"router": router, "lambda": float("nan") if lam is None else float(lam)}
    for m in ("accuracy", "avg_cost", "rank_score"):
        row[m] = metrics[f"{prefix}{m}"]
        row[f"{m}_lo"], row[f"{m}_hi"] = ci.get(f"{m}_lo", float("nan")), ci.get(f"{m}_hi", float("nan"))
    row["throughput_ktok_s"] = (throughput or {}).get("ktok_s", float("nan"))
    for m in ("oracle_gap", "selection_entropy", "top_model_share", "n"):
        row[m] = metrics.get(f"{prefix}{m}", float("nan"))
    for m in ("calls_mean", "escalated_share"):  # cascades only: calls per request, share that escalated
        if f"{prefix}{m}" in metrics:
            row[m] = metrics[f"{prefix}{m}"]
    row.update(vs_best_single=extra.pop("vs_best_single", None), selected=bool(selected), kind=kind, source=source)
    row.update(extra)
    return row


def make_leaderboard(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows sorted by rank score (best first); the listed COLUMNS first, extras after."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    cols = [c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]
    return df[cols].sort_values(["rank_score", "accuracy"], ascending=False, kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- formatting
def fmt_lambda(lam: Any) -> str:
    if lam is None or (isinstance(lam, float) and math.isnan(lam)):
        return "–"
    lam = float(lam)
    return "∞" if math.isinf(lam) else f"{lam:g}"


def _pct(x: float) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.2f}"


def _cost(x: float) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    x = x * PER_10K
    return f"{x:.2f}" if x >= 0.1 else f"{x:.3g}"


def _ci(lo: float, hi: float, f) -> str:
    return "–" if not (np.isfinite(lo) and np.isfinite(hi)) else f"[{f(lo)}, {f(hi)}]"


def _md_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _rows_md(df: pd.DataFrame) -> str:
    header = ["Router", "λ", "Acc. (%)", "95% CI", "Cost ($/10K)", "95% CI", "Rank Score", "95% CI",
              "Throughput (K tok/s)", "Oracle gap (pts)", "Sel. entropy", "vs best single: Δ rank score"]
    cascades = "calls_mean" in df and bool(np.isfinite(df["calls_mean"].astype(float)).any())
    if cascades:  # calls per request (one-shot routers: 1), beside the cost they add up to
        header.insert(6, "Calls/req")
    rows = []
    for d in df.to_dict(orient="records"):  # not itertuples: it renames the `lambda` column
        calls = d.get("calls_mean", float("nan"))
        extra = [f"{calls:.2f}" if np.isfinite(calls) else "1"] if cascades else []
        rows.append([
            str(d["router"]), fmt_lambda(d["lambda"]),
            _pct(d["accuracy"]), _ci(d["accuracy_lo"], d["accuracy_hi"], _pct),
            _cost(d["avg_cost"]), _ci(d["avg_cost_lo"], d["avg_cost_hi"], _cost), *extra,
            _pct(d["rank_score"]), _ci(d["rank_score_lo"], d["rank_score_hi"], _pct),
            "–" if not np.isfinite(d["throughput_ktok_s"]) else f"{d['throughput_ktok_s']:,.1f}",
            _pct(d["oracle_gap"]),
            "–" if not np.isfinite(d["selection_entropy"]) else f"{d['selection_entropy']:.2f}",
            d["vs_best_single"] if isinstance(d.get("vs_best_single"), str) else "–",
        ])
    return _md_table(header, rows, ["l", "r"] + ["r"] * (len(header) - 3) + ["l"])


def leaderboard_markdown(df: pd.DataFrame, title: str = "Leaderboard (test split)") -> str:
    """The reported rows (one per router: the dev-selected λ), then every λ of each sweep if there are more."""
    sel = df[df["selected"]] if "selected" in df else df
    ref = sel[sel["kind"] == "reference"]["router"].tolist() if "kind" in sel else []
    reference = (f"the **{ref[0].removeprefix('best single: ')}** row, the single model with the best rank score on "
                 "train+dev (chosen without looking at test)") if ref else "the best single model"
    parts = [f"## {title}", "",
             "Accuracy and Rank Score ×100 (β = 0.1), cost in $ per 10K samples, 95% bootstrap CIs over test "
             "samples. λ of trained routers chosen on val/rank_score. Last column: paired bootstrap on rank score "
             f"(Δ ×100 with its 95% CI, win / tie / loss) against {reference}.", "", _rows_md(sel)]
    rest = df[~df["selected"]] if "selected" in df else df.iloc[0:0]
    if len(rest):
        parts += ["", "### Every λ of each sweep (test scores; not used for selection)", "",
                  _rows_md(df[~df["kind"].isin(["baseline", "reference"])].sort_values(["router", "lambda"]))]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------- writers
def _json_safe(value: Any) -> Any:
    """NaN → null, ±inf → "inf"/"-inf" (strict JSON has neither), numpy scalars → Python."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _json_safe(v) for k, v in r.items()} for r in df.to_dict(orient="records")]


def write_leaderboard(df: pd.DataFrame, out_dir: str | Path, stem: str = "leaderboard") -> dict[str, Path]:
    """Write <stem>.csv, <stem>.json and <stem>.md atomically; returns their paths."""
    out = Path(out_dir)
    paths = {ext: out / f"{stem}.{ext}" for ext in ("csv", "json", "md")}
    write_with(paths["csv"], lambda p: df.to_csv(p, index=False))
    write_text(paths["json"], json.dumps(records(df), indent=2, ensure_ascii=False) + "\n")
    write_text(paths["md"], leaderboard_markdown(df))
    return paths


def per_dataset_markdown(per_dataset: pd.DataFrame, metric: str = "accuracy") -> str:
    """Routers × datasets table of one metric (×100 for accuracy/rank score, $/10K for cost)."""
    if per_dataset.empty:
        return ""
    fmt = _cost if metric == "avg_cost" else _pct
    d = per_dataset.assign(name=[f"{r} (λ={fmt_lambda(l)})" if fmt_lambda(l) != "–" else r
                                 for r, l in zip(per_dataset["router"], per_dataset["lambda"])])
    wide = d.pivot_table(index="name", columns="dataset", values=metric, aggfunc="first", sort=False)
    header = ["Router"] + [str(c) for c in wide.columns]
    rows = [[str(i)] + [fmt(v) for v in row] for i, row in zip(wide.index, wide.to_numpy())]
    unit = {"avg_cost": "cost ($/10K)"}.get(metric, f"{metric.replace('_', ' ')} ×100")
    return f"## Per dataset: {unit}\n\n" + _md_table(header, rows) + "\n"


def write_per_dataset(per_dataset: pd.DataFrame, out_dir: str | Path, stem: str = "per_dataset") -> dict[str, Path]:
    """per_dataset.csv (long: router, lambda, dataset, n, accuracy, avg_cost, rank_score, ...) and a .md view."""
    out = Path(out_dir)
    paths = {"csv": out / f"{stem}.csv", "md": out / f"{stem}.md"}
    write_with(paths["csv"], lambda p: per_dataset.to_csv(p, index=False))
    write_text(paths["md"], "\n".join(per_dataset_markdown(per_dataset, m) for m in ("accuracy", "rank_score", "avg_cost")))
    return paths
