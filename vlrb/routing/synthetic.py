"""A synthetic in-memory benchmark with realistic Y and C, for tests and the evaluation benchmark.

Not the demo (that one goes through the real reader, see vlrb/demo/): just arrays shaped like the real
thing, fast to make. Correctness comes from a latent-skill model (bigger, dearer models are stronger,
with per-task-group strengths, so per-dataset routing helps and the Oracle is far above every model);
costs are tokens × the paper's prices ($ per 1M tokens), so they span the real 1e-6…1e-3 $ range.
"""
from __future__ import annotations

import numpy as np

from vlrb.data.benchmark import Benchmark
from vlrb.data.datasets import DATASETS

# (model, input $/1M, output $/1M): the paper's 17 models (conf/pricing/vlrb_2025.yaml), sorted by name
PAPER_PRICES = [
    ("GPT4o", 2.5, 10.0), ("GeminiFlash2-5", 0.3, 2.4), ("Gemma3-27B", 0.35, 0.5), ("InternVL2_5-78B", 1.0, 1.5),
    ("Janus-Pro-1B", 0.05, 0.05), ("Janus-Pro-7B", 0.18, 0.25), ("Kimi-VL-A3B-Thinking-2506", 0.2, 0.25),
    ("MiMo-VL-7B-RL", 0.2, 0.3), ("Phi-3.5-Vision", 0.1, 0.1), ("Pixtral-12B", 0.25, 0.35),
    ("Qianfan-VL-8B", 0.18, 0.25), ("Qwen2.5-VL-32B-Instruct", 0.4, 0.6), ("Qwen2.5-VL-72B-Instruct", 0.8, 1.2),
    ("SmolVLM2", 0.06, 0.06), ("deepseek_vl2", 0.35, 0.5), ("deepseek_vl2_tiny", 0.05, 0.05),
    ("llava_next_vicuna_7b", 0.2, 0.2),
]
FULL_SCALE = 30_540


def synthetic_arrays(n_samples: int = 1000, n_models: int = 17, n_datasets: int = 14, seed: int = 0):
    """(Y int8 N×K, C float32 N×K, models, datasets (N,), input_tokens (N,)) from a latent-skill model."""
    rng = np.random.default_rng(seed)
    if n_models <= len(PAPER_PRICES):
        picked = [PAPER_PRICES[i] for i in np.linspace(0, len(PAPER_PRICES) - 1, n_models).round().astype(int)]
        models = [m for m, _, _ in picked]
        p_in = np.array([p for _, p, _ in picked])
        p_out = np.array([p for _, _, p in picked])
    else:
        models = [f"model{j:02d}" for j in range(n_models)]
        p_in = np.exp(rng.uniform(np.log(0.05), np.log(2.5), n_models))
        p_out = p_in * rng.uniform(1.0, 4.0, n_models)
    keys = list(DATASETS)[:n_datasets] if n_datasets <= len(DATASETS) else [f"DS{d}" for d in range(n_datasets)]
    ds_idx = rng.integers(0, len(keys), n_samples)
    datasets = np.array(keys)[ds_idx]

    # skill grows with price (a proxy for size) plus model-by-dataset strengths; difficulty per sample
    skill = 0.9 * np.log(p_in / p_in.min()) / max(np.log(p_in.max() / p_in.min()), 1e-9) * 2.0
    strength = rng.normal(0, 0.8, (len(keys), n_models))
    difficulty = rng.normal(0, 2.0, n_samples) + rng.normal(0, 0.5, len(keys))[ds_idx]
    logit = skill[None, :] + strength[ds_idx] - difficulty[:, None] + rng.normal(0, 0.7, (n_samples, n_models))
    Y = (rng.random((n_samples, n_models)) < 1 / (1 + np.exp(-logit))).astype(np.int8)

    tok_in = np.round(np.exp(rng.normal(np.log(600), 0.5, n_samples))) + 256  # prompt + one image
    tok_out = np.round(np.exp(rng.normal(np.log(40), 1.0, (n_samples, n_models)))) + 1
    C = ((tok_in[:, None] * p_in + tok_out * p_out) / 1e6).astype(np.float32)
    return Y, C, models, datasets, tok_in.astype(np.int64)


def synthetic_benchmark(n_samples: int = 1000, n_models: int = 17, n_datasets: int = 14, seed: int = 0) -> Benchmark:
    """An in-memory Benchmark (70/10/20 split of sorted ids, seed 42) with `synthetic_arrays` content."""
    Y, C, models, datasets, tokens = synthetic_arrays(n_samples, n_models, n_datasets, seed)
    # sample ids "<DATASET>/<index>", zero-padded so sorted order is numeric order
    sample_ids = np.char.add(np.char.add(datasets.astype(str), "/"), np.char.zfill(np.arange(n_samples).astype(str), 6))
    return Benchmark.from_arrays(Y, C, models, datasets=datasets.tolist(), sample_ids=sample_ids.tolist(),
                                 input_tokens=tokens)
