"""Score the training-free baselines and any finished train runs on the test split.

    python evaluate.py                                  # the demo benchmark, all five baselines
    python evaluate.py runs=logs/train/multiruns/<time> # + every run of a sweep (λ chosen on val)
    python evaluate.py data=vlrb fit_on=test            # upstream parity: baselines fitted on test

Writes leaderboard.{csv,md,json}, per_dataset.{csv,md}, single_models.csv, pareto.png, metrics.json and
predictions.parquet into the Hydra run directory (logs/evaluate/runs/<time>/).
"""
from vlrb.jobs.entry import launch

if __name__ == "__main__":
    launch("evaluate", __file__)
