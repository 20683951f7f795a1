"""Cascades (docs/routers.md#cascades): routers that call models one at a time, see each answer, and stop or
escalate. Their accuracy is that of the answer they return (the last call's), their cost the sum of every call.

On a benchmark a cascade is evaluated by *replay*: the answers the models gave (kept by the build beside Y and C)
stand in for the calls, so no model is called. Served (serve.py), the same two decisions run on live answers:

    first(rows)                     -> the model each request calls first
    next_call(rows, order, answers) -> the next model of each request, or STOP (its last answer is returned)

    cascade_validity    a chain of models; accept a well-formed answer (one option letter within the item's options,
                        a number, yes/no, non-empty text), else call the next
    cascade_agreement   call two models; accept when their answers agree, else call a third

Which chain: every chain of distinct models up to `max_calls` long, replayed on the training rows, the best by
`objective`: `auto`, the rank score (β) of the replay (λ unused: a λ sweep fits it once); `lambda`, accuracy −
λ·cost_scale·cost ($ per request), the exchange rate of vlrb_cal's μ; or `match`, the least cost at the accuracy of
the best single model (the best rank score on the same rows): the same answers' quality, for less. The learned
cascades (stop scores from the features and the answers) are in vlrb/routers/cascade_learned.py.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from vlrb.data.answers import answer_table
from vlrb.data.benchmark import Requests, Split, compute_cost_bounds
from vlrb.routers.base import Router
from vlrb.routing.calls import Calls
from vlrb.routing.metrics import best_single_model, rank_score, take_rows
from vlrb.routing.soft_labels import parse_lambda

STOP = -1
OBJECTIVES = ("auto", "lambda", "match")


class Cascade(Router):
    """Base: replay (`route`) of a policy's `first` / `next_call`, and the objective chains are chosen by."""

    inputs = ("answers",)
    saves_state = True

    def __init__(self, lam: float | str = 0.0, objective: str = "auto", cost_scale: float = 100.0,
                 max_calls: int = 2, beta: float = 0.1, seed: int = 42):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if int(max_calls) < 1:
            raise ValueError(f"max_calls must be >= 1, got {max_calls}")
        self.lam, self.objective, self.cost_scale = lam, objective, float(cost_scale)
        self.mu = parse_lambda(lam) * float(cost_scale)  # $ per request -> accuracy points
        self.uses_lambda = objective == "lambda"  # auto: λ unused, so sweeps and selection=cv fit it once
        self.max_calls, self.beta, self.seed = int(max_calls), float(beta), int(seed)

    @property
    def label(self) -> str:
        """`cascade_chain (match)`: a cascade chosen by another objective is reported apart."""
        return self.name if self.objective == "auto" else f"{self.name} ({self.objective})"

    # -------------------------------------------------------------------- the policy
    def first(self, rows: Requests) -> np.ndarray:
        """(n,) the model each request calls first."""
        return np.full(len(rows), self.chain_[0], np.int64)

    def following(self, rows: Requests, order: np.ndarray) -> np.ndarray:
        """(n,) the model each request would call after the calls `order` (n, t), or STOP at the chain's end."""
        t = order.shape[1]
        return np.full(len(rows), self.chain_[t] if t < len(self.chain_) else STOP, np.int64)

    def stop_score(self, rows: Requests, order: np.ndarray, answers: np.ndarray) -> np.ndarray:
        """(n,) how sure the policy is that the last answer is right (stop when it reaches `threshold(t)`)."""
        raise NotImplementedError

    def threshold(self, t: int) -> float:
        return 0.5

    def next_call(self, rows: Requests, order: np.ndarray, answers: np.ndarray, mu: float = 0.0) -> np.ndarray:
        """(n,) the next model of each request after the calls `order` (n, t) that gave `answers` (n, t), or STOP
        (its last answer is returned). Stop when stop_score + μ·ĉ_next/ĉ_max >= threshold(t): μ = 0 is the policy
        as trained, a larger μ stops earlier (cheaper), a negative one escalates more (the server's per-request
        budget knob; ĉ the models' mean cost on the training rows)."""
        t = order.shape[1]
        nxt = self.following(rows, order) if t < self.max_calls else np.full(len(rows), STOP, np.int64)
        score = np.asarray(self.stop_score(rows, order, answers), np.float64)
        shift = 0.0
        if mu:
            cost = np.asarray(self.mean_cost_, np.float64)
            shift = float(mu) * cost[np.maximum(nxt, 0)] / max(float(cost.max()), 1e-12)
        return np.where((nxt == STOP) | (score + shift >= self.threshold(t)), STOP, nxt).astype(np.int64)

    # -------------------------------------------------------------------- replay
    def route(self, split: Split, mu: float = 0.0) -> Calls:
        """Replay on logged answers: each request's calls, in order (`mu`: the budget knob of `next_call`)."""
        self._check_inputs(split)
        n, width = len(split), self.max_calls
        order = np.full((n, width), STOP, np.int64)
        order[:, 0] = self.first(split)
        seen = np.empty((n, width), dtype=object)
        active = np.arange(n)
        for t in range(1, width):
            seen[active, t - 1] = split.answers[active, order[active, t - 1]]
            if not len(active):
                break
            nxt = np.asarray(self.next_call(take_rows(split, active), order[active, :t], seen[active, :t], mu=mu),
                             np.int64)
            go = nxt != STOP
            order[active[go], t] = nxt[go]
            active = active[go]
        return Calls(order).validate(n, self.n_models, self.label)

    def route_among(self, split: Split, allowed) -> Calls:
        if not np.asarray(allowed, dtype=bool).all():
            raise ValueError(f"{self.label}: the outage replay covers one-shot routers; a cascade's later calls depend "
                             "on the answers of the models it could call, which an outage changes")
        return self.route(split)

    def predict_scores(self, split: Requests) -> np.ndarray:
        """One-hot on the model each request calls first (a cascade decides the rest on the answers it sees)."""
        if not self.fitted:
            raise RuntimeError(f"{self.label}: call fit() before predict_scores()/route()")
        scores = np.zeros((len(split), self.n_models), np.float32)
        scores[np.arange(len(split)), self.first(split)] = 1.0
        return scores

    # -------------------------------------------------------------------- choosing
    def _score(self, acc, cost, bounds: dict) -> np.ndarray:
        """What chains are chosen by: the rank score (objective=auto), accuracy − μ·cost (objective=lambda), or the
        least cost at the best single model's accuracy on the same rows (objective=match; chains below that
        accuracy rank after every chain that reaches it, by accuracy)."""
        acc, cost = np.asarray(acc, np.float64), np.asarray(cost, np.float64)
        if self.objective == "match":
            reaches = acc >= self.match_accuracy_ - 1e-12
            cheapness = 1.0 / (1.0 + cost / max(self.match_cost_, 1e-12))  # in (0, 1], falls as cost grows
            return np.where(reaches, 2.0 + cheapness + 1e-9 * acc, acc)
        if self.objective == "auto":
            return np.asarray(rank_score(acc, cost, bounds["cmin"], bounds["cmax"], self.beta))
        if math.isinf(self.mu):  # λ = inf: the cheapest, then the most accurate
            return -cost * 1e12 + acc
        return acc - self.mu * cost

    def _start_fit(self, train: Split) -> None:
        self._remember_models(train)
        self._check_inputs(train)
        self.mean_cost_ = np.asarray(train.C, np.float64).mean(0)
        ref = best_single_model(train, self._bounds(train), self.beta)  # objective=match: its accuracy, for less
        self.match_accuracy_ = float(np.asarray(train.Y, np.float64)[:, ref].mean())
        self.match_cost_ = float(self.mean_cost_[ref])

    def _bounds(self, train: Split) -> dict:
        return compute_cost_bounds(train.C, train.models or [str(j) for j in range(train.Y.shape[1])])

    def _valid_keys(self, split: Split) -> tuple[np.ndarray, np.ndarray]:
        return answer_table(split.answers, split.answer_format, split.n_options)


