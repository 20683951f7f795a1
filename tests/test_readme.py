"""Every shell command of README.md runs here, as written, in README order (so a README command cannot break unseen).

Each ```bash block of README.md is read and each statement in it (`python ...`, `make ...`, `curl ...`, a
`cat > file <<'EOF'` heredoc, `export`, `source`; a `\\` continues a line) becomes one test, run with bash in a
sandbox project: a folder holding links to the entry points, conf/, scripts/ and the Makefile, with
`PROJECT_ROOT` pointing at it, so data/ and logs/ are the sandbox's own. The default logger is on, in W&B offline
mode (the mode a user without an account gets), not disabled. The commands build on each other, so they run in
order in one process (`make test` distributes whole files: `--dist loadfile`).

A command runs exactly as written unless TIERS below says otherwise. What may change, and only as listed there:
* placeholders a reader fills in (PLACEHOLDERS: `<time>` is the newest matching run folder, `/path/to/...` a
  stand-in made here, `...` the arguments of the command above it), and `port=8000` (any free port, and the
  `curl` lines follow it);
* tier `slow` (minutes of compute): runs under the `slow` marker (`make test-full`), with `tiny` overrides where
  the full run would take minutes even there;
* tier `shared` (a user's own data): also `slow`, on a copy of the real MATH-Vision files beside the checkout
  (skipped, with that reason, when ../shared is absent);
* tier `dry` (the test suite itself, hours of benchmarks, a SLURM cluster): checked without running it
  (`make -n`, Hydra's `--cfg`), and the reason says why.
Every other command is fast and runs in `make test`. A TIERS entry that matches no README command is an error,
so the table cannot go stale.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, SHARED

README = REPO / "README.md"
KINDS = ("python", "make", "curl", "cat", "export", "source")


@dataclass(frozen=True)
class Statement:
    section: str
    text: str  # the command as written, comment removed, continuations joined (a heredoc keeps its lines)

    @property
    def kind(self) -> str:
        return self.text.split()[0]

    @property
    def id(self) -> str:
        return re.sub(r"\s+", " ", self.text.splitlines()[0])[:90]


def readme_statements(text: str) -> list[Statement]:
    """The shell statements of the README's ```bash blocks, in order."""
    out, section = [], ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("# ").strip()
        if line.strip() == "```bash":
            i += 1
            pending = ""
            while lines[i].strip() != "```":
                cur = lines[i]
                i += 1
                if pending:
                    cur = pending + " " + cur.strip()
                    pending = ""
                if cur.rstrip().endswith("\\"):
                    pending = cur.rstrip()[:-1].rstrip()
                    continue
                stripped = cur.strip()
                if not stripped or stripped.startswith("#"):
                    continue
                heredoc = re.search(r"<<\s*'?(\w+)'?", stripped)
                if heredoc:  # the statement runs to its terminator line
                    body = [stripped]
                    while lines[i].strip() != heredoc.group(1):
                        body.append(lines[i])
                        i += 1
                    body.append(lines[i].strip())
                    i += 1
                    out.append(Statement(section, "\n".join(body)))
                    continue
                out.append(Statement(section, _without_comment(stripped)))
        i += 1
    return out


def _without_comment(line: str) -> str:
    """A line without its trailing `  # comment` (a `#` inside quotes is kept)."""
    masked = re.sub(r"'[^']*'|\"[^\"]*\"", lambda m: "_" * len(m.group(0)), line)
    cut = masked.find(" #")
    return line[:cut].rstrip() if cut >= 0 else line.rstrip()


STATEMENTS = readme_statements(README.read_text())

TINY_DEMO_FULL = "data.generate.samples_per_dataset=6"
TINY_CV = ["selection.folds=2", "selection.grid.lambda=[100]", "selection.per_router.mlp.hidden_sizes=[[64]]",
           "selection.per_router.knn.k=[5]", "selection.per_router.prknn.k=[7]", "selection.per_router.ovr.C=[0.01]"]
