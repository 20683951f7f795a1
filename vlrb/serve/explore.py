"""Exploration while serving (feedback.explore): now and then a model other than the budget rule's choice, so the
feedback log holds outcomes of every model, each with the exact probability it had of being picked (its propensity;
off-policy learning divides by it).

    none            the rule's choice, propensity 1 (policy "greedy")
    epsilon_greedy  with probability ε a uniform pick among the request's candidate pool, else the rule's choice:
                    P(the rule's choice) = (1 − ε) + ε/|pool|, P(any other candidate) = ε/|pool|

The fallback order after an explored pick is the rest of the pool by the rule's value. The generator is seeded
(feedback.explore.seed; null: from the OS) and used from the event loop's thread only.
"""
from __future__ import annotations

import numpy as np


class Explorer:
    def __init__(self, policy: str = "none", epsilon: float = 0.0, seed: int | None = None):
        if policy not in ("none", "epsilon_greedy"):
            raise ValueError(f"feedback.explore.policy must be none or epsilon_greedy, got {policy!r}")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"feedback.explore.epsilon must be in [0, 1], got {epsilon!r}")
        self.policy, self.epsilon = policy, float(epsilon)
        self.rng = np.random.default_rng(seed)

    @property
    def name(self) -> str:
        """The policy's name in the feedback log (vlrb.feedback.store.POLICIES)."""
        return "epsilon_greedy" if self.policy == "epsilon_greedy" else "greedy"

    def pick(self, order: list[str]) -> tuple[list[str], float]:
        """(the order to try: the pick first, then the rest by the rule's value; the pick's propensity), from the
        rule's `order` (the candidate pool, best first)."""
        if self.policy == "none" or not order:
            return order, 1.0
        n, eps = len(order), self.epsilon
        j = int(self.rng.integers(n)) if self.rng.random() < eps else 0
        propensity = (1.0 - eps) + eps / n if j == 0 else eps / n
        return [order[j], *order[:j], *order[j + 1:]], propensity
