"""The demo's latent world: the 17 models, their skills and writing habits, and P(correct).

Every sample has a visual *kind* (chart, text, shapes, scene, diagram), a *difficulty* and a
*topic*, all three visible in its question text and drawn image. A model is right with probability

    guess + (1 - guess) * sigmoid(ability + skill[group, kind] + dataset offset - difficulty * sensitivity)

so the strong, expensive models are best on average, cheap models are specialists on some kinds,
a router that looks at the input beats any single model, and the Oracle is far above all of them.
The skill group of a dataset comes from its correctness family (`vlrb.demo.families.DEMO_FAMILIES`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from vlrb.data.datasets import DATASETS

if TYPE_CHECKING:
    from vlrb.demo.samples import DatasetPlan

# --------------------------------------------------------------------------- public constants

# The paper's 17 models (VLMEvalKit config keys) -> ($ per 1M input tokens, $ per 1M output tokens).
DEMO_MODELS: dict[str, tuple[float, float]] = {
    "GPT4o": (2.50, 10.00),
    "GeminiFlash2-5": (0.30, 2.40),
    "Gemma3-27B": (0.35, 0.50),
    "InternVL2_5-78B": (1.00, 1.50),
    "Janus-Pro-1B": (0.05, 0.05),
    "Janus-Pro-7B": (0.18, 0.25),
    "Kimi-VL-A3B-Thinking-2506": (0.20, 0.25),
    "MiMo-VL-7B-RL": (0.20, 0.30),
    "Phi-3.5-Vision": (0.10, 0.10),
    "Pixtral-12B": (0.25, 0.35),
    "Qianfan-VL-8B": (0.18, 0.25),
    "Qwen2.5-VL-32B-Instruct": (0.40, 0.60),
    "Qwen2.5-VL-72B-Instruct": (0.80, 1.20),
    "SmolVLM2": (0.06, 0.06),
    "deepseek_vl2": (0.35, 0.50),
    "deepseek_vl2_tiny": (0.05, 0.05),
    "llava_next_vicuna_7b": (0.20, 0.20),
}

# Per-dataset sample counts at the paper's scale (30,540 in all). Invented but plausible: every
# dataset at its VLMEvalKit nominal size except MMBench, whose ~4.9k TSV rows hold ~1.3k main
# questions plus their circular rotations; the main questions are what make the total add up.
FULL_SCALE_COUNTS: dict[str, int] = {
    "MMBench_DEV_EN_V11": 1292,
    "MMStar": 1500,
    "MMMU_DEV_VAL": 1050,
    "RealWorldQA": 765,
    "InfoVQA_VAL": 2801,
    "HallusionBench": 951,
    "MathVista_MINI": 1000,
    "MathVision_MINI": 304,
    "MathVerse_MINI": 3940,
    "AI2D_TEST": 3088,
    "ChartQA_TEST": 2500,
    "DocVQA_VAL": 5349,
    "TextVQA_VAL": 5000,
    "OCRBench": 1000,
}

RUN_FOLDER = "T20251027_Gb55f788e"  # one of VL-RouterBench's own run-folder names
FAIL_MSG = "Failed to obtain answer via API."
API_MODELS = ("GPT4o", "GeminiFlash2-5")
API_FAILURE_RATE = 0.003
JUDGE = "gpt-4o-mini"  # math judge name in file names
KINDS = ("chart", "text", "shapes", "scene", "diagram")
GROUPS = ("general", "ocr", "math")  # task groups that model skills are tied to (DemoFamily.group)
HANDWRITTEN_MATH = "Handwritten Mathematical Expression Recognition"

# --------------------------------------------------------------------------- the latent world


@dataclass(frozen=True)
class _Profile:
    """A model's latent skills and its writing habits."""

    ability: float  # general ability (logit)
    sensitivity: float  # how fast accuracy drops with difficulty
    kinds: dict[str, float] = field(default_factory=dict)  # visual-kind specialities
    groups: dict[str, float] = field(default_factory=dict)  # task-group specialities
    # per length group (mcq, yorn, short, math): (style, mean filler words)
    style: dict[str, tuple[str, float]] = field(default_factory=dict)
    letter_only: bool = True  # MCQ answers are a bare letter ("B") rather than "B. text"
    think: tuple[str, str] | None = None  # thinking tags of reasoning models


