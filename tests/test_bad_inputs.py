"""Nothing lost, nothing silent: the folder-safety, concurrency and job-error cases of issue 10 as one table.

Each row is (case, how the input is made, what must happen). Records-reader and evaluator cases live in
tests/test_bad_inputs_records.py and tests/test_bad_inputs_eval.py, in the same style.
"""
import multiprocessing
import os
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, data_cfg
from vlrb.data.build import build, is_benchmark_dir
from vlrb.data.write import dataset_file_stems
from vlrb.io import UnsafeTargetError, claim_run_dir

PY = sys.executable


def quiet(*a, **k):
    pass


def records(tmp_path, datasets=("A", "B"), n=12, models=("m1", "m2")):
    rows = [{"sample_id": f"{ds}-{i}", "dataset": ds, "model_id": m, "correct": int((i + j) % 2 == 0),
             "prompt": f"question {i}", "cost": 0.001 * (j + 1)}
            for ds in datasets for i in range(n) for j, m in enumerate(models)]
    path = tmp_path / "records.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def run_cli(script, *overrides, cwd=REPO):
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    extra = ["progress=false"] if script == "build_data.py" else []
    if script == "build_data.py" and not any(o.startswith("hydra.") for o in overrides):
        extra.append(f"hydra.run.dir={Path(overrides[-1].split('=', 1)[1]).parent / 'build-run'}")
    return subprocess.run([PY, str(REPO / script), *overrides, *extra],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def user_folder(tmp_path):
    """Somebody's folder: a file, a sub-folder and a .git, none of them vlrb's."""
    d = tmp_path / "mine"
    (d / ".git").mkdir(parents=True)
    (d / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (d / "notes.txt").write_text("precious")
    return d


def tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# ----------------------------------------------------------------------------- 1. data.root is never replaced

def build_into_user_folder(tmp_path):
    d = user_folder(tmp_path)
    before = tree(d)
    with pytest.raises(UnsafeTargetError, match=r"data.root=.*mine is an existing folder that is not a vlrb benchmark"):
        build(data_cfg(reader="records", records=str(records(tmp_path)), root=str(d)), None, log=quiet)
    assert tree(d) == before and (d / "notes.txt").read_text() == "precious"


def build_into_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UnsafeTargetError, match="is a file, not a folder"):
        build(data_cfg(reader="records", records=str(records(tmp_path)), root=str(f)), None, log=quiet)
    assert f.read_text() == "x"


def mistyped_deep_root(tmp_path):
    root = tmp_path / "tpyo" / "deeper" / "bench"
    with pytest.raises(UnsafeTargetError, match=r"the folder .*tpyo does not exist \(a typo\?\)"):
        build(data_cfg(reader="records", records=str(records(tmp_path)), root=str(root)), None, log=quiet)
    assert not (tmp_path / "tpyo").exists()


def rebuild_over_own_build(tmp_path):
    cfg = data_cfg(reader="records", records=str(records(tmp_path)), root=str(tmp_path / "b"))
    build(cfg, None, log=quiet)
    assert is_benchmark_dir(tmp_path / "b")
    (tmp_path / "b" / "EMBEDDINGS").mkdir()
    (tmp_path / "b" / "EMBEDDINGS" / "kept.txt").write_text("features")
    build(cfg, None, force=True, log=quiet)  # an earlier vlrb build is replaced, its features carried over
    assert (tmp_path / "b" / "EMBEDDINGS" / "kept.txt").read_text() == "features"


def empty_folder_is_fine(tmp_path):
    (tmp_path / "empty").mkdir()
    build(data_cfg(reader="records", records=str(records(tmp_path)), root=str(tmp_path / "empty")), None, log=quiet)
    assert is_benchmark_dir(tmp_path / "empty")


def cli_build_into_user_folder(tmp_path):
    d = user_folder(tmp_path)
    before = tree(d)
    r = run_cli("build_data.py", "data=records", f"data.records={records(tmp_path)}", f"data.root={d}")
    assert r.returncode != 0
    assert "error: data.root=" in r.stdout and "Traceback" not in r.stdout + r.stderr
    assert tree(d) == before


def cli_train_into_a_checkout(tmp_path):
    d = user_folder(tmp_path)
    before = tree(d)
    r = run_cli("train.py", "router=cheapest", f"data.root={d}", "logger=none",
                f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode != 0 and "not a vlrb benchmark" in r.stdout + r.stderr
    assert tree(d) == before


# ----------------------------------------------------------------------------- 2. dataset names are not paths

def dataset_names_stay_inside_root(tmp_path):
    names = ["../../escape", "/abs/escape", "lmms-lab/MMStar", "MMStar", "mmstar", "Plain"]
    cfg = data_cfg(reader="records", records=str(records(tmp_path, datasets=names, n=4)), root=str(tmp_path / "b"))
    build(cfg, None, log=quiet)
    root = (tmp_path / "b").resolve()
    written = [p.resolve() for p in tmp_path.rglob("*") if p.is_file() and "escape" in p.name]
    assert all(root in p.parents for p in written) and len(written) == 4  # 2 names x (jsonl + parquet)
    assert not (tmp_path.parent / "escape_samples.jsonl").exists() and not os.path.exists("/abs")
    oracle = sorted(p.name for p in (root / "ORACLE" / "score").iterdir())
    assert len(oracle) == len(names)  # MMStar and mmstar no longer overwrite each other
    assert "plain.parquet" in oracle  # plain names keep the upstream file name
    per_file = {p.name: pd.read_parquet(p)["sample_id"].str.split("-").str[0].unique().tolist()
                for p in (root / "ORACLE" / "score").iterdir()}
    assert sorted(ds for v in per_file.values() for ds in v) == sorted(n.split("-")[0] for n in names)


def file_stems_golden(tmp_path):
    stems = dataset_file_stems(["MMStar", "mmstar", "OCRBench", "../x", "a/b"])
    assert stems["OCRBench"] == "ocrbench"
    assert stems["MMStar"] != stems["mmstar"] and stems["MMStar"].startswith("mmstar-")
    assert all("/" not in s and not s.startswith(".") for s in stems.values())


# ----------------------------------------------------------------------------- 3. concurrent first demo builds

def _generate(out):
    from vlrb.demo import generate_demo

    generate_demo(out, samples_per_dataset=3, workers=1, progress=False, datasets=["MMStar", "OCRBench"],
                  if_missing=True)


def concurrent_demo_generation(tmp_path):
    out = tmp_path / "demo_raw"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_generate, args=(out,)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    models = [p.name for p in (out / "vlmeval").iterdir()]
    assert len(models) == 17  # every model, not the half of one generation and half of another
    assert not list(tmp_path.glob("*.building"))


# ----------------------------------------------------------------------------- 4. unique run directories

def run_dir_claimed_once(tmp_path):
    claim_run_dir(tmp_path / "run")
    with pytest.raises(UnsafeTargetError, match="already used by another run"):
        claim_run_dir(tmp_path / "run")


def run_dir_names_have_microseconds(tmp_path):
    import yaml

    hydra_cfg = yaml.safe_load((REPO / "conf" / "hydra" / "default.yaml").read_text())
    assert hydra_cfg["run"]["dir"].endswith("%H-%M-%S-%f}") and hydra_cfg["sweep"]["dir"].endswith("%H-%M-%S-%f}")


# ----------------------------------------------------------------------------- 5. killed builds leave nothing

def stale_build_folders_removed(tmp_path):
    left = tmp_path / ".b.x1y2.building"
    (left / "data").mkdir(parents=True)
    (left / "data" / "big.bin").write_bytes(b"0" * 1000)
    old = tmp_path / ".b.old-123"
    old.mkdir()
    other = tmp_path / ".c.z.building"  # another root's folder is not ours to remove
    other.mkdir()
    msgs = []
    build(data_cfg(reader="records", records=str(records(tmp_path)), root=str(tmp_path / "b")), None, log=msgs.append)
    assert not left.exists() and not old.exists() and other.exists()
    assert any("interrupted build" in m for m in msgs)


# ----------------------------------------------------------------------------- 18. permissions follow the umask

def build_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        build(data_cfg(reader="records", records=str(records(tmp_path)), root=str(tmp_path / "b")), None, log=quiet)
    finally:
        os.umask(old)
    root = tmp_path / "b"
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "manifest.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((root / "data" / "matrices" / "Y.npz").stat().st_mode) == 0o644


# ----------------------------------------------------------------------------- 13, 19, 20: jobs speak in one line

def one_line_error(r, *needles):
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-2000:]
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in out, out[-2000:]
    for n in needles:
        assert n in errors[0], errors[0]


def sweep_where_every_job_fails(tmp_path):
    r = run_cli("train.py", "-m", "router=random", "router.seed=a,b", "logger=none", f"hydra.sweep.dir={tmp_path / 's'}")
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "0 of 2 jobs finished" in out and "every job of the sweep failed" in out
    assert (tmp_path / "s" / "0_router.seed-a" / "error.txt").read_text().startswith("ConfigError: router")


def bad_lambda_fails_before_loading(tmp_path):
    r = run_cli("train.py", "lambda=abc", "logger=none", f"data.root={tmp_path / 'never'}",
                f"hydra.run.dir={tmp_path / 'run'}")
    one_line_error(r, "lambda='abc'")
    assert not (tmp_path / "never").exists()  # validated before anything was built


def bad_num_workers_fails_before_loading(tmp_path):
    r = run_cli("train.py", "num_workers=many", "logger=none", f"data.root={tmp_path / 'never'}",
                f"hydra.run.dir={tmp_path / 'run'}")
    one_line_error(r, "num_workers must be auto or a whole number >= 0", "'many'")
    assert not (tmp_path / "never").exists()


def bad_router_parameter(tmp_path):
    r = run_cli("train.py", "router=knn", "router.k=many", "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    one_line_error(r, "router (vlrb.routers.knn.KNNRouter)", "many")


def train_on_a_missing_benchmark(tmp_path):
    r = run_cli("train.py", "data=records", "data.records=x.parquet", f"data.root={tmp_path / 'none'}",
                "router=cheapest", "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    one_line_error(r, "holds no built benchmark", "python build_data.py data=records")


def build_with_a_missing_records_file(tmp_path):
    r = run_cli("build_data.py", "data=records", f"data.records={tmp_path / 'nope.csv'}", f"data.root={tmp_path / 'b'}")
    one_line_error(r, "nope.csv does not exist")


def build_with_a_raw_dir_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    r = run_cli("build_data.py", "data=vlrb", f"data.raw_dir={tmp_path / 'file'}", f"data.root={tmp_path / 'b'}")
    one_line_error(r, "is not a directory")


def evaluate_with_missing_runs(tmp_path):
    r = run_cli("evaluate.py", f"runs={tmp_path / 'nothing'}", "logger=none", f"hydra.run.dir={tmp_path / 'ev'}")
    one_line_error(r, "runs=", "does not exist")


def train_console_shows_what_the_build_skipped(tmp_path):
    path = records(tmp_path)
    df = pd.read_parquet(path).assign(image="img/missing.png")
    df.to_parquet(path)
    build(data_cfg(reader="records", records=str(path), root=str(tmp_path / "b")), None, log=quiet)
    r = run_cli("train.py", "data=records", f"data.records={path}", f"data.root={tmp_path / 'b'}", "~pricing",
                "router=cheapest", "logger=none", "scoring.throughput=null", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "note: missing image files (those samples get no image features): 24" in r.stdout
    assert "note: missing image files" in (tmp_path / "run" / "train.log").read_text()  # the job log too


CASES = [
    ("1 build into a user's folder", build_into_user_folder),
    ("1 build into a file", build_into_a_file),
    ("1 mistyped deep data.root", mistyped_deep_root),
    ("1 an earlier vlrb build is replaced (features kept)", rebuild_over_own_build),
    ("1 an empty folder is fine", empty_folder_is_fine),
    ("1 build_data.py into a user's folder: one-line error", cli_build_into_user_folder),
    ("1 train.py data.root=<a checkout>: refused", cli_train_into_a_checkout),
    ("2 dataset names never become paths", dataset_names_stay_inside_root),
    ("2 file stems", file_stems_golden),
    ("3 two first-time demo generations at once", concurrent_demo_generation),
    ("4 a run directory is claimed once", run_dir_claimed_once),
    ("4 run directories carry microseconds", run_dir_names_have_microseconds),
    ("5 stale build folders are removed", stale_build_folders_removed),
    ("18 permissions follow the umask", build_respects_umask),
    ("13 a sweep in which every job fails exits 1 with a summary", sweep_where_every_job_fails),
    ("19 bad lambda: one line, before loading", bad_lambda_fails_before_loading),
    ("19 bad num_workers: one line, before loading", bad_num_workers_fails_before_loading),
    ("19 bad router parameter: one line", bad_router_parameter),
    ("19 train on a missing benchmark: one line", train_on_a_missing_benchmark),
    ("19 build with a missing records file: one line", build_with_a_missing_records_file),
    ("19 build with a raw dir that is a file: one line", build_with_a_raw_dir_that_is_a_file),
    ("19 evaluate runs= that does not exist: one line", evaluate_with_missing_runs),
    ("20 train console shows what the build skipped", train_console_shows_what_the_build_skipped),
]


@pytest.mark.parametrize("case", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(case, tmp_path):
    case(tmp_path)
