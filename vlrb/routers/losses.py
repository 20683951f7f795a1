"""Pure loss functions of the end-to-end routers (docs/routers.md#end-to-end-routers).

Every function takes logits z (B, K) and targets t (B, K) (the shared accuracy–cost soft labels, rows summing
to 1) or cluster ids, and returns a scalar. Losses are computed in float32 whatever the autocast dtype.

RouterDC sample–LLM loss, two forms:
  vlrb      (VL-RouterBench port, default)  one multi-positive InfoNCE per sample:
                L = −log( Σ_{m ∈ top-k⁺(t)} e^{z_m} / Σ_{all m} e^{z_m} ),  averaged over the batch.
            Positives are the top-k⁺ of t even where t = 0 (so wrong models can be positives); the bottom-k⁻
            "negatives" are not used (they were computed but unused upstream).
  original  (RouterDC paper, shuhao02/RouterDC `compute_sample_llm_loss`)  one InfoNCE per positive p against
            the bottom-k⁻ models N:
                L = Σ_{p ∈ top-k⁺} mean_b[ 1(t_p > 0) · −log( e^{z_p} / (e^{z_p} + Σ_{n ∈ N, t_n ≤ 0.5} e^{z_n}) ) ]
            A positive with t ≤ 0 contributes 0 (but still counts in the batch mean), a "negative" with t > 0.5
            is dropped. When K < k⁺ + k⁻ a model can be both a positive and a negative, exactly as upstream.
RouterDC sample–sample loss (the port's form): cosine similarities s_ij of the L2-normalised *logit* vectors
  within the batch (no temperature); P(i) = other batch samples of i's cluster;
      L_i = −log( Σ_{j ∈ P(i)} e^{s_ij} / Σ_{j, self included} e^{s_ij} ),  averaged over samples with P(i) ≠ ∅.
  (Upstream adds 1e-8 to the denominator; we use log-sum-exp instead.)
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

RIGHT_NEG_THRESHOLD = 0.5  # original RouterDC: a "negative" scoring above this is not pushed away


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """−Σ_m t_m log softmax(z)_m, averaged over the batch (= CE for one-hot targets). VLC, CosineCls."""
    return -(targets.float() * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def kl_batchmean(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """KL(t ‖ softmax(z)) summed over models, averaged over the batch (`KLDivLoss(reduction='batchmean')`). ZOOTER.

    Same gradient as soft cross-entropy; the value is lower by the targets' entropy (0 for one-hot targets).
    """
    return F.kl_div(F.log_softmax(logits.float(), dim=1), targets.float(), reduction="batchmean")


def sample_llm_loss_vlrb(logits: torch.Tensor, targets: torch.Tensor, top_k: int = 3) -> torch.Tensor:
    z = logits.float()
    k = max(1, min(int(top_k), z.shape[1]))
    pos = targets.topk(k, dim=1).indices
    return (z.logsumexp(1) - z.gather(1, pos).logsumexp(1)).mean()


def sample_llm_loss_original(logits: torch.Tensor, targets: torch.Tensor, top_k: int = 3,
                             last_k: int = 3) -> torch.Tensor:
    z, t = logits.float(), targets.float()
    k_pos = max(1, min(int(top_k), z.shape[1]))
    k_neg = max(1, min(int(last_k), z.shape[1]))
    pos_t, pos_i = t.sort(dim=1, descending=True)
    neg_t, neg_i = t.topk(k_neg, dim=1, largest=False)
    neg_z = z.gather(1, neg_i).masked_fill(neg_t > RIGHT_NEG_THRESHOLD, float("-inf"))
    total = z.new_zeros(())
    for j in range(k_pos):
        pz = z.gather(1, pos_i[:, j:j + 1])  # (B, 1)
        nll = torch.cat([pz, neg_z], dim=1).logsumexp(1) - pz.squeeze(1)
        total = total + (nll * (pos_t[:, j] > 0).float()).mean()
    return total


def sample_llm_loss(logits: torch.Tensor, targets: torch.Tensor, top_k: int = 3, last_k: int = 3,
                    variant: str = "vlrb") -> torch.Tensor:
    if variant == "vlrb":
        return sample_llm_loss_vlrb(logits, targets, top_k)
    if variant == "original":
        return sample_llm_loss_original(logits, targets, top_k, last_k)
    raise ValueError(f"RouterDC loss variant must be 'vlrb' or 'original'; got {variant!r}")


def cluster_contrastive_loss(logits: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    z = F.normalize(logits.float(), dim=1)
    sim = z @ z.T
    same = clusters.view(-1, 1) == clusters.view(1, -1)
    same.fill_diagonal_(False)
    has = same.any(1)
    if not bool(has.any()):
        return sim.sum() * 0.0  # no pair in the batch shares a cluster: zero, but keep the graph
    pos = sim.masked_fill(~same, float("-inf")).logsumexp(1)
    return (sim.logsumexp(1) - pos)[has].mean()


def routerdc_loss(logits: torch.Tensor, targets: torch.Tensor, clusters: torch.Tensor | None, *, top_k: int = 3,
                  last_k: int = 3, variant: str = "vlrb", cluster_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """{"loss": L_sl + w·L_ss, "sample_llm": L_sl, "sample_sample": L_ss}."""
    sl = sample_llm_loss(logits, targets, top_k, last_k, variant)
    ss = cluster_contrastive_loss(logits, clusters) if clusters is not None and cluster_weight else sl * 0.0
    return {"loss": sl + cluster_weight * ss, "sample_llm": sl, "sample_sample": ss}


# ---------------------------------------------------------------------------------------------- label shaping
def tag_smoothed_targets(targets: np.ndarray, tags, beta: float) -> np.ndarray:
    """ZOOTER's tag-based label enhancement: t*_i = β·t_i + (1−β)·mean{t_j : tag_j = tag_i}.

    One tag per sample here (its dataset or task group); the means run over the rows given (the training
    set). β = 1 returns the targets unchanged (the VL-RouterBench port); the ZOOTER paper's best is β = 0.3.
    Rows still sum to 1.
    """
    t = np.asarray(targets, dtype=np.float64)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1]; got {beta}")
    if beta == 1.0 or tags is None:
        return t.astype(np.float32)
    tags = np.asarray(tags)
    if len(tags) != len(t):
        raise ValueError(f"{len(tags)} tags for {len(t)} target rows")
    _, inv = np.unique(tags, return_inverse=True)
    sums = np.zeros((inv.max() + 1, t.shape[1]))
    np.add.at(sums, inv, t)
    means = sums / np.bincount(inv)[:, None]
    return (beta * t + (1.0 - beta) * means[inv]).astype(np.float32)


def cluster_targets(targets: np.ndarray, n_clusters: int = 5, seed: int = 42) -> np.ndarray:
    """RouterDC's sample clusters: KMeans(n_clusters, random_state=42, n_init=10) on the training soft-label rows.

    With fewer distinct rows than clusters, the number of clusters shrinks to the number of distinct rows.
    """
    from sklearn.cluster import KMeans

    t = np.asarray(targets, dtype=np.float64)
    k = int(min(n_clusters, len(np.unique(t.round(8), axis=0))))
    if k <= 1:
        return np.zeros(len(t), dtype=np.int64)
    return KMeans(n_clusters=k, random_state=seed, n_init=10).fit_predict(t).astype(np.int64)
