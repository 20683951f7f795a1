"""Routing core shared by every router: the accuracy–cost labels and the metrics (docs/method.md)."""
from vlrb.routing.metrics import (
    bootstrap_ci,
    bootstrap_indices,
    bootstrap_weights,
    measure_throughput,
    paired_bootstrap,
    per_dataset_metrics,
    rank_score,
    route_metrics,
    router_throughput,
    take_rows,
    validate_choices,
)
from vlrb.routing.soft_labels import hard_labels, label_diagnostics, parse_lambda, soft_labels

__all__ = [
    "bootstrap_ci", "bootstrap_indices", "bootstrap_weights", "hard_labels", "label_diagnostics", "measure_throughput",
    "paired_bootstrap", "parse_lambda", "per_dataset_metrics", "rank_score", "route_metrics",
    "router_throughput", "soft_labels", "take_rows", "validate_choices",
]
