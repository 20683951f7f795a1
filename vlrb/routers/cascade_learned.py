"""Learned cascades (docs/routers.md#cascades): the stop score is a calibrated probability that the answer just seen
is right, from vlrb_cal's correctness predictor (features -> P(model k is right)), the answer's form and its
agreement with the answers before it.

    cascade_chain    FrugalGPT-style (Chen et al., 2023): a fixed chain m1 > m2 [> m3]; after call t a calibrator
                     (logistic regression on [logit p̂_m(x), well-formed, agrees with an earlier answer]) gives
                     P(this answer is right); stop when it reaches the step's threshold τ_t.
    cascade_verify   router-then-verify: vlrb_cal picks the first model per request; escalate when P(the first
                     answer is right | p̂, well-formed) is below τ, to one fallback model or to vlrb_cal's second
                     choice for the request (whichever replays best on train).

Fitting reads the training rows only: p̂ out of fold (vlrb_cal's internal cross-validation), the calibrators on
those, then every chain (every fallback) and every threshold replayed exactly (a threshold between two sorted
stop scores), the best by the cascade objective (vlrb.routers.cascade). `dev` is not read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vlrb.data.benchmark import Requests, Split
from vlrb.routers.calibrated import CalibratedRouter
from vlrb.data.answers import answer_table
from vlrb.routers.cascade import STOP, Cascade, _fit_info

CORRECTNESS_DIR = "correctness"  # the inner vlrb_cal's folder inside a saved cascade
SECOND_CHOICE = -1  # cascade_verify's fallback: the router's next-ranked model for each request
NEVER, ALWAYS = 2.0, -1.0  # thresholds beyond every stop score (a probability): finite, so they save as numbers


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def _fit_calibrator(F: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[coef..., intercept] of an L2 logistic regression of y on the stop features F (a constant y: its rate)."""
    if len(np.unique(y)) < 2:
        rate = float(np.clip(np.mean(y) if len(y) else 0.5, 1e-4, 1 - 1e-4))
        return np.r_[np.zeros(F.shape[1]), np.log(rate / (1 - rate))]
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1.0, max_iter=200).fit(F, y)
    return np.r_[lr.coef_[0], lr.intercept_[0]]


def _calibrated(theta: np.ndarray, F: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(F @ theta[:-1] + theta[-1])))


def _best_cut(s: np.ndarray, y_stop: np.ndarray, y_go: np.ndarray, c_go: np.ndarray, base_acc: float,
              base_cost: float, n: int, score) -> tuple[float, float, float, float]:
    """Every threshold on the stop scores `s` of the rows that may escalate, replayed at once: stopping the r rows
    with the highest scores keeps their answers (y_stop), the rest pay c_go and get y_go. (objective, τ, accuracy,
    cost) of the best; `base_*` are the sums over the other rows."""
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    cy_stop = np.r_[0.0, np.cumsum(y_stop[order])]
    cy_go, cc_go = np.r_[0.0, np.cumsum(y_go[order])], np.r_[0.0, np.cumsum(c_go[order])]
    acc = (base_acc + cy_stop + (cy_go[-1] - cy_go)) / n
    cost = (base_cost + (cc_go[-1] - cc_go)) / n
    cuts = np.r_[True, s_sorted[:-1] > s_sorted[1:], True] if len(s) else np.array([True])  # not inside a tie
    obj = np.where(cuts, score(acc, cost), -np.inf)
    r = int(np.argmax(obj))
    if r == 0:
        tau = NEVER  # never stop (at μ = 0)
    elif r == len(s):
        tau = ALWAYS  # always stop
    else:
        tau = float((s_sorted[r - 1] + s_sorted[r]) / 2)
    return float(obj[r]), tau, float(acc[r]), float(cost[r])