# command as written (comment removed) -> (tier, why, extra overrides: the tiny version of a minutes-long run)
TIERS: dict[str, tuple[str, str, list[str]]] = {
    "make demo": ("slow", "the whole pipeline (about a minute warm)", []),
    "make test": ("dry", "the fast suite: this test runs inside it", []),
    "make test-full": ("dry", "the whole suite, this test included", []),
    "make bench": ("dry", "every benchmark at full scale: tens of minutes", []),
    "python build_data.py data=demo_full": ("slow", "the paper's scale: minutes", [TINY_DEMO_FULL]),
    "python build_data.py data=vlrb data.raw_dir=/path/to/vlmeval_work_dir data.tsv_dir=/path/to/LMUData":
        ("slow", "a user's VLMEvalKit work dir: the demo's generated one stands in", []),
    "python build_data.py data=vlrb ... pricing.path=my_prices.yaml data.models=[GPT4o,SmolVLM2]":
        ("slow", "a user's work dir and price table: the demo's stand in", []),
    "python build_data.py data=records data.records=my_runs.parquet": ("slow", "a user's records table", []),
    "python build_data.py data=results data.dir=/path/to/folder pricing.path=my_prices.yaml":
        ("slow", "a user's result folder: a small generated one stands in", []),
    "python build_data.py data=mathv data.dir=/path/to/MATH-V pricing=mathv":
        ("shared", "a clone of MATH-Vision: 200 of its real items stand in", []),
    "python build_data.py data=mathv data.dir=/path/to/MATH-V pricing=mathv stage=all":
        ("shared", "a clone of MATH-Vision, and its image features", []),
    "python train.py -m router=linear,mlp lambda=0,10,100,1000,10000,inf": ("slow", "12 fits", []),
    "python evaluate.py runs=logs/train/multiruns/<time>": ("slow", "scores the 12-fit sweep above", []),
    "python train.py router=mlp selection=cv": ("slow", "5-fold CV of 12 candidates", TINY_CV),
    "python train.py router=knn selection=cv 'selection.per_router.knn.k=[5,10,20]' selection.folds=10":
        ("slow", "10-fold CV", []),
    "python train.py router=vlrb_cal ood=lodo ood.holdout=MMStar selection=cv": ("slow", "CV of vlrb_cal", []),
    "python train.py router=vlrb_cal ood=logo ood.holdout=STEM": ("slow", "a vlrb_cal fit", []),
    "python train.py experiment=lodo": ("slow", "42 cross-validated jobs: one held-out dataset here",
                                        ["router=vlrb_cal", "ood.holdout=MMStar", "selection.folds=2"]),
    "python scripts/results_table.py --ood logs/lodo/multiruns/<time>": ("slow", "the sweep above", []),
    "python build_data.py stage=all": ("slow", "the demo and its features again (cached)", []),
    "python train.py experiment=results logger=none": ("slow", "12 cross-validated routers", TINY_CV),
    "python scripts/results_table.py logs/results/multiruns/<time>": ("slow", "the sweep above", []),
    "python train.py experiment=results data=mathv data.dir=/path/to/MATH-V logger=none":
        ("shared", "12 cross-validated routers on MATH-Vision items", TINY_CV),
    "python train.py -m router=vlc,routerdc,cosinecls,zooter lambda=100,1000 logger=none "
    "hydra.sweep.dir=logs/results/multiruns/<time>/e2e":
        ("slow", "8 end-to-end fits: tiny backbone, a few batches", ["backbone=tiny_offline", "trainer.max_epochs=1",
                                                                    "+trainer.limit_train_batches=2",
                                                                    "+trainer.limit_val_batches=1"]),
    "python train.py -m router=cascade_validity,cascade_agreement,cascade_chain,cascade_verify selection=cv "
    "logger=none hydra.sweep.dir=logs/results/multiruns/<time>/cascades": ("slow", "4 cross-validated cascades",
                                                                           TINY_CV[:1]),
    "python train.py -m router=cascade_validity,cascade_chain,cascade_verify ++router.objective=match selection=cv "
    "logger=none hydra.sweep.dir=logs/results/multiruns/<time>/match": ("slow", "3 cross-validated cascades",
                                                                        TINY_CV[:1]),
    "python scripts/cascade_curve.py --out docs/img/cascades_demo.png": ("slow", "7 fits on the demo", []),
    "python scripts/cascade_curve.py data=mathv data.dir=/path/to/MATH-V pricing=mathv --out "
    "docs/img/cascades_mathv.png": ("shared", "7 fits on MATH-Vision items", []),
    "python build_data.py data=demo_full stage=all": ("slow", "the paper's scale and its features",
                                                      [TINY_DEMO_FULL]),
    "python train.py experiment=results data=demo_full logger=none selection.folds=3 "
    "'selection.per_router.ovr.C=[0.01]'": ("slow", "12 cross-validated routers at the paper's scale",
                                           [TINY_DEMO_FULL, *TINY_CV[1:4]]),
    "python train.py experiment=lodo logger=none": ("slow", "42 cross-validated jobs: one held-out dataset here",
                                                    ["router=linear", "ood.holdout=OCRBench", "selection.folds=2",
                                                     "selection.grid.lambda=[100]"]),
    "python train.py experiment=feature_grid": ("slow", "36 jobs", ["lambda=0,inf"]),
    "python train.py experiment=paper_mlp encoder=default": ("slow", "6 MLP fits", ["lambda=0,inf"]),
    "python train.py -m hydra/launcher=submitit_slurm_vlrb router=mlp lambda=0,100,inf":
        ("dry", "needs a SLURM cluster: the launcher config composes", ["--cfg", "hydra"]),
    "python train.py router=mlp trainer=ddp": ("slow", "DDP over GPUs: two CPU processes here",
                                               ["trainer.accelerator=cpu", "trainer.devices=2"]),
    "python train.py router=mlp": ("slow", "the same run as `router=mlp lambda=100` above", []),
    "python train.py router=routerdc lambda=0.5": ("slow", "an end-to-end router: minutes on a CPU", []),
    "python serve.py router_dir=logs/train/runs/<time>/router upstreams=upstreams.yaml":
        ("slow", "a server with upstreams (started, checked, stopped; nothing forwarded)", []),
    "cat > upstreams.yaml <<'EOF'": ("slow", "the upstreams file of the server above", []),
    "export OPENAI_API_KEY=sk-...": ("slow", "the key of the upstream above", []),
    "python serve.py router_dir=... 'upstreams={GPT4o: {base_url: \"https://api.openai.com/v1\", model: gpt-4o, "
    "api_key_env: OPENAI_API_KEY}}'": ("slow", "a server with an inline upstream (started, checked, stopped)", []),
    "python calibrate.py router_dir=... target_unit=usd 'targets=[0.0002]' 'calibrate_on=[train,dev]'":
        ("slow", "a second calibration", []),
    "python calibrate.py data=demo_full router_dir=logs/results/multiruns/<time>/<mlp job>/router":
        ("slow", "the router of the full-scale Results sweep", [TINY_DEMO_FULL]),
    "python scripts/simulate_feedback.py data=demo --out logs/feedback/demo_sim.sqlite --policy uniform":
        ("slow", "the demo's features first (extracted when missing)", []),
    "python train.py data=feedback data.path=logs/feedback/demo_sim.sqlite data.benchmark=data/demo router=offpolicy "
    "logger=none": ("slow", "learns from the simulated log above", []),
    "python train.py data=feedback data.path=logs/feedback/demo_sim.sqlite router=offpolicy logger=none":
        ("slow", "learns from the simulated log above", []),
    "python train.py router=vlrb_cal logger=none": ("slow", "a vlrb_cal fit: the logging router below", []),
    "python scripts/simulate_feedback.py data=demo --out logs/feedback/demo_eps.sqlite --policy epsilon --epsilon 0.2 "
    "--router-dir logs/train/runs/<time>/router": ("slow", "routes the demo's train rows with the router above", []),
    "python train.py data=feedback data.path=logs/feedback/demo_eps.sqlite data.benchmark=data/demo router=offpolicy "
    "logger=none": ("slow", "learns from the ε-greedy log above", []),
    "python scripts/simulate_feedback.py data=demo_full --out logs/feedback/demo_full_sim.sqlite --policy uniform":
        ("slow", "the paper's scale (its features first)", [TINY_DEMO_FULL]),
    "python train.py data=feedback data.path=logs/feedback/demo_full_sim.sqlite data.benchmark=data/demo_full "
    "router=offpolicy logger=none": ("slow", "learns from the full-scale log above", []),
    "python train.py router=vlrb_cal ood=lomo ood.model=Qianfan-VL-8B":
        ("slow", "two vlrb_cal fits, 13 onboardings", []),
    "python build_data.py 'data.exclude_models=[Qianfan-VL-8B]' data.root=data/demo_16 stage=all":
        ("slow", "a 16-model demo and its features", []),
    "python train.py router=vlrb_cal data.root=data/demo_16": ("slow", "a vlrb_cal fit", []),
    "python onboard.py router_dir=logs/train/runs/<time>/router model=Qianfan-VL-8B n_labelled=100":
        ("slow", "the 16-model router above, and the demo's features", []),
    "python train.py router=vlrb_cal 'outage=[Qwen2.5-VL-72B-Instruct]'": ("slow", "a vlrb_cal fit", []),
    "python scripts/onboarding_table.py data=demo_full --models Qwen2.5-VL-72B-Instruct,Qianfan-VL-8B,GeminiFlash2-5,"
    "InternVL2_5-78B": ("slow", "10 vlrb_cal fits at the paper's scale", [TINY_DEMO_FULL]),
    "python scripts/onboarding_table.py --models Qwen2.5-VL-72B-Instruct,Qianfan-VL-8B,GeminiFlash2-5,InternVL2_5-78B":
        ("slow", "10 vlrb_cal fits and 104 onboardings", []),
    "python scripts/onboarding_table.py data=mathv data.dir=/path/to/MATH-V pricing=mathv --models Gemini-Pro,"
    "InternLM-XComposer2-VL,Qwen-VL-Max": ("shared", "8 fits on MATH-Vision items", []),
    "python scripts/bandit_replay.py --out docs/img/bandit_regret_demo.png":
        ("slow", "six routers over 1,119 requests, refitted every 50 (about a minute)", []),
    "python scripts/bandit_replay.py data=demo_full --every 500 --max-steps 8000 --out "
    "docs/img/bandit_regret_demo_full.png": ("slow", "8,000 requests at the paper's scale", [TINY_DEMO_FULL]),
}