def _fit_info(chain, acc, cost, score, n) -> dict:
    return {"chain": [int(j) for j in chain], "train_accuracy": float(acc), "train_avg_cost": float(cost),
            "train_objective": float(score), "n_train": int(n)}


class ValidityCascade(Cascade):
    """Accept a well-formed answer, else call the next model of the chain (the last one's answer is returned)."""

    name = "cascade_validity"

    def fit(self, train: Split, dev: Split | None = None) -> "ValidityCascade":
        self._start_fit(train)
        V, _ = self._valid_keys(train)
        Y, C = train.Y.astype(np.float64), train.C.astype(np.float64)
        k, n = Y.shape[1], len(train)
        best = (-np.inf, None, 0.0, 0.0)
        bounds = self._bounds(train)
        for length in range(1, self.max_calls + 1):
            for prefix in itertools.permutations(range(k), length - 1):
                reach, acc, cost = np.ones(n, bool), 0.0, 0.0
                for m in prefix:  # a prefix model answers where reached; a well-formed answer ends the chain
                    cost += C[reach, m].sum()
                    acc += Y[reach & V[:, m], m].sum()
                    reach = reach & ~V[:, m]
                last = np.array([j for j in range(k) if j not in prefix])  # every last model at once
                accs = (acc + Y[reach][:, last].sum(0)) / n
                costs = (cost + C[reach][:, last].sum(0)) / n
                scores = self._score(accs, costs, bounds)
                j = int(np.argmax(scores))
                if scores[j] > best[0]:
                    best = (float(scores[j]), (*prefix, int(last[j])), float(accs[j]), float(costs[j]))
        self.chain_ = np.asarray(best[1], np.int64)
        self.fit_info = _fit_info(best[1], best[2], best[3], best[0], n)
        return self

    def stop_score(self, rows: Requests, order: np.ndarray, answers: np.ndarray) -> np.ndarray:
        valid, _ = answer_table(answers[:, -1:], rows.answer_format, rows.n_options)
        return valid[:, 0].astype(np.float64)


