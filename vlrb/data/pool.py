"""What a build covers: the configured datasets (`data.datasets` plus the user's `data.extra_datasets`) and the
model pool (`data.models`, `data.exclude_models`, the price table)."""
from __future__ import annotations

import re
from typing import Mapping

from vlrb.data.datasets import DATASETS, DatasetSpec
from vlrb.data.families import FAMILIES, Family
from vlrb.data.inputs import BuildError
from vlrb.pricing import PriceTable, missing_price_message


def dataset_specs(data_cfg, families: Mapping[str, Family] | None = None) -> dict[str, DatasetSpec]:
    """The configured datasets (default: the 14), plus user-defined `data.extra_datasets`, whose `family` names one
    of vlrb's families or one of `families` (the user's own rules, `data.families`)."""
    known_families = [*FAMILIES, *(families or {})]
    extra = {}
    for key, e in (data_cfg.get("extra_datasets") or {}).items():
        try:
            extra[key] = DatasetSpec(key, e.get("task_type", "vqa_mc"), e.get("group", "Other"), e["family"])
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", extra[key].task_type):
                raise BuildError(f"data.extra_datasets.{key}.task_type={extra[key].task_type!r}: use letters, digits, "
                                 f"'_' and '-' only (it names a folder under BENCHMARKS/)")
        except KeyError:
            raise BuildError(f"data.extra_datasets.{key} needs a `family` ({', '.join(known_families)})") from None
        fam = extra[key].family
        if not isinstance(fam, str):
            raise BuildError(f"data.extra_datasets.{key}.family names a family ({', '.join(known_families)}); a rule "
                             f"of your own is declared under data.families.<name> and named here")
        if fam not in known_families:
            raise BuildError(f"data.extra_datasets.{key}.family={fam!r}: unknown correctness family; known: "
                             f"{', '.join(known_families)} (a rule of your own: declare it under data.families)")
    known = {**DATASETS, **extra}
    wanted = list(data_cfg.get("datasets") or DATASETS) + [k for k in extra if k not in (data_cfg.get("datasets") or [])]
    unknown = [d for d in wanted if d not in known]
    if unknown:
        raise BuildError(f"unknown dataset key(s) {unknown} in data.datasets; known keys: {', '.join(DATASETS)} "
                         f"(or declare one under data.extra_datasets with its family)")
    return {d: known[d] for d in dict.fromkeys(wanted)}


def model_pool(data_cfg, prices: PriceTable | None) -> tuple[list[str] | None, set[str]]:
    models = list(data_cfg.get("models") or [])
    excluded = set(data_cfg.get("exclude_models") or [])
    if prices is None:
        return (models or None), excluded
    if models:
        bad = [m for m in models if prices.canonical(m) is None]
        if bad:
            raise BuildError(missing_price_message(bad[0], prices.source))
        return sorted({prices.canonical(m) for m in models} - excluded), excluded
    return [m for m in prices.models if m not in excluded], excluded