class _Learned(Cascade):
    inputs = ("features", "answers")

    def __init__(self, max_calls: int = 2, n_components: int = 64, folds: int = 5, **kw):
        super().__init__(max_calls=max_calls, **kw)
        self.n_components, self.folds = int(n_components), int(folds)
        self.correctness: CalibratedRouter | None = None

    def _fit_correctness(self, train: Split) -> np.ndarray:
        """Fit the correctness predictor; (n, K) its out-of-fold P(right) on the training rows."""
        self.correctness = CalibratedRouter(n_components=self.n_components, folds=self.folds, seed=self.seed,
                                            bootstrap=200, beta=self.beta).fit(train)
        return self.correctness.oof_correctness

    def _p(self, rows: Requests) -> np.ndarray:
        return self.correctness.predict_correctness(rows)

    def threshold(self, t: int) -> float:
        return float(self.thresholds_[t - 1]) if t <= len(self.thresholds_) else ALWAYS  # the chain's last call

    def save(self, path: Path) -> None:
        super().save(path)
        self.correctness.save(Path(path) / CORRECTNESS_DIR)

    @classmethod
    def load(cls, path: Path) -> "_Learned":
        router = super().load(path)
        router.correctness = CalibratedRouter.load(Path(path) / CORRECTNESS_DIR)
        return router


def _stop_features(p: np.ndarray, valid: np.ndarray, agree: np.ndarray) -> np.ndarray:
    return np.stack([_logit(p), valid.astype(np.float64), agree.astype(np.float64)], 1)


class ChainCascade(_Learned):
    """A fixed chain with a learned stop rule per step (FrugalGPT-style)."""

    name = "cascade_chain"

    def fit(self, train: Split, dev: Split | None = None) -> "ChainCascade":
        self._start_fit(train)
        if not 2 <= self.max_calls <= 3:
            raise ValueError(f"{self.label}: max_calls must be 2 or 3, got {self.max_calls}")
        P = self._fit_correctness(train)
        V, keys = self._valid_keys(train)
        Y, C = train.Y.astype(np.float64), train.C.astype(np.float64)
        n, k = Y.shape
        bounds = self._bounds(train)
        score = lambda acc, cost: self._score(acc, cost, bounds)  # noqa: E731
        no_agree = np.zeros(n, bool)
        theta1 = [_fit_calibrator(_stop_features(P[:, a], V[:, a], no_agree), Y[:, a]) for a in range(k)]
        best = (-np.inf,)
        for a in range(k):
            s = _calibrated(theta1[a], _stop_features(P[:, a], V[:, a], no_agree))
            for b in range(k):
                if b != a:
                    cut = _best_cut(s, Y[:, a], Y[:, b], C[:, b], 0.0, C[:, a].sum(), n, score)
                    if cut[0] > best[0]:
                        best = (*cut, (a, b), s)
        obj, tau1, acc, cost, chain, s1 = best
        thresholds, thetas = [tau1], [theta1[chain[0]]]
        if self.max_calls == 3:  # greedy: a third call for the rows that escalated past the best two-step chain
            a, b = chain
            go = ~(s1 >= tau1)
            agree = (keys[:, a] == keys[:, b]) & (keys[:, b] >= 0)
            theta2 = _fit_calibrator(_stop_features(P[:, b], V[:, b], agree), Y[:, b])
            s2 = _calibrated(theta2, _stop_features(P[:, b], V[:, b], agree))[go]
            base_acc = Y[~go, a].sum()
            base_cost = C[:, a].sum() + C[go, b].sum()
            third = None
            for c in (j for j in range(k) if j not in chain):
                cut = _best_cut(s2, Y[go, b], Y[go, c], C[go, c], base_acc, base_cost, n, score)
                if cut[0] > obj + 1e-12:
                    obj, tau2, acc, cost = cut
                    third = c
            if third is not None:
                chain, thresholds, thetas = (a, b, third), [tau1, tau2], [theta1[a], theta2]
        self.chain_ = np.asarray(chain, np.int64)
        self.thresholds_ = np.asarray(thresholds, np.float64)
        self.calibrators_ = np.stack(thetas)
        self.fit_info = {**_fit_info(chain, acc, cost, obj, n), "thresholds": [float(t) for t in thresholds]}
        return self

    def stop_score(self, rows: Requests, order: np.ndarray, answers: np.ndarray) -> np.ndarray:
        t = order.shape[1]
        if t > len(self.calibrators_):  # the chain's last call: nothing after it
            return np.ones(len(rows))
        m = self.chain_[t - 1]
        valid, keys = answer_table(answers, rows.answer_format, rows.n_options)
        agree = ((keys[:, :-1] == keys[:, -1:]) & (keys[:, -1:] >= 0)).any(1) if t > 1 else np.zeros(len(rows), bool)
        return _calibrated(self.calibrators_[t - 1], _stop_features(self._p(rows)[:, m], valid[:, -1], agree))


