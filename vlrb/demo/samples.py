"""What a demo dataset is made of: its samples (TSV rows, latents, gold answers) and the plan that holds them with
the latent correctness and failed-call draws of every model. Planners (vlrb.demo.plan) fill it, the latent world
(vlrb.demo.world) scores it, renderers (vlrb.demo.render) and writers (vlrb.demo.writers) turn it into files."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Sample:
    index: int | str  # the TSV `index`
    sid: str  # the part of the sample id after "<DATASET>/"
    kind: int  # index into KINDS
    difficulty: float  # in [0, 1]
    topic: str
    row: dict[str, Any]  # TSV columns other than index and image
    gold: dict[str, Any]  # what rendering needs (answer letters, gold lists, ...)
    image_ref: int | str | None = None  # index of the row whose image this row reuses
    offset: float = 0.0  # extra per-sample logit offset (MathVerse problem versions)
    guess: float = 0.0  # chance of a lucky guess (1 / number of options)


@dataclass
class DatasetPlan:
    key: str
    columns: list[str]  # TSV columns without index and image, in order
    samples: list[Sample]
    correct: np.ndarray | None = None  # (N, M) latent correctness
    failed: np.ndarray | None = None  # (N, M) failed API calls
    seed: int = 0  # the generation's seed (the mistake streams of vlrb.demo.mistakes are seeded with it)

    @property
    def kind_idx(self) -> np.ndarray:
        return np.array([s.kind for s in self.samples], dtype=np.int64)

    @property
    def difficulty(self) -> np.ndarray:
        return np.array([s.difficulty for s in self.samples])

    @property
    def offset(self) -> np.ndarray:
        return np.array([s.offset for s in self.samples])

    @property
    def guess(self) -> np.ndarray:
        return np.array([s.guess for s in self.samples])

    def sample_ids(self) -> list[str]:
        return [f"{self.key}/{s.sid}" for s in self.samples]