class AgreementCascade(Cascade):
    """Call two models; accept when their answers agree (well-formed and equal after normalisation), else call a
    third and return its answer."""

    name = "cascade_agreement"

    def __init__(self, max_calls: int = 3, **kw):
        super().__init__(max_calls=max_calls, **kw)
        if self.max_calls != 3:
            raise ValueError(f"cascade_agreement calls two models, then maybe a third: max_calls must be 3, "
                             f"got {max_calls}")

    def fit(self, train: Split, dev: Split | None = None) -> "AgreementCascade":
        self._start_fit(train)
        _, K = self._valid_keys(train)
        Y, C = train.Y.astype(np.float64), train.C.astype(np.float64)
        k, n = Y.shape[1], len(train)
        bounds = self._bounds(train)
        best = (-np.inf, None, 0.0, 0.0)
        for a, b in itertools.permutations(range(k), 2):
            agree = (K[:, a] == K[:, b]) & (K[:, a] >= 0)
            last = np.array([j for j in range(k) if j not in (a, b)])
            accs = (Y[agree, b].sum() + Y[~agree][:, last].sum(0)) / n
            costs = (C[:, a].sum() + C[:, b].sum() + C[~agree][:, last].sum(0)) / n
            scores = self._score(accs, costs, bounds)
            j = int(np.argmax(scores))
            if scores[j] > best[0]:
                best = (float(scores[j]), (a, b, int(last[j])), float(accs[j]), float(costs[j]))
        self.chain_ = np.asarray(best[1], np.int64)
        self.fit_info = _fit_info(best[1], best[2], best[3], best[0], n)
        return self

    def stop_score(self, rows: Requests, order: np.ndarray, answers: np.ndarray) -> np.ndarray:
        if order.shape[1] == 1:  # one answer: nothing to agree with yet
            return np.zeros(len(rows))
        _, keys = answer_table(answers[:, :2], rows.answer_format, rows.n_options)
        return ((keys[:, 0] == keys[:, 1]) & (keys[:, 0] >= 0)).astype(np.float64)
