"""From a feedback log to what a router learns from: `Feedback` rows (partial labels with their propensities), and
the log's own off-policy estimate of a policy when no labelled benchmark is there to score it on."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vlrb.feedback.store import FeedbackError, FeedbackLog, read_log
from vlrb.routing.offpolicy import Feedback, dr_value, ips_value, snips_value


def feedback_rows(log: FeedbackLog, where: str | Path = "the feedback log") -> Feedback:
    """The log's decisions with feedback as `Feedback` rows (features, dataset hints, chosen model, propensity,
    reward, cost); a FeedbackError when the log carries no features (the logging router read none)."""
    if log.X is None:
        raise FeedbackError(f"{where}: its decisions carry no features (the logging router read none, or some rows "
                            "lack them): a feature router cannot learn from it")
    n = len(log)
    est = log.costs if log.costs.shape == (n, len(log.models)) else None
    return Feedback(idx=np.arange(n), models=list(log.models), X=log.X, sample_ids=np.asarray(log.ids, object),
                    datasets=np.asarray(log.datasets, object), chosen=log.chosen, propensity=log.propensity,
                    reward=log.reward, cost=log.cost, est_costs=est, name="feedback")


def load_feedback(path: str | Path) -> tuple[Feedback, dict]:
    """(the rows of the log at `path`, its meta table)."""
    log = read_log(path)
    return feedback_rows(log, path), dict(log.meta)


def policy_value(choices: np.ndarray, rows: Feedback, r_hat: np.ndarray | None = None,
                 clip: float | None = 0.01) -> dict[str, float]:
    """The off-policy value of deterministic `choices` on logged `rows`: IPS, SNIPS and (with a direct model r̂,
    e.g. a router's cross-fitted `oof_reward`) DR, beside the logging policy's own mean reward and cost, and the
    share of rows where the two policies agree (few: every estimate is uncertain)."""
    K = len(rows.models)
    onehot = np.eye(K)[np.asarray(choices, np.int64)]
    out = {"ips": ips_value(onehot, rows.chosen, rows.propensity, rows.reward, clip=clip),
           "snips": snips_value(onehot, rows.chosen, rows.propensity, rows.reward, clip=clip),
           "logged_reward": float(rows.reward.mean()), "logged_cost": float(rows.cost.mean()),
           "agreement": float((np.asarray(choices) == rows.chosen).mean())}
    if r_hat is not None:
        out["dr"] = dr_value(onehot, r_hat, rows.chosen, rows.propensity, rows.reward, clip=clip)
    return out
