"""A newcomer's own correctness rule: declared in the build config, its code in the user's own module, nothing
edited inside vlrb/ or conf/.

Everything the user writes lives in a temporary folder: VLMEvalKit-style files of a dataset of theirs (`MyBench`,
beside a small generated demo work dir), `my_rules.py` with a scoring function, and `conf/data/mybench.yaml`:

    families:
      verdict:                              # the rule: one record
        eval_file: _myjudge.xlsx            # <model>_<dataset>_myjudge.xlsx holds the per-sample evaluation
        columns: [verdict]                  # the columns the scorer reads
        scorer: {_target_: my_rules.verdict_score, partial_credit: 0.75}
    extra_datasets:
      MyBench: {family: verdict, task_type: vqa_oe, group: Mine}

`build_data.py --config-dir <folder>/conf data=mybench` runs as a subprocess, and the built Y is what the rule says.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import REPO, data_cfg
from vlrb.data.benchmark import Benchmark
from vlrb.data.build import build
from vlrb.data.families import FAMILIES, rule_identity, user_families, user_family
from vlrb.data.inputs import BuildError
from vlrb.data.pool import dataset_specs
from vlrb.demo import DEMO_MODELS, generate_demo
from vlrb.demo.world import RUN_FOLDER
from vlrb.errors import ConfigError
from vlrb.pricing import PriceTable

FAILED = "Failed to obtain answer via API."
VERDICTS = ["correct", "partial", "wrong", " Correct", "WRONG", "partial"]
N_ITEMS = 12  # MyBench items
FAILED_AT = ("GPT4o", 0)  # this model's first answer is a failed API call, with a verdict that says "correct"

MY_RULES = '''
import numpy as np


def verdict_score(frame, columns, dataset, *, partial_credit=0.5):
    """A judge wrote a verdict per answer: correct, partial or wrong (any case)."""
    verdict = frame[columns[0]].astype(str).str.strip().str.lower()
    return np.select([verdict == "correct", verdict == "partial"], [1.0, partial_credit], 0.0)
'''


def verdict(model: str, i: int) -> str:
    return VERDICTS[(i + len(model)) % len(VERDICTS)]


def grade(model: str, i: int) -> float:
    return round(((i * 7 + len(model)) % 11) / 10, 1)  # 0.0 .. 1.0


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A small demo work dir (MMStar, 17 models) plus every model's MyBench files, as VLMEvalKit lays them out:
    <model>/<run>/<model>_MyBench.xlsx (predictions) and <model>_MyBench_myjudge.xlsx (the judge's evaluation)."""
    root = tmp_path_factory.mktemp("user") / "demo"
    generate_demo(root, samples_per_dataset=20, datasets=["MMStar"], workers=1, progress=False)
    for model in DEMO_MODELS:
        run = root / "vlmeval" / model / RUN_FOLDER
        items = pd.DataFrame({"index": range(N_ITEMS), "question": [f"What is shown in picture {i}?" for i in
                                                                   range(N_ITEMS)],
                              "answer": [f"thing {i}" for i in range(N_ITEMS)]})
        preds = items.assign(prediction=[FAILED if (model, i) == FAILED_AT else f"thing {i}" for i in range(N_ITEMS)])
        preds.to_excel(run / f"{model}_MyBench.xlsx", index=False)
        preds.assign(verdict=[verdict(model, i) for i in range(N_ITEMS)],
                     grade=[grade(model, i) for i in range(N_ITEMS)]).to_excel(
            run / f"{model}_MyBench_myjudge.xlsx", index=False)
    return root


def user_folder(tmp_path: Path, work: Path) -> Path:
    """What the newcomer writes: a module with the rule's code and a data config that declares the rule."""
    me = tmp_path / "me"
    (me / "conf" / "data").mkdir(parents=True)
    (me / "my_rules.py").write_text(MY_RULES)
    (me / "conf" / "data" / "mybench.yaml").write_text(textwrap.dedent(f"""\
        defaults: [vlrb, _self_]    # vlrb's own data=vlrb (a VLMEvalKit work dir), extended
        name: mybench
        raw_dir: {work / 'vlmeval'}
        tsv_dir: {work / 'LMUData'}
        datasets: [MMStar]
        families:
          verdict:
            eval_file: _myjudge.xlsx
            columns: [verdict]
            scorer: {{_target_: my_rules.verdict_score, partial_credit: 0.75}}
        extra_datasets:
          MyBench: {{family: verdict, task_type: vqa_oe, group: Mine}}
        """))
    return me