class VerifyCascade(_Learned):
    """Router-then-verify: vlrb_cal's choice first; one fallback model when its answer looks wrong."""

    name = "cascade_verify"

    def fit(self, train: Split, dev: Split | None = None) -> "VerifyCascade":
        self._start_fit(train)
        if self.max_calls != 2:
            raise ValueError(f"{self.label}: the router's pick, then maybe the fallback: max_calls must be 2, "
                             f"got {self.max_calls}")
        P = self._fit_correctness(train)
        V, _ = self._valid_keys(train)
        Y, C = train.Y.astype(np.float64), train.C.astype(np.float64)
        n, k = Y.shape
        rows = np.arange(n)
        first = self._choose_first(P, train)  # the router's out-of-fold picks
        F = _stop_features(P[rows, first], V[rows, first], np.zeros(n, bool))
        self.calibrators_ = _fit_calibrator(F, Y[rows, first])[None, :]
        s = _calibrated(self.calibrators_[0], F)
        bounds = self._bounds(train)
        score = lambda acc, cost: self._score(acc, cost, bounds)  # noqa: E731
        y_first, c_first = Y[rows, first], C[rows, first]
        second = self._second_choice(P, train, first)
        best = (-np.inf,)
        for g in range(-1, k):  # one fixed fallback model, or (-1) the router's second choice per request
            go_to = second if g == SECOND_CHOICE else np.full(n, g)
            may = first != go_to  # a request whose pick is the fallback itself stops
            cut = _best_cut(s[may], y_first[may], Y[rows, go_to][may], C[rows, go_to][may], y_first[~may].sum(),
                            c_first.sum(), n, score)
            if cut[0] > best[0]:
                best = (*cut, g)
        obj, tau, acc, cost, g = best
        self.fallback_model_, self.thresholds_ = int(g), np.asarray([tau], np.float64)
        self.fit_info = {**_fit_info([-1, g], acc, cost, obj, n), "threshold": float(tau),
                         "fallback": "second choice" if g == SECOND_CHOICE else self._model_name(g),
                         "first_models": {self._model_name(j): int((first == j).sum()) for j in np.unique(first)}}
        return self

    def _model_name(self, j: int) -> str:
        return self.models[j] if self.models else str(j)

    def _second_choice(self, P: np.ndarray, rows: Requests, first: np.ndarray) -> np.ndarray:
        """(n,) the model the router ranks next after each request's first pick (its own decision rule)."""
        inner = self.correctness
        scores = inner._decide(P, inner._costs(np.asarray(rows.datasets).astype(str))).astype(np.float64)
        scores[np.arange(len(P)), first] = -np.inf
        return scores.argmax(1).astype(np.int64)

    def _choose_first(self, P: np.ndarray, rows: Requests) -> np.ndarray:
        inner = self.correctness
        if inner.fallback_:
            return np.full(len(P), inner.single_, np.int64)
        return inner._decide(P, inner._costs(np.asarray(rows.datasets).astype(str))).argmax(1).astype(np.int64)

    def first(self, rows: Requests) -> np.ndarray:
        return self._choose_first(self._p(rows), rows)

    def following(self, rows: Requests, order: np.ndarray) -> np.ndarray:
        if self.fallback_model_ == SECOND_CHOICE:
            go_to = self._second_choice(self._p(rows), rows, order[:, 0])
        else:
            go_to = np.full(len(rows), self.fallback_model_, np.int64)
        return np.where(order[:, 0] == go_to, STOP, go_to).astype(np.int64)

    def stop_score(self, rows: Requests, order: np.ndarray, answers: np.ndarray) -> np.ndarray:
        valid, _ = answer_table(answers[:, :1], rows.answer_format, rows.n_options)
        p = self._p(rows)[np.arange(len(rows)), order[:, 0]]
        return _calibrated(self.calibrators_[0], _stop_features(p, valid[:, 0], np.zeros(len(rows), bool)))