_PLAIN = ("plain", 0.0)
PROFILES: dict[str, _Profile] = {
    # strong, expensive models: best on average, few blind spots
    "GPT4o": _Profile(1.5, 0.8, {"shapes": -0.6}, {"general": 0.3, "math": -0.3},
                      {"mcq": ("lead", 8), "yorn": ("lead", 10), "short": _PLAIN,
                       "math": ("trail", 110)}, letter_only=False),
    "GeminiFlash2-5": _Profile(1.4, 0.7, {"text": -0.5}, {"math": 0.6},
                               {"mcq": ("trail", 30), "yorn": ("trail", 20), "short": ("lead", 3),
                                "math": ("trail", 170)}, letter_only=False),
    "InternVL2_5-78B": _Profile(1.4, 0.8, {"scene": -0.6}, {"ocr": 0.2},
                                {"mcq": _PLAIN, "yorn": _PLAIN, "short": _PLAIN,
                                 "math": ("trail", 60)}),
    "Qwen2.5-VL-72B-Instruct": _Profile(1.5, 0.8, {"diagram": -0.6}, {"ocr": 0.3},
                                        {"mcq": _PLAIN, "yorn": ("lead", 4), "short": _PLAIN,
                                         "math": ("trail", 90)}),
    "Qwen2.5-VL-32B-Instruct": _Profile(1.0, 0.9, {"chart": 0.3}, {"math": 0.2},
                                        {"mcq": ("lead", 6), "yorn": ("lead", 12),
                                         "short": _PLAIN, "math": ("trail", 150)},
                                        letter_only=False),
    # mid-size and small models: specialists on some visual kinds or task groups
    "Gemma3-27B": _Profile(0.2, 1.0, {"scene": 1.7}, {"general": 0.2},
                           {"mcq": ("lead", 10), "yorn": ("lead", 15), "short": ("lead", 3),
                            "math": ("trail", 130)}, letter_only=False),
    "Pixtral-12B": _Profile(0.1, 1.0, {"chart": 1.7, "diagram": 0.5}, {},
                            {"mcq": ("lead", 8), "yorn": ("lead", 8), "short": _PLAIN,
                             "math": ("trail", 100)}, letter_only=False),
    "Qianfan-VL-8B": _Profile(0.1, 1.0, {"text": 1.6}, {"ocr": 0.6},
                              {"mcq": _PLAIN, "yorn": _PLAIN, "short": _PLAIN,
                               "math": ("trail", 50)}),
    "MiMo-VL-7B-RL": _Profile(0.3, 0.9, {"shapes": 1.4}, {"math": 1.0},
                              {"mcq": ("think", 260), "yorn": ("think", 180),
                               "short": ("think", 130), "math": ("think", 560)},
                              think=("<think>", "</think>")),
    "Kimi-VL-A3B-Thinking-2506": _Profile(0.2, 0.9, {"diagram": 1.6}, {"math": 0.6},
                                          {"mcq": ("think", 300), "yorn": ("think", 200),
                                           "short": ("think", 160), "math": ("think", 620)},
                                          think=("◁think▷", "◁/think▷")),
    "deepseek_vl2": _Profile(0.0, 1.1, {"text": 0.9, "chart": 0.6}, {},
                             {"mcq": _PLAIN, "yorn": _PLAIN, "short": _PLAIN,
                              "math": ("trail", 25)}),
    "Phi-3.5-Vision": _Profile(-0.3, 1.2, {"chart": 1.5}, {},
                               {"mcq": _PLAIN, "yorn": ("lead", 6), "short": _PLAIN,
                                "math": ("trail", 50)}),
    "llava_next_vicuna_7b": _Profile(-0.7, 1.2, {"scene": 1.0}, {},
                                     {"mcq": ("lead", 10), "yorn": ("lead", 12), "short": _PLAIN,
                                      "math": ("trail", 60)}, letter_only=False),
    "Janus-Pro-7B": _Profile(-0.4, 1.2, {"scene": 1.3}, {},
                             {"mcq": _PLAIN, "yorn": ("lead", 5), "short": _PLAIN,
                              "math": ("trail", 30)}),
    "Janus-Pro-1B": _Profile(-1.1, 1.3, {"scene": 0.5}, {},
                             {"mcq": _PLAIN, "yorn": _PLAIN, "short": _PLAIN,
                              "math": ("trail", 20)}),
    "SmolVLM2": _Profile(-0.8, 1.3, {"diagram": 1.3}, {},
                         {"mcq": _PLAIN, "yorn": ("lead", 3), "short": _PLAIN,
                          "math": ("trail", 25)}),
    "deepseek_vl2_tiny": _Profile(-0.6, 1.3, {"text": 1.2}, {},
                                  {"mcq": _PLAIN, "yorn": _PLAIN, "short": _PLAIN,
                                   "math": ("trail", 15)}),
}

