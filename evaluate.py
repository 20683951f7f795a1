"""Score the training-free baselines and any finished train runs on the test split.

    python evaluate.py                                  # the demo benchmark, all five baselines
    python evaluate.py runs=logs/train/multiruns/<time> # + every run of a sweep (λ chosen on val)
    python evaluate.py data=vlrb fit_on=test            # upstream parity: baselines fitted on test

Writes leaderboard.{csv,md,json}, per_dataset.{csv,md}, single_models.csv, pareto.png, metrics.json and
predictions.parquet into the Hydra run directory (logs/evaluate/runs/<time>/).
"""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from vlrb.eval.report import evaluate_from_config
    from vlrb.io import UnsafeTargetError

    try:
        res = evaluate_from_config(cfg, conf_dir=ROOT / "conf")
    except (FileNotFoundError, UnsafeTargetError) as e:  # no benchmark / no runs dir: say what to do, without a traceback
        raise SystemExit(f"error: {e}") from None
    real = res.leaderboard[res.leaderboard["router"] != "oracle"]
    return float(real["rank_score"].max()) if len(real) else float("nan")  # objective for sweepers


if __name__ == "__main__":
    main()
