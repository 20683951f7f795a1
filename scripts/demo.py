"""`make demo`: the main job end to end on the demo benchmark, as a user would type it.

build the demo benchmark -> extract the default features -> train the feature routers (a λ or two each)
-> evaluate.py over those runs: leaderboard + Pareto plot.
"""
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
STAMP = time.strftime("%Y-%m-%d_%H-%M-%S")
RUNS = ROOT / "logs" / "demo" / STAMP


def step(title: str, *args: str) -> None:
    print(f"\n=== {title}\n$ python {' '.join(args)}", flush=True)
    t = time.perf_counter()
    subprocess.run([PY, *args], cwd=ROOT, check=True)
    print(f"--- {title}: {time.perf_counter() - t:.0f} s", flush=True)


def main() -> None:
    step("build the demo benchmark", "build_data.py")
    step("extract features (MiniLM + EfficientNet-Lite0, cached)", "build_data.py", "stage=features")
    step("train the training-free-style feature routers", "train.py", "-m", "router=knn,prknn,ovr,kmeans",
         "logger=csv", f"hydra.sweep.dir={RUNS}/feature", "scoring.throughput.runs=10")
    step("train Linear and MLP at two λ each", "train.py", "-m", "router=linear,mlp", "lambda=100,10000",
         "logger=csv", f"hydra.sweep.dir={RUNS}/network", "scoring.throughput.runs=10")
    step("leaderboard and Pareto plot", "evaluate.py", f"runs={RUNS}", f"hydra.run.dir={RUNS}/evaluate")
    print(f"\nleaderboard: {RUNS / 'evaluate' / 'leaderboard.md'}\nPareto plot: {RUNS / 'evaluate' / 'pareto.png'}")


if __name__ == "__main__":
    main()
