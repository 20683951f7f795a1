"""Score the training-free baselines and any finished train runs on the test split.

    python evaluate.py                                  # the demo benchmark, all five baselines
    python evaluate.py runs=logs/train/multiruns/<time> # + every run of a sweep (λ chosen on val)
    python evaluate.py data=vlrb fit_on=test            # upstream parity: baselines fitted on test

Writes leaderboard.{csv,md,json}, per_dataset.{csv,md}, single_models.csv, pareto.png, metrics.json and
predictions.parquet into the Hydra run directory (logs/evaluate/runs/<time>/).
"""
import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from vlrb.jobs import evaluate

    return evaluate.main(cfg)


if __name__ == "__main__":
    main()
