"""The correctness-family registry: every dataset has a family, every family is complete, the demo's table of
planners and renderers names the same families, and the demo writes files that the family's own eval-file rule,
columns and scorer read back as planted."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from vlrb.data import vlmevalkit as vk
from vlrb.data.correctness import CorrectnessError
from vlrb.data.datasets import DATASETS
from vlrb.data.families import FAMILIES, Family, get_family
from vlrb.data.inputs import BuildError
from vlrb.data.pool import dataset_specs
from vlrb.demo import plan_dataset
from vlrb.demo.families import DEMO_FAMILIES, DemoFamily
from vlrb.demo.generate import _write_model
from vlrb.demo.world import DEMO_MODELS, GROUPS

MODEL = "InternVL2_5-78B"  # bare answers; not an API model, so no failed calls to mask
# planted correctness per sample: right, wrong, right, wrong, ...
PLANTED = np.array([True, False] * 4)


def test_every_dataset_has_a_family_and_every_family_a_dataset():
    assert {s.family for s in DATASETS.values()} == set(FAMILIES)


def test_the_demo_plans_and_renders_every_family_and_no_other():
    """The rules (vlrb.data) and the demo's planners and renderers (vlrb.demo) are two tables keyed by family name.
    A user's own rule (data.families) is not in FAMILIES, so it needs no demo planner."""
    assert list(DEMO_FAMILIES) == list(FAMILIES)
    for name, demo in DEMO_FAMILIES.items():
        assert isinstance(demo, DemoFamily) and callable(demo.plan) and callable(demo.render), name
        assert demo.group in GROUPS, name


def test_the_rules_know_nothing_of_the_demo():
    """vlrb.data sits below vlrb.demo: no module of it imports the demo, and a rule has no demo fields."""
    root = Path(vk.__file__).parent  # vlrb/data/
    offenders = [p.name for p in root.glob("*.py") if re.search(r"^\s*(from|import) vlrb\.demo", p.read_text(), re.M)]
    assert offenders == []
    assert not [f for f in Family.__dataclass_fields__ if "demo" in f]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_is_complete(name):
    fam = FAMILIES[name]
    assert isinstance(fam, Family) and fam.name == name
    assert fam.columns and all(group and all(isinstance(c, str) and c for c in group) for group in fam.columns)
    for rule in (fam.eval_file, fam.judge_cache):
        assert rule is None or isinstance(rule, re.Pattern)
    if fam.eval_file is None:  # scored from the prediction file itself
        assert ("prediction",) in fam.columns
    assert callable(fam.scorer) and fam.declared_in is None  # vlrb's own rule


@pytest.mark.parametrize("key", list(DATASETS))
def test_demo_writes_each_family_and_the_scorer_reads_the_planted_answers(tmp_path, key):
    """The demo's files for one model: the reader picks the evaluation file by the family's rule and the
    family's scorer gives 1 to every planted right answer and 0 to every planted wrong one."""
    spec = DATASETS[key]
    plan = plan_dataset(key, len(PLANTED), seed=0)
    m = list(DEMO_MODELS).index(MODEL)
    plan.correct[:, m], plan.failed[:, m] = PLANTED, False
    truth = _write_model(MODEL, {key: plan}, tmp_path, seed=0)[key]

    disc = vk.discover(tmp_path, lambda folder: folder if folder == MODEL else None, {key: spec})
    tasks, missing = vk.plan(disc, {key: spec})
    assert not missing and len(tasks) == 1
    task = tasks[0]
    eval_name = task.eval_file.name[len(f"{MODEL}_{key}"):]
    rule = FAMILIES[spec.family].eval_file
    assert rule.fullmatch(eval_name) if rule else eval_name == ".xlsx"

    scores = vk.read_task(task)["records"]["score"].to_numpy()
    np.testing.assert_allclose(scores, truth)  # what the demo says its files encode
    assert ((scores >= 0.5) == PLANTED).all()


def test_unknown_family_names_the_known_ones():
    with pytest.raises(CorrectnessError, match=r"MyBench \(nope\): unknown correctness family; known: mcq, yorn"):
        get_family("nope", "MyBench")
    with pytest.raises(BuildError, match="needs a `family` " + re.escape(f"({', '.join(FAMILIES)})")):
        dataset_specs({"extra_datasets": {"MyBench": {"task_type": "vqa_mc"}}})