def _tier_key(st: Statement) -> str:
    return st.text.splitlines()[0] if st.kind == "cat" else st.text


def tier(st: Statement) -> tuple[str, str, list[str]]:
    return TIERS.get(_tier_key(st), ("fast", "", []))


def test_every_tier_entry_names_a_readme_command():
    written = {_tier_key(st) for st in STATEMENTS}
    stale = [k for k in TIERS if k not in written]
    assert not stale, f"TIERS entries that are not README commands any more: {stale}"
    assert {st.kind for st in STATEMENTS} <= set(KINDS), "a README statement of a kind this test cannot run"


# ------------------------------------------------------------------------------------------ the sandbox
class Sandbox:
    """A project folder of links to the checkout; data/ and logs/ of its own; one server at a time."""

    def __init__(self, root: Path):
        self.root = root
        for name in ("train.py", "build_data.py", "evaluate.py", "serve.py", "calibrate.py", "onboard.py", "conf",
                     "scripts",
                     "Makefile", "pyproject.toml"):
            (root / name).symlink_to(REPO / name)
        (root / ".venv").symlink_to(Path(sys.prefix))  # the environment this suite runs in
        bin_dir = str(Path(sys.executable).parent)
        self.env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
        self.env.update(PROJECT_ROOT=str(root), WANDB_MODE="offline", HF_HUB_OFFLINE="1", MPLBACKEND="Agg",
                        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", VENV=str(Path(sys.prefix)))
        self.server: subprocess.Popen | None = None
        self.url = ""

    # -- placeholders
    def newest(self, pattern: str, need: str | None = None) -> Path:
        found = [p for p in self.root.glob(pattern) if p.is_dir() and (need is None or (p / need).exists())]
        assert found, f"nothing matches {pattern} (with {need}) yet: an earlier README command should have made it"
        return max(found, key=lambda p: p.stat().st_mtime)

    def resolve(self, text: str, previous: str) -> str:
        if "<mlp job>" in text:
            sweep = self.newest("logs/results/multiruns/*")
            job = next(p for p in sorted(sweep.iterdir()) if "router-mlp" in p.name)
            text = text.replace("logs/results/multiruns/<time>/<mlp job>", str(job.relative_to(self.root)))
        for m in re.findall(r"logs/(\w+)/(runs|multiruns)/<time>", text):
            need = "router" if m[1] == "runs" else None
            found = self.newest(f"logs/{m[0]}/{m[1]}/*", need)
            text = text.replace(f"logs/{m[0]}/{m[1]}/<time>", str(found.relative_to(self.root)))
        if "router_dir=..." in text:
            text = text.replace("router_dir=...", f"router_dir={self.newest('logs/train/runs/*', 'router')}/router")
        if " ... " in text and previous:  # the arguments of the command above
            head = " ".join(a for a in shlex.split(previous)[2:] if a.startswith("data.") and "=" in a)
            text = text.replace(" ... ", f" {head} ")
        for placeholder, make in PLACEHOLDERS.items():
            if placeholder in text:
                text = text.replace(placeholder, make(self))
        text = text.replace("port=8000", "port=0")
        if self.url:
            text = text.replace("http://127.0.0.1:8000", self.url)
        return text

    # -- running
    def run(self, text: str, timeout: int) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", text], cwd=self.root, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def start_server(self, text: str) -> str:
        self.stop_server()
        log = self.root / f"serve-{time.monotonic_ns()}.out"
        self.server = subprocess.Popen(["bash", "-c", f"exec {text}"], cwd=self.root, env=self.env,
                                       stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline:
            out = log.read_text(errors="replace")
            m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", out)
            if m:
                self.url = m.group(1)
                return out
            if self.server.poll() is not None:
                break
            time.sleep(0.2)
        self.stop_server()
        raise AssertionError(f"{text}\ndid not start a server:\n{log.read_text(errors='replace')[-3000:]}")

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(20)
            except subprocess.TimeoutExpired:
                self.server.kill()
        self.server, self.url = None, ""


def _my_prices(sb: Sandbox) -> str:
    shutil.copy(REPO / "conf" / "pricing" / "vlrb_2025.yaml", sb.root / "my_prices.yaml")
    return "my_prices.yaml"


def _my_runs(sb: Sandbox) -> str:
    """A user's records table: 3 datasets x 40 samples x 3 models, with prompts and costs."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = [{"sample_id": f"{ds}/{i}", "dataset": ds, "model_id": m, "correct": int(rng.random() < 0.3 + 0.2 * j),
             "prompt": f"a {ds} question {i}", "cost": 1e-5 * (j + 1) ** 2}
            for ds in ("charts", "docs", "maths") for i in range(40) for j, m in enumerate(("small", "mid", "large"))]
    pd.DataFrame(rows).to_parquet(sb.root / "my_runs.parquet")
    return "my_runs.parquet"


def _result_folder(sb: Sandbox) -> str:
    """A result folder (data/test.jsonl + outputs/<model>.jsonl) for models of the price table."""
    import numpy as np

    from PIL import Image

    folder = sb.root / "my_results"
    for sub in ("data", "outputs", "images"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    items = [{"id": str(i), "question": f"What is {i} + {i}?", "options": [], "image": f"images/{i}.png"}
             for i in range(60)]
    for i in range(60):
        Image.new("RGB", (12, 12), (4 * i, 100, 200)).save(folder / "images" / f"{i}.png")
    (folder / "data" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    for j, model in enumerate(("GPT4o", "SmolVLM2", "Phi-3.5-Vision")):
        rows = [{"id": it["id"], "correct": bool(rng.random() < 0.3 + 0.2 * j), "response": "It is 2."} for it in items]
        (folder / "outputs" / f"{model}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder)


def _mathv_clone(sb: Sandbox) -> str:
    """200 real MATH-Vision items with their images and every configuration's results: a small clone of MATH-V."""
    if SHARED is None:
        pytest.skip("a MATH-Vision clone stands in from ../shared/realdata/mathv_full, which is not beside the checkout")
    src, dst = SHARED / "realdata" / "mathv_full", sb.root / "MATH-V"
    if dst.exists():
        return str(dst)
    items = [json.loads(line) for line in (src / "data" / "test.jsonl").read_text().splitlines()[:200]]
    ids = {str(it["id"]) for it in items}
    (dst / "data").mkdir(parents=True)
    (dst / "data" / "test.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    (dst / "images").mkdir()
    for it in items:
        shutil.copy(src / it["image"], dst / it["image"])
    for f in (src / "outputs").rglob("*.jsonl"):
        rows = [line for line in f.read_text().splitlines() if str(json.loads(line)["id"]) in ids]
        (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
        (dst / f.relative_to(src)).write_text("\n".join(rows) + "\n")
    return str(dst)


PLACEHOLDERS = {
    "/path/to/vlmeval_work_dir": lambda sb: "data/demo_raw/vlmeval",  # the demo's generated VLMEvalKit work dir
    "/path/to/LMUData": lambda sb: "data/demo_raw/LMUData",
    "my_prices.yaml": _my_prices,
    "my_runs.parquet": _my_runs,
    "/path/to/folder": _result_folder,
    "/path/to/MATH-V": _mathv_clone,
}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    sb = Sandbox(tmp_path_factory.mktemp("readme"))
    yield sb
    sb.stop_server()


def _params():
    out = []
    for n, st in enumerate(STATEMENTS):
        t, why, _ = tier(st)
        marks = [pytest.mark.slow] if t in ("slow", "shared") else []
        out.append(pytest.param(n, st, id=f"{n:02d} {st.id}", marks=marks))
    return out


@pytest.mark.parametrize("n,st", _params())
def test_readme_command(n, st, sandbox):
    t, why, extra = tier(st)
    previous = STATEMENTS[n - 1].text if n else ""
    text = sandbox.resolve(st.text, previous)
    if extra:
        text += " " + " ".join(shlex.quote(a) for a in extra)
    if t == "dry" and st.kind == "make":
        text = text.replace("make ", "make -n ", 1)
    elif t == "dry":  # Hydra composes the job (its launcher included) and prints it: the first job of a sweep
        text = " ".join(w.split("=")[0] + "=" + w.split("=", 1)[1].split(",")[0] if "=" in w else w
                        for w in text.split() if w != "-m")
    elif st.kind == "make":  # make installs first when the environment is older than pyproject.toml: not here
        stamp = Path(sys.prefix) / ".installed"
        if not stamp.exists() or stamp.stat().st_mtime < (REPO / "pyproject.toml").stat().st_mtime:
            pytest.skip(f"`{text}` would (re)install {sys.prefix}: this suite runs outside a `make install` env")
    if st.kind == "export":
        key, value = text.split(None, 1)[1].split("=", 1)
        sandbox.env[key] = value
        return
    if st.kind == "source":
        assert (sandbox.root / text.split()[1]).exists(), text
        return
    if st.kind == "python" and text.split()[1] == "serve.py":
        out = sandbox.start_server(text)
        import httpx

        health = httpx.get(f"{sandbox.url}/health", timeout=30).json()
        assert health.get("status") == "ok" and health.get("models"), (health, out[-2000:])
        return
    if st.kind == "curl":
        assert sandbox.url, "a curl line needs the server a README command above it starts"
    p = sandbox.run(text, timeout=1500 if t in ("slow", "shared") else 600)
    out = p.stdout + p.stderr
    assert p.returncode == 0, f"{text}\n(exit {p.returncode})\n{out[-4000:]}"
    assert "Traceback" not in out, f"{text}\n{out[-4000:]}"
    check_outcome(st, text, out, sandbox)


# what Lightning, W&B and torch printed on every job before the console was quietened (issue 22)
NOISE = ("litlogger", "TPU available", "The anonymous setting", "log_every_n_steps", "LeafSpec", "Loading weights")


def check_outcome(st: Statement, text: str, out: str, sb: Sandbox) -> None:
    """What the command promises beyond exit status 0."""
    words = shlex.split(text)
    noise = [n for n in NOISE if n in out]
    assert not noise, f"{text}: the console shows what nobody asked for: {noise}\n{out[-3000:]}"
    if st.kind == "python" and out.count("note: failed predictions") > 1:
        pytest.fail(f"{text}: the failed-predictions note more than once per process\n{out[-3000:]}")
    if text == "make demo":  # the commands it prints as next steps run as printed
        hints = re.findall(r"^  (python .+?)\s+#", out.split("\nnext (", 1)[-1], re.M)
        assert len(hints) == 3, out[-2000:]
        for hint in hints:
            q = sb.run(hint, timeout=1500)
            assert q.returncode == 0, f"{hint}\n{(q.stdout + q.stderr)[-3000:]}"
    if st.kind == "curl":
        body = json.loads(out)
        assert "choices" in body or "model" in body, out[-1000:]
    if words[:2] != ["python", "train.py"] or "--cfg" in words:
        return
    if re.search(r"sweep .*: \d+ of \d+ jobs finished", out):  # a multirun: its table and what to run next
        assert "next: python evaluate.py runs=" in out, out[-2000:]
        return
    run = Path(re.findall(r"run dir: (.+)", out)[-1].strip())
    metrics = json.loads((run / "metrics.json").read_text())
    if "data=feedback" in words and not any(w.startswith("data.benchmark=") for w in words):
        assert 0 <= metrics["feedback/policy_ips"] and "test/rank_score" not in metrics  # the log's own estimates
        return
    assert 0 <= metrics["test/rank_score"] <= 1
    if "logger=none" not in words and not any(w.startswith("debug=") for w in words):
        offline = list(run.glob("wandb/offline-run-*/run-*.wandb"))  # the folder `wandb sync` uploads
        assert offline, f"no offline W&B run in {run}"
        assert "wandb sync" in out