# How easy each dataset is overall (logit offset): math is hard, OCR-style VQA is easy.
_DATASET_OFFSET = {
    "MMBench_DEV_EN_V11": 0.9, "MMStar": -0.3, "MMMU_DEV_VAL": -0.8, "RealWorldQA": 0.1,
    "InfoVQA_VAL": -0.4, "HallusionBench": -0.3, "MathVista_MINI": -0.3,
    "MathVision_MINI": -2.0, "MathVerse_MINI": -1.0, "AI2D_TEST": 0.6, "ChartQA_TEST": 0.5,
    "DocVQA_VAL": 1.0, "TextVQA_VAL": 0.5, "OCRBench": 0.5,
}
# Which visual kinds each dataset draws from (probabilities in KINDS order).
KIND_MIX = {
    "MMBench_DEV_EN_V11": (0.10, 0.15, 0.10, 0.45, 0.20),
    "MMStar": (0.15, 0.10, 0.20, 0.35, 0.20),
    "MMMU_DEV_VAL": (0.25, 0.15, 0.20, 0.10, 0.30),
    "RealWorldQA": (0.0, 0.15, 0.0, 0.85, 0.0),
    "InfoVQA_VAL": (0.35, 0.50, 0.0, 0.0, 0.15),
    "HallusionBench": (0.35, 0.15, 0.10, 0.25, 0.15),
    "MathVista_MINI": (0.30, 0.10, 0.35, 0.10, 0.15),
    "MathVision_MINI": (0.10, 0.0, 0.60, 0.0, 0.30),
    "MathVerse_MINI": (0.10, 0.0, 0.80, 0.0, 0.10),
    "AI2D_TEST": (0.0, 0.0, 0.10, 0.15, 0.75),
    "ChartQA_TEST": (1.0, 0.0, 0.0, 0.0, 0.0),
    "DocVQA_VAL": (0.10, 0.90, 0.0, 0.0, 0.0),
    "TextVQA_VAL": (0.0, 0.40, 0.0, 0.60, 0.0),
    "OCRBench": (0.0, 0.75, 0.0, 0.25, 0.0),
}
# Logits are multiplied by _SHARPNESS so that correctness is mostly decided by what the question and image
# show (a router can learn it), and lucky guesses happen at _GUESS_SCALE x the chance rate. With plain
# logits and full-rate guessing the cheapest correct model of a sample is mostly a lucky cheap model, a label
# no router can learn from the input (measured: KNN then loses to Random on the demo).
_SHARPNESS = 3.0
_GUESS_SCALE = 0.5
_DIFFICULTY_SCALE = 3.0  # logit drop from the easiest to the hardest sample, per unit sensitivity
WORLD_SEED = 20251027  # the model-skill noise is part of the world, not of a generation's seed


def _skill_table() -> np.ndarray:
    """skill[model, group, kind] in logits: hand-set specialities plus fixed small noise."""
    noise = np.random.default_rng(WORLD_SEED).normal(0.0, 0.3, (len(DEMO_MODELS), len(GROUPS), len(KINDS)))
    table = np.zeros_like(noise)
    for m, name in enumerate(DEMO_MODELS):
        p = PROFILES[name]
        for g, group in enumerate(GROUPS):
            for k, kind in enumerate(KINDS):
                table[m, g, k] = p.kinds.get(kind, 0.0) + p.groups.get(group, 0.0)
    return table + noise


def p_correct(plan: DatasetPlan, group: str) -> np.ndarray:
    """P(correct) per (sample, model) under the latent-skill model; `group` is one of GROUPS."""
    skills = _skill_table()[:, GROUPS.index(group), :]  # (M, K)
    ability = np.array([PROFILES[m].ability for m in DEMO_MODELS])
    sens = np.array([PROFILES[m].sensitivity for m in DEMO_MODELS])
    logit = (ability[None, :] + skills.T[plan.kind_idx] + _DATASET_OFFSET[plan.key]
             + plan.offset[:, None] - _DIFFICULTY_SCALE * plan.difficulty[:, None] * sens[None, :])
    p = 1.0 / (1.0 + np.exp(-_SHARPNESS * logit))
    # guessing: a model that does not know still hits a Yes/No or option answer by chance
    guess = _GUESS_SCALE * plan.guess[:, None]
    return guess + (1.0 - guess) * p


def dataset_number(key: str) -> int:
    """A dataset's position in DATASETS: part of every random stream's seed."""
    return list(DATASETS).index(key)
