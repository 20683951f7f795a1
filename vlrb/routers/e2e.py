"""End-to-end routers (docs/routers.md#end-to-end-routers): a multimodal backbone fine-tuned on the raw prompt and
first image, with a routing head over the K models.

    routerdc   learnable model embeddings k_m ~ N(0, 1); z_m = exp(logit_scale)·cos(h, k_m), logit_scale
               learnable from ln(1/0.07); loss = sample–LLM contrastive (`loss_variant`: vlrb | original)
               + cluster_weight · sample–sample contrastive on KMeans(5) clusters of the training soft labels
    cosinecls  a cosine classifier (NormFace-style): z_m = s·cos(h, w_m) over L2-normalised features and class
               weights, scale s = 1/temperature (learnable or fixed), trained with soft cross-entropy over all
               K models. Upstream "CosineCls" ran RouterDC's model and loss under another name; this is the
               distinct cosine-classifier router its name promises.
    zooter     Dropout(0.1) -> Linear(H, K), KL(t* ‖ p) (batchmean), with ZOOTER's tag smoothing
               t* = β·t + (1−β)·mean_tag(t) (β = 1: the VL-RouterBench port; 0.3: the paper); keeps samples no
               model answers (their fallback target), as upstream
    vlc        Dropout(0.1) -> Linear(H, K), soft cross-entropy

All four consume the shared soft labels `soft_labels(Y, C, lam, cost_scale=100)` (docs/method.md) and, except
ZOOTER, drop training samples that no model answers (dev and test are never filtered). λ = inf gives hard
one-hot labels (the cheapest correct model) for every router; upstream RouterDC and CosineCls instead fell back
to uniform-over-correct labels (λ = 0) there.

Their shared fit / predict / save / load: vlrb/routers/e2e_base.py (`E2ERouter`).
"""
from __future__ import annotations

import numpy as np

from vlrb.routers.e2e_base import E2ERouter

__all__ = ["E2ERouter", "VLCRouter", "ZooterRouter", "CosineClsRouter", "RouterDCRouter"]


class VLCRouter(E2ERouter):
    """Backbone -> Dropout -> Linear(H, K), soft cross-entropy; drops samples no model answers."""

    name = "vlc"

    def _head_module(self, backbone, n_models, opt):
        from vlrb.routers.e2e_modules import LinearHeadModule

        return LinearHeadModule(backbone, n_models, dropout=self.dropout, loss_name="soft_ce", **opt)


class ZooterRouter(E2ERouter):
    """Backbone -> Dropout -> Linear(H, K), KL(batchmean) to tag-smoothed soft labels; keeps every sample.

    beta: ZOOTER's mixing weight (1.0 = no smoothing = the VL-RouterBench port; the paper's best 0.3).
    tag_source: dataset | group | none (the tag of each training sample for the smoothing means).
    """

    name = "zooter"

    drop_no_correct = False

    def __init__(self, beta: float = 1.0, tag_source: str = "dataset", lr: float = 1e-5, **kw):
        super().__init__(lr=lr, **kw)
        if tag_source not in ("dataset", "group", "none"):
            raise ValueError(f"tag_source must be dataset, group or none; got {tag_source!r}")
        if not 0.0 <= float(beta) <= 1.0:
            raise ValueError(f"beta must lie in [0, 1]; got {beta}")
        self.beta, self.tag_source = float(beta), tag_source

    def _train_targets(self, train, targets, keep):
        from vlrb.routers import losses

        tags = {"dataset": train.datasets, "group": train.groups, "none": None}[self.tag_source]
        beta = 1.0 if tags is None else self.beta
        return {"targets": losses.tag_smoothed_targets(targets[keep], None if tags is None else tags[keep], beta)}

    def _head_module(self, backbone, n_models, opt):
        from vlrb.routers.e2e_modules import LinearHeadModule

        return LinearHeadModule(backbone, n_models, dropout=self.dropout, loss_name="kl", **opt)

    def _extra_info(self):
        return {"zooter": {"beta": self.beta, "tag_source": self.tag_source}}


class CosineClsRouter(E2ERouter):
    """Cosine classifier: s·cos(h, w_m) over normalised features and class weights, soft cross-entropy.

    temperature: s = 1/temperature at the start (0.1 -> 10); learn_temperature: learn s (clamped at 100) or fix it.
    """

    name = "cosinecls"

    def __init__(self, temperature: float = 0.1, learn_temperature: bool = True, **kw):
        super().__init__(**kw)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        self.temperature, self.learn_temperature = float(temperature), bool(learn_temperature)

    def _head_module(self, backbone, n_models, opt):
        from vlrb.routers.e2e_modules import CosineClsModule

        return CosineClsModule(backbone, n_models, dropout=self.dropout, temperature=self.temperature,
                               learn_temperature=self.learn_temperature, **opt)


class RouterDCRouter(E2ERouter):
    """RouterDC: model embeddings + learnable temperature; sample–LLM + sample–sample contrastive losses.

    top_k / last_k: K⁺ positives and K⁻ negatives (3 / 3); loss_variant: vlrb (the port's multi-positive
    InfoNCE, default) | original (the RouterDC paper's masked per-positive InfoNCE); cluster_weight: w of the
    sample–sample loss (1.0); n_clusters: KMeans clusters of the training soft labels (5).
    """

    name = "routerdc"

    def __init__(self, top_k: int = 3, last_k: int = 3, loss_variant: str = "vlrb", cluster_weight: float = 1.0,
                 n_clusters: int = 5, **kw):
        super().__init__(**kw)
        if loss_variant not in ("vlrb", "original"):
            raise ValueError(f"loss_variant must be vlrb or original; got {loss_variant!r}")
        self.top_k, self.last_k, self.loss_variant = int(top_k), int(last_k), loss_variant
        self.cluster_weight, self.n_clusters = float(cluster_weight), int(n_clusters)
        self._clusters: np.ndarray | None = None

    def _train_targets(self, train, targets, keep):
        from vlrb.routers import losses

        t = targets[keep]
        self._clusters = losses.cluster_targets(t, self.n_clusters, seed=42)
        return {"targets": t, "cluster": self._clusters}

    def _head_module(self, backbone, n_models, opt):
        from vlrb.routers.e2e_modules import RouterDCModule

        return RouterDCModule(backbone, n_models, top_k=self.top_k, last_k=self.last_k,
                              loss_variant=self.loss_variant, cluster_weight=self.cluster_weight, **opt)

    def _extra_info(self):
        sizes = np.bincount(self._clusters).tolist() if self._clusters is not None else []
        return {"routerdc": {"cluster_sizes": sizes, "loss_variant": self.loss_variant}}
