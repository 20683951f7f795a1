"""The demo's side of each correctness family: how a dataset of that family is planned (vlrb.demo.plan), how a
model's answers and evaluation files are rendered (vlrb.demo.render), and which task group of the latent-skill
model (vlrb.demo.world.GROUPS) its samples draw on.

Keyed by the names of vlrb.data.families.FAMILIES, the correctness rules the reader applies to what the demo
writes (tests/test_families.py checks that both tables name the same families). The rules know nothing of the
demo; a user's own rule (`data.families`) has no demo planner and needs none.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from vlrb.demo.plan import (plan_anls, plan_mathverse, plan_mathvision, plan_mathvista, plan_mcq, plan_ocrbench,
                            plan_vqa, plan_yorn)
from vlrb.demo.render import render_anls, render_mcq, render_ocrbench, render_vqa, render_yorn
from vlrb.demo.render_math import render_mathverse, render_mathvision, render_mathvista


@dataclass(frozen=True)
class DemoFamily:
    plan: Callable  # (dataset key, n, random.Random) -> vlrb.demo.samples.DatasetPlan
    render: Callable  # (plan, model, ok, fail, rng) -> vlrb.demo.render.Rendered
    group: str  # the task group of the latent-skill model (vlrb.demo.world.GROUPS)


DEMO_FAMILIES: dict[str, DemoFamily] = {
    "mcq": DemoFamily(plan_mcq, render_mcq, "general"),
    "yorn": DemoFamily(plan_yorn, render_yorn, "general"),
    "vqa": DemoFamily(plan_vqa, render_vqa, "ocr"),
    "anls": DemoFamily(plan_anls, render_anls, "ocr"),
    "ocrbench": DemoFamily(plan_ocrbench, render_ocrbench, "ocr"),
    "mathvista": DemoFamily(plan_mathvista, render_mathvista, "math"),
    "mathvision": DemoFamily(plan_mathvision, render_mathvision, "math"),
    "mathverse": DemoFamily(plan_mathverse, render_mathverse, "math"),
}