def build_data(cwd: Path, *args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, str(REPO / "build_data.py"), *args, "progress=false"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def expected(bm: Benchmark, score) -> np.ndarray:
    """The score the user's rule gives each (MyBench sample, model); a failed API call scores 0 whatever it says."""
    rows = bm.meta["dataset"].to_numpy() == "MyBench"
    ids = [int(s.split("/", 1)[1]) for s in bm.meta.loc[rows, "sample_id"]]
    return rows, np.array([[0.0 if (m, i) == FAILED_AT else score(m, i) for m in bm.models] for i in ids])


def test_a_newcomers_rule_from_config_builds_the_benchmark(tmp_path, work):
    me = user_folder(tmp_path, work)
    args = ["--config-dir", str(me / "conf"), "data=mybench", f"data.root={me / 'bench'}",
            f"hydra.run.dir={me / 'run'}"]
    r = build_data(me, *args, pythonpath=me)
    assert r.returncode == 0, r.stdout + r.stderr

    bm = Benchmark.load(me / "bench")
    assert bm.models == sorted(DEMO_MODELS)
    assert sorted(set(bm.meta["dataset"])) == ["MMStar", "MyBench"]
    credit = {"correct": 1.0, "partial": 0.75, "wrong": 0.0}
    rows, score = expected(bm, lambda m, i: credit[verdict(m, i).strip().lower()])
    assert rows.sum() == N_ITEMS
    np.testing.assert_allclose(bm.scores[rows], score)
    np.testing.assert_array_equal(bm.Y[rows], (score >= 0.5).astype(np.int8))
    assert set(bm.meta.loc[rows, "group"]) == {"Mine"} and set(bm.meta.loc[rows, "task"]) == {"vqa_oe"}
    # vlrb's own rule still reads the demo's MMStar files as the demo planted them
    truth = pd.read_parquet(work / "demo_truth.parquet").pivot(index="sample_id", columns="model_id", values="score")
    mm = ~rows
    planted = truth.reindex(index=bm.sample_ids[mm], columns=bm.models).to_numpy()
    np.testing.assert_array_equal(bm.Y[mm], (planted >= 0.5).astype(np.int8))
    manifest = json.loads((me / "bench" / "manifest.json").read_text())
    assert manifest["rules"]["verdict"]["scorer"] == "my_rules.verdict_score"
    report = json.loads((me / "bench" / "reports" / "data_integrity" / "validation_results.json").read_text())
    assert report["reader"]["failed_predictions"] == {"GPT4o": 1}

    # the rule's argument is config like any other: a new value rebuilds, and partial answers now count wrong
    r = build_data(me, *args, "data.families.verdict.scorer.partial_credit=0.25", pythonpath=me)
    assert r.returncode == 0 and "up to date" not in r.stdout + r.stderr, r.stdout + r.stderr
    bm = Benchmark.load(me / "bench")
    rows, score = expected(bm, lambda m, i: {**credit, "partial": 0.25}[verdict(m, i).strip().lower()])
    np.testing.assert_array_equal(bm.Y[rows], (score >= 0.5).astype(np.int8))
    assert (score == 0.25).any()


def test_a_declared_rule_needs_no_code(tmp_path, work):
    """A rule without a scorer reads its column as the score, declared on the command line alone."""
    root = tmp_path / "bench"
    r = build_data(tmp_path, "data=vlrb", f"data.raw_dir={work / 'vlmeval'}", f"data.tsv_dir={work / 'LMUData'}",
                   "data.datasets=[MMStar]", "+data.families={graded: {eval_file: _myjudge.xlsx, columns: [grade]}}",
                   "+data.extra_datasets={MyBench: {family: graded}}", f"data.root={root}",
                   f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stdout + r.stderr
    bm = Benchmark.load(root)
    rows, score = expected(bm, grade)
    np.testing.assert_allclose(bm.scores[rows], score, atol=1e-6)
    np.testing.assert_array_equal(bm.Y[rows], (score >= 0.5).astype(np.int8))


def test_a_scorer_that_cannot_be_imported_is_one_line(tmp_path, work):
    me = user_folder(tmp_path, work)
    r = build_data(me, "--config-dir", str(me / "conf"), "data=mybench", f"data.root={me / 'bench'}",
                   f"hydra.run.dir={me / 'run'}")  # my_rules.py is not on PYTHONPATH
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, r.stdout + r.stderr
    assert lines[0].startswith("error: data.families.verdict.scorer: cannot make 'my_rules.verdict_score' a function "
                               "(ModuleNotFoundError: No module named 'my_rules')")
    assert not (me / "bench").exists()


# ----------------------------------------------------------------------------- the library: plain values only

def _frame(n=4):
    return pd.DataFrame({"index": range(n), "prediction": ["x"] * n, "verdict": ["correct", "wrong"] * (n // 2)})


def test_a_rule_is_one_record_checked_where_it_is_declared():
    fam = user_family("verdict", {"eval_file": "_*_judge.xlsx", "columns": ["verdict", ["score", "hit"]]})
    assert fam.declared_in == "data.families.verdict" and fam.columns == (("verdict",), ("score", "hit"))
    assert fam.eval_file.fullmatch("_gpt-4o_judge.xlsx") and not fam.eval_file.fullmatch("_judge.xlsx.bak")
    assert user_family("p", {"columns": "ok"}).eval_file is None  # the prediction file itself is scored
    for record, error in [
        ({"columns": ["v"], "file": "_x.xlsx"}, r"unknown key\(s\) \['file'\]; a rule has eval_file, columns, scorer"),
        ({}, r"data.families.r.columns: the columns the scorer reads"),
        ({"columns": [[]]}, r"columns: the columns the scorer reads"),
        ({"columns": ["v"], "eval_file": "sub/_x.xlsx"}, r"eval_file: what follows '<model>_<dataset>'"),
        ({"columns": ["v"], "scorer": {"_target_": "my_rules.f"}}, r"scorer must be a function .* imported by the job"),
    ]:
        with pytest.raises(BuildError, match=error):
            user_family("r", record)
    with pytest.raises(BuildError, match="'mcq' is one of vlrb's own families"):
        user_family("mcq", {"columns": ["hit"]})
    assert "verdict" not in FAMILIES  # nothing registered globally


def test_extra_datasets_name_a_declared_rule():
    fams = user_families({"verdict": {"columns": ["verdict"]}})
    specs = dataset_specs({"datasets": ["MMStar"], "extra_datasets": {"MyBench": {"family": "verdict"}}}, fams)
    assert specs["MyBench"].family == "verdict"
    with pytest.raises(BuildError, match=r"MyBench.family='verdict': unknown correctness family; known: mcq, .*"
                                         r"declare it under data.families"):
        dataset_specs({"extra_datasets": {"MyBench": {"family": "verdict"}}})
    with pytest.raises(BuildError, match=r"MyBench.family names a family .*declared under data.families.<name>"):
        dataset_specs({"extra_datasets": {"MyBench": {"family": {"columns": ["verdict"]}}}}, fams)


def test_a_scorer_that_misbehaves_names_the_rule_and_the_file(work, tmp_path):
    prices = PriceTable.from_yaml(REPO / "conf" / "pricing" / "vlrb_2025.yaml")
    cfg = data_cfg(raw_dir=str(work / "vlmeval"), root=str(tmp_path / "b"), datasets=["MMStar"],
                   extra_datasets={"MyBench": {"family": "verdict"}})
    for scorer, error in [(lambda df, cols, ds: [1.0], r"the scorer returned \(1,\) values for 12 rows"),
                          (lambda df, cols, ds: df["nope"], r"the scorer failed \(KeyError: 'nope'\)")]:
        fams = {"verdict": user_family("verdict", {"eval_file": "_myjudge.xlsx", "columns": ["verdict"],
                                                   "scorer": scorer})}
        with pytest.raises(BuildError, match=r"_MyBench_myjudge.xlsx: MyBench \(verdict\) \[data.families.verdict\]: "
                                             + error):
            build(cfg, prices, families=fams, progress=False, log=lambda *a: None)
    assert not (tmp_path / "b").exists()


def test_the_fingerprint_follows_the_rules_code():
    def score_a(df, cols, ds):
        return df[cols[0]] == "correct"

    def score_b(df, cols, ds):
        return df[cols[0]] != "wrong"

    a, b = (user_family("v", {"columns": ["verdict"], "scorer": f}) for f in (score_a, score_b))
    assert rule_identity(a)["code_sha256"] != rule_identity(b)["code_sha256"]
    assert rule_identity(a) == rule_identity(user_family("v", {"columns": ["verdict"], "scorer": score_a}))


def test_the_job_turns_a_target_into_the_function(tmp_path, monkeypatch):
    """Config stops at the job layer: vlrb.jobs.build imports the scorer, the library gets a plain function."""
    from vlrb.jobs.build import correctness_rules

    (tmp_path / "my_rules.py").write_text(MY_RULES)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = OmegaConf.create({"families": {
        "verdict": {"columns": ["verdict"], "scorer": {"_target_": "my_rules.verdict_score", "partial_credit": 0.3}},
        "short": {"columns": ["verdict"], "scorer": "my_rules.verdict_score"},
        "plain": {"columns": ["verdict"]}}})
    rules = correctness_rules(cfg)
    df = _frame().assign(verdict=["correct", "partial", "wrong", "partial"])
    np.testing.assert_allclose(rules["verdict"].scorer(df, ["verdict"], "MyBench"), [1, 0.3, 0, 0.3])
    np.testing.assert_allclose(rules["short"].scorer(df, ["verdict"], "MyBench"), [1, 0.5, 0, 0.5])
    assert rules["plain"].declared_in == "data.families.plain"
    assert rule_identity(correctness_rules(cfg)["verdict"]) == rule_identity(rules["verdict"])  # a stable fingerprint
    with pytest.raises(ConfigError, match=r"data.families.x.scorer: cannot make 'nowhere.f' a function"):
        correctness_rules(OmegaConf.create({"families": {"x": {"columns": ["v"], "scorer": "nowhere.f"}}}))
