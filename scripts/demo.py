"""`make demo`: the main job end to end on the demo benchmark, as a user would type it.

build the demo benchmark -> extract the default features -> train the feature routers and vlrb_cal (a λ or two
each) -> evaluate.py over those runs: leaderboard + Pareto plot -> the commands to try next.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("PROJECT_ROOT") or ROOT)  # where data/ and logs/ go (the entry points read it too)
PY = sys.executable
STAMP = time.strftime("%Y-%m-%d_%H-%M-%S")
RUNS = WORK / "logs" / "demo" / STAMP


def step(title: str, *args: str) -> None:
    print(f"\n=== {title}\n$ python {' '.join(args)}", flush=True)
    t = time.perf_counter()
    subprocess.run([PY, str(ROOT / args[0]), *args[1:]], cwd=WORK, check=True,
                   env={**os.environ, "PROJECT_ROOT": str(WORK)})
    print(f"--- {title}: {time.perf_counter() - t:.0f} s", flush=True)


def shown(path: Path) -> str:
    try:
        return str(path.relative_to(WORK))
    except ValueError:
        return str(path)


def main() -> None:
    step("build the demo benchmark", "build_data.py")
    step("extract features (MiniLM + EfficientNet-Lite0, cached)", "build_data.py", "stage=features")
    step("train the scikit-style feature routers and vlrb's own router", "train.py", "-m",
         "router=knn,prknn,ovr,kmeans,vlrb_cal", "logger=csv", f"hydra.sweep.dir={RUNS}/feature",
         "scoring.throughput.runs=10")
    step("train Linear and MLP at two λ each", "train.py", "-m", "router=linear,mlp", "lambda=100,10000",
         "logger=csv", f"hydra.sweep.dir={RUNS}/network", "scoring.throughput.runs=10")
    step("leaderboard and Pareto plot", "evaluate.py", f"runs={RUNS}", f"hydra.run.dir={RUNS}/evaluate")
    venv = Path(sys.prefix)
    activate = f"source {shown(venv)}/bin/activate" if venv != Path(sys.base_prefix) else None
    print(f"\nleaderboard: {shown(RUNS / 'evaluate' / 'leaderboard.md')}\n"
          f"Pareto plot: {shown(RUNS / 'evaluate' / 'pareto.png')}\n\n"
          "next (" + (f"in this environment: {activate}" if activate else "with this Python") + "):\n"
          "  python train.py router=mlp lambda=100                    # train one router (W&B offline: wandb sync uploads)\n"
          "  python train.py -m router=linear,mlp lambda=0,100,1000   # a λ sweep: a table of its jobs at the end\n"
          "  python evaluate.py                                       # the leaderboard of every run under logs/",
          flush=True)


if __name__ == "__main__":
    main()
