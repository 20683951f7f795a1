"""Lightning modules of the end-to-end routers (imported on first fit/load; the routers live in `vlrb.routers.e2e`).

Each module is backbone -> head -> (B, K) logits on top of the shared `RoutingModule` (AdamW + warm-up,
val/rank_score validation); the losses are the pure functions of `vlrb.routers.losses`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlrb.backbones import Backbone
from vlrb.backbones.data import ImageStats
from vlrb.backbones.dropout import FastDropout
from vlrb.routers import losses
from vlrb.routers.lit import RoutingModule, with_warmup

CLIP_LOGIT_SCALE_INIT = math.log(1 / 0.07)  # RouterDC (VL-RouterBench port): CLIP's temperature init


class E2EModule(RoutingModule):
    """backbone -> head -> (B, K) logits. Counts placeholder images; logs every named loss part."""

    def __init__(self, backbone: Backbone, n_models: int, head_lr: float | None = None, **opt):
        super().__init__(optimizer="adamw", **opt)
        self.head_lr = head_lr
        self.backbone = backbone
        self.n_models = int(n_models)
        self.image_stats = ImageStats()

    def forward(self, batch: dict) -> torch.Tensor:
        return self.head(self.backbone(batch).float())

    def configure_optimizers(self):
        """`optimizer()`, with a linear warm-up then linear decay, per step."""
        return with_warmup(self.optimizer(), self, self.warmup_ratio)

    def optimizer(self, precision: str | None = None) -> torch.optim.AdamW:
        """AdamW with two rates: `lr` for the pretrained backbone, `head_lr` for the randomly initialised parts
        (the routing head and the backbone's `new_modules`). On a CPU its update runs as one fused kernel in full
        precision, as multi-tensor (foreach) kernels in mixed precision, where Lightning clips no gradients of a
        fused optimizer: the same maths as torch's CPU default, a loop over the ~100 tensors, at 3-4x its speed.
        `precision`: the trainer's (read from it when attached)."""
        new_ids = {id(p) for m in self.backbone.new_modules() for p in m.parameters()}
        in_backbone = {id(p) for p in self.backbone.parameters()}
        groups = {"pretrained": [], "new": []}
        for p in self.parameters():
            if p.requires_grad:
                groups["new" if id(p) in new_ids or id(p) not in in_backbone else "pretrained"].append(p)
        head_lr = self.lr if self.head_lr is None else self.head_lr
        params = groups["pretrained"] + groups["new"]
        precision = str(precision or getattr(self._trainer, "precision", None) or "32-true")
        kw = {}
        if params and all(p.device.type == "cpu" for p in params):
            kw = {"fused": True} if "mixed" not in precision else {"foreach": True}
        return torch.optim.AdamW([{"params": groups["pretrained"], "lr": self.lr},
                                  {"params": groups["new"], "lr": head_lr}], weight_decay=self.weight_decay, **kw)

    def head(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss_parts(self, logits: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": self.loss(logits, batch)}

    def training_step(self, batch, batch_idx):
        self.image_stats.update("train", batch)
        logits = self(batch)
        parts = self.loss_parts(logits, batch)
        for k, v in parts.items():
            self.log(f"train/{k}", v, prog_bar=k == "loss", on_step=False, on_epoch=True, batch_size=len(logits))
        return parts["loss"]

    def validation_step(self, batch, batch_idx):
        self.image_stats.update("val", batch)
        super().validation_step(batch, batch_idx)

    def on_train_epoch_end(self):
        s = self.image_stats.summary().get("train")
        if s:  # "the count of samples that used the placeholder image is logged"
            self.log_dict({"train/no_image": float(s["no_image"]), "train/decode_failed": float(s["decode_failed"])})


class LinearHeadModule(E2EModule):
    """Dropout -> Linear(H, K). VLC (soft CE) and ZOOTER (KL batchmean)."""

    def __init__(self, backbone: Backbone, n_models: int, dropout: float = 0.1, loss_name: str = "soft_ce", **opt):
        super().__init__(backbone, n_models, **opt)
        self.drop = FastDropout(dropout)
        self.linear = nn.Linear(backbone.hidden_size, n_models)
        self.loss_name = loss_name

    def head(self, h):
        return self.linear(self.drop(h))

    def loss(self, logits, batch):
        if self.loss_name == "kl":
            return losses.kl_batchmean(logits, batch["targets"])
        return losses.soft_cross_entropy(logits, batch["targets"])


class CosineClsModule(E2EModule):
    """z = s · cos(dropout(h), w_m); w initialised Xavier-uniform, s = 1/temperature (learnable: log-parametrised,
    clamped at 100 as in CLIP so it cannot run away)."""

    MAX_SCALE = 100.0

    def __init__(self, backbone: Backbone, n_models: int, dropout: float = 0.1, temperature: float = 0.1,
                 learn_temperature: bool = True, **opt):
        super().__init__(backbone, n_models, **opt)
        self.drop = FastDropout(dropout)
        self.weight = nn.Parameter(torch.empty(n_models, backbone.hidden_size))
        nn.init.xavier_uniform_(self.weight)
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def head(self, h):
        cos = F.normalize(self.drop(h), dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.log_scale.exp().clamp(max=self.MAX_SCALE) * cos

    def loss(self, logits, batch):
        return losses.soft_cross_entropy(logits, batch["targets"])


class RouterDCModule(E2EModule):
    """z = exp(logit_scale) · cos(h, k_m) with learnable model embeddings k (K × H, N(0, 1)); no clamp (upstream)."""

    def __init__(self, backbone: Backbone, n_models: int, top_k: int = 3, last_k: int = 3,
                 loss_variant: str = "vlrb", cluster_weight: float = 1.0, **opt):
        super().__init__(backbone, n_models, **opt)
        self.model_embeddings = nn.Parameter(torch.randn(n_models, backbone.hidden_size))
        self.logit_scale = nn.Parameter(torch.tensor(CLIP_LOGIT_SCALE_INIT))
        self.top_k, self.last_k, self.loss_variant, self.cluster_weight = top_k, last_k, loss_variant, cluster_weight

    def head(self, h):
        return self.logit_scale.exp() * (F.normalize(h, dim=-1) @ F.normalize(self.model_embeddings, dim=-1).T)

    def loss_parts(self, logits, batch):
        return losses.routerdc_loss(logits, batch["targets"], batch.get("cluster"), top_k=self.top_k,
                                    last_k=self.last_k, variant=self.loss_variant, cluster_weight=self.cluster_weight)

    def loss(self, logits, batch):
        return self.loss_parts(logits, batch)["loss"]
