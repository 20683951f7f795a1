"""Evaluation: leaderboard and per-dataset tables, Pareto plots, finished-run discovery, W&B logging."""
from vlrb.eval.leaderboard import leaderboard_markdown, leaderboard_row, make_leaderboard, write_leaderboard, write_per_dataset
from vlrb.eval.pareto import pareto_front, pareto_plot
from vlrb.eval.runs import RunRecord, find_runs, read_run, rescore_choices, select_runs

__all__ = [
    "RunRecord", "find_runs", "leaderboard_markdown", "leaderboard_row", "make_leaderboard", "pareto_front",
    "pareto_plot", "read_run", "rescore_choices", "select_runs", "write_leaderboard", "write_per_dataset",
]
