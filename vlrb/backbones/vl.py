"""The paper's backbones (docs/routers.md#backbones): ViT-B/16 patch tokens feeding a vision-language transformer.

    lxmert_vit   ViT `last_hidden_state` (B, 197, 768) -> Linear(768 -> 2048) as LXMERT `visual_feats`,
                 zero `visual_pos` (B, 197, 4) -> `unc-nlp/lxmert-base-uncased` pooled output (768).
                 The shared encoder of RouterDC, CosineCls, ZOOTER and VLC-lxmert upstream.
    visualbert   ViT tokens -> Linear(768 -> visual_embedding_dim) -> `uclanlp/visualbert-vqa-coco-pre` pooled output.
    uniter       single stream: one BERT over [text tokens; projected patch tokens], the modality told apart by
                 the token-type (modality-type) embedding; the BERT is randomly initialised, as upstream.
    vilbert      two streams: a text BERT and a visual BERT over the projected patches, each split at mid-depth,
                 with 2 co-attention blocks in between; [CLS_text; CLS_image] -> Linear + Tanh. Both BERTs are
                 randomly initialised, as upstream. Our co-attention block is the ViLBERT paper's co-TRM
                 (cross-attention + FFN, each with residual and LayerNorm); upstream's had residuals only.

Pretrained weights load from a local folder or the local Hugging Face cache only (`vit`, `lxmert`,
`visualbert`, `bert`, `tokenizer` take an HF id or a path); when absent, a `BackboneUnavailableError` names
the offline default. Every backbone also builds:
  * `tiny=True` (registered as `tiny_<name>`): hidden 32, 1-2 layers, 32 px images, random weights: tests;
  * `random_init=True`: the real shapes (ViT-B/16 at 224 px, the base configs) with random weights, built from
    config objects without any file: throughput checks on a GPU (`benchmarks/bench_e2e.py`).
`image_preset`: `vit` (resize to 224, mean = std = 0.5: the ViT processor, used by upstream RouterDC) or
`imagenet` (resize 256, centre-crop 224, ImageNet mean/std: upstream VLC and ZOOTER).
"""
from __future__ import annotations

import json

import torch
from torch import nn

from vlrb.backbones.base import (Backbone, BackboneUnavailableError, Processor, encoder_layers, layer_output,
                                 load_tokenizer, resolve_local)
from vlrb.preprocess import image_transform
from vlrb.weights import offline_env, packaged_tokenizer

TINY = dict(hidden_size=32, num_attention_heads=2, intermediate_size=37)
TINY_VIT = dict(TINY, num_hidden_layers=2, image_size=32, patch_size=8)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ViTBackbone(Backbone):
    """Shared parts: the ViT tower, the tokenizer, the processor and freezing of the ViT tower."""

    def __init__(self, *, vit: str, tokenizer: str | None, tiny: bool, random_init: bool, max_length: int,
                 image_preset: str, freeze: str, train_last: int, seed: int, tokenizer_fallbacks=()):
        super().__init__(freeze=freeze, train_last=train_last)
        from transformers import ViTConfig, ViTModel

        offline_env()
        self.tiny, self.random_init = bool(tiny), bool(random_init)
        torch.manual_seed(seed)  # random parts (tiny, random_init, projections) are reproducible
        if self.tiny or self.random_init:
            self.vit = ViTModel(ViTConfig(**TINY_VIT) if self.tiny else ViTConfig(), add_pooling_layer=False)
            # random weights: the tokenizer only shapes the input (packaged MiniLM's, or `tokenizer: hash`)
            self.tokenizer = load_tokenizer("hash") if tokenizer == "hash" else packaged_tokenizer()
            vit_dir = None
        else:
            vit_dir = resolve_local(vit, "vision tower")
            self.vit = ViTModel.from_pretrained(str(vit_dir), local_files_only=True, add_pooling_layer=False)
            self.tokenizer = load_tokenizer(tokenizer, tokenizer_fallbacks)
        size = int(self.vit.config.image_size)
        if image_preset == "vit":
            mean, std = _vit_norm(vit_dir)
            tf = image_transform(size, mean, std)
        elif image_preset == "imagenet":
            tf = image_transform(size, IMAGENET_MEAN, IMAGENET_STD, crop_pct=size / 256)
        else:
            raise ValueError(f"image_preset must be vit or imagenet; got {image_preset!r}")
        self.processor = Processor(self.tokenizer, tf, size, max_length)
        self.vit_dim = int(self.vit.config.hidden_size)

    def patches(self, batch: dict) -> torch.Tensor:
        """(B, 1 + n_patches, vit_dim): the CLS and patch tokens of the last ViT layer."""
        return self.vit(pixel_values=self.processor.normalize(batch["pixel_values"])).last_hidden_state

    def towers(self):
        return [([self.vit.embeddings], list(encoder_layers(self.vit)), [self.vit.layernorm])]

    def new_modules(self):
        return [self.visual_proj]  # the ViT -> VL-model projection is always new

    def _pretrained(self, cls, config_cls, name_or_path: str, what: str, tiny_kw: dict, full_kw: dict | None = None):
        """A pretrained VL model from a local folder, or random weights for tiny / random_init."""
        if self.tiny:
            return cls(config_cls(**tiny_kw))
        if self.random_init:
            return cls(config_cls(**(full_kw or {})))
        path = resolve_local(name_or_path, what)
        return cls.from_pretrained(str(path), local_files_only=True)


def _vit_norm(vit_dir) -> tuple[tuple, tuple]:
    """mean/std of the ViT's own image processor (0.5/0.5 for google/vit-base-patch16-224)."""
    if vit_dir is not None and (vit_dir / "preprocessor_config.json").exists():
        pc = json.loads((vit_dir / "preprocessor_config.json").read_text())
        return tuple(pc.get("image_mean", (0.5,) * 3)), tuple(pc.get("image_std", (0.5,) * 3))
    return (0.5,) * 3, (0.5,) * 3


# ---------------------------------------------------------------------------------------------- LXMERT
class LxmertViT(ViTBackbone):
    """The paper's "LXMERT-on-ViT" (see the module docstring). Output: LXMERT `pooled_output` (768)."""

    config_name = "lxmert_vit"

    def __init__(self, vit: str = "google/vit-base-patch16-224", lxmert: str = "unc-nlp/lxmert-base-uncased",
                 tokenizer: str | None = "bert-base-uncased", tiny: bool = False, random_init: bool = False,
                 max_length: int = 128, image_preset: str = "vit", freeze: str = "none", train_last: int = 1,
                 seed: int = 0):
        super().__init__(vit=vit, tokenizer=tokenizer, tiny=tiny, random_init=random_init, max_length=max_length,
                         image_preset=image_preset, freeze=freeze, train_last=train_last, seed=seed,
                         tokenizer_fallbacks=_local_dirs(lxmert))
        from transformers import LxmertConfig, LxmertModel

        self.lxmert = self._pretrained(LxmertModel, LxmertConfig, lxmert, "LXMERT",
                                       dict(TINY, vocab_size=self.tokenizer.vocab_size, l_layers=1, x_layers=1,
                                            r_layers=1, visual_feat_dim=64))
        cfg = self.lxmert.config
        self.visual_proj = nn.Linear(self.vit_dim, int(cfg.visual_feat_dim))  # 768 -> 2048
        self.pos_dim = int(cfg.visual_pos_dim)
        self.hidden_size = int(cfg.hidden_size)
        self.apply_freeze()

    def forward(self, batch: dict) -> torch.Tensor:
        feats = self.visual_proj(self.patches(batch))
        # no boxes for ViT patches: zero positions, as upstream
        pos = torch.zeros(*feats.shape[:2], self.pos_dim, dtype=feats.dtype, device=feats.device)
        out = self.lxmert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          visual_feats=feats, visual_pos=pos)
        return out.pooled_output


# ---------------------------------------------------------------------------------------------- VisualBERT
class VisualBertViT(ViTBackbone):
    """ViT tokens -> Linear(768 -> visual_embedding_dim) -> VisualBERT pooled output (768)."""

    config_name = "visualbert"

    def __init__(self, vit: str = "google/vit-base-patch16-224", visualbert: str = "uclanlp/visualbert-vqa-coco-pre",
                 tokenizer: str | None = "bert-base-uncased", tiny: bool = False, random_init: bool = False,
                 max_length: int = 128, image_preset: str = "vit", freeze: str = "none", train_last: int = 1,
                 seed: int = 0):
        super().__init__(vit=vit, tokenizer=tokenizer, tiny=tiny, random_init=random_init, max_length=max_length,
                         image_preset=image_preset, freeze=freeze, train_last=train_last, seed=seed,
                         tokenizer_fallbacks=_local_dirs(visualbert))
        from transformers import VisualBertConfig, VisualBertModel

        self.visualbert = self._pretrained(
            VisualBertModel, VisualBertConfig, visualbert, "VisualBERT",
            dict(TINY, vocab_size=self.tokenizer.vocab_size, num_hidden_layers=2, visual_embedding_dim=64),
            dict(visual_embedding_dim=2048))  # the vqa-coco-pre checkpoint's size
        cfg = self.visualbert.config
        self.visual_proj = nn.Linear(self.vit_dim, int(cfg.visual_embedding_dim))
        self.hidden_size = int(cfg.hidden_size)
        self.apply_freeze()

    def forward(self, batch: dict) -> torch.Tensor:
        v = self.visual_proj(self.patches(batch))
        vmask = torch.ones(v.shape[:2], dtype=batch["attention_mask"].dtype, device=v.device)
        out = self.visualbert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              visual_embeds=v, visual_attention_mask=vmask)
        return out.pooler_output


# ---------------------------------------------------------------------------------------------- BERT helpers
def _local_dirs(name_or_path: str) -> list:
    """[the local folder of an HF id] if it is on this machine, else [] (tokenizer fallbacks)."""
    try:
        return [resolve_local(name_or_path, "model")]
    except BackboneUnavailableError:
        return []


def _bert_config(bert: str | None, tiny: bool, random_init: bool, **tiny_kw):
    """bert-base-uncased's config from a local copy, else `BertConfig()` (whose defaults are that config)."""
    from transformers import BertConfig

    if tiny:
        return BertConfig(**dict(TINY, **tiny_kw))
    if bert and not random_init:
        try:
            return BertConfig.from_pretrained(str(resolve_local(bert, "BERT config")), local_files_only=True)
        except BackboneUnavailableError:
            pass
    return BertConfig()


def _bert_model(config, bert_weights: str | None, add_pooling_layer: bool):
    from transformers import BertModel

    if bert_weights:
        return BertModel.from_pretrained(str(resolve_local(bert_weights, "BERT weights")), local_files_only=True,
                                         add_pooling_layer=add_pooling_layer)
    return BertModel(config, add_pooling_layer=add_pooling_layer)


# ---------------------------------------------------------------------------------------------- UNITER-style
class UniterViT(ViTBackbone):
    """Single-stream: BERT over [text; Linear(patches)], token type 0 = text, 1 = image; BERT pooler output.

    Text tokens take positions 0..L-1, image tokens max_length..max_length+P-1 (fixed, whatever the batch's
    padded text length). The BERT is randomly initialised (upstream); `bert_weights` loads a local BERT instead.
    """

    config_name = "uniter"

    def __init__(self, vit: str = "google/vit-base-patch16-224", bert: str | None = "bert-base-uncased",
                 bert_weights: str | None = None, tokenizer: str | None = "bert-base-uncased", tiny: bool = False,
                 random_init: bool = False, max_length: int = 128, image_preset: str = "vit", freeze: str = "none",
                 train_last: int = 1, seed: int = 0):
        super().__init__(vit=vit, tokenizer=tokenizer, tiny=tiny, random_init=random_init, max_length=max_length,
                         image_preset=image_preset, freeze=freeze, train_last=train_last, seed=seed)
        cfg = _bert_config(bert, tiny, random_init, vocab_size=self.tokenizer.vocab_size, num_hidden_layers=2)
        self.bert = _bert_model(cfg, None if tiny else bert_weights, add_pooling_layer=True)
        n_img = (self.processor.image_size // self.vit.config.patch_size) ** 2 + 1
        if max_length + n_img > self.bert.config.max_position_embeddings or self.bert.config.type_vocab_size < 2:
            raise ValueError(f"uniter: {max_length} text + {n_img} image positions exceed the BERT's "
                             f"{self.bert.config.max_position_embeddings} (or it has < 2 token types)")
        self.visual_proj = nn.Linear(self.vit_dim, int(self.bert.config.hidden_size))
        self.hidden_size = int(self.bert.config.hidden_size)
        self.apply_freeze()

    def forward(self, batch: dict) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        t = self.bert.embeddings.word_embeddings(ids)
        v = self.visual_proj(self.patches(batch))
        b, n_t, n_v, dev = ids.shape[0], ids.shape[1], v.shape[1], ids.device
        types = torch.cat([torch.zeros(b, n_t, dtype=torch.long, device=dev),
                           torch.ones(b, n_v, dtype=torch.long, device=dev)], 1)
        pos = torch.cat([torch.arange(n_t, device=dev),
                         self.processor.max_length + torch.arange(n_v, device=dev)]).expand(b, -1)
        full_mask = torch.cat([mask, torch.ones(b, n_v, dtype=mask.dtype, device=dev)], 1)
        out = self.bert(inputs_embeds=torch.cat([t, v.to(t.dtype)], 1), attention_mask=full_mask,
                        token_type_ids=types, position_ids=pos)
        return out.pooler_output


# ---------------------------------------------------------------------------------------------- ViLBERT-style
class CoAttention(nn.Module):
    """One ViLBERT co-TRM block: each stream attends to the other, then its own FFN (post-norm, as BERT)."""

    def __init__(self, hidden: int, heads: int, ff: int, dropout: float = 0.1):
        super().__init__()
        self.t_att = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.v_att = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.t_ff = nn.Sequential(nn.Linear(hidden, ff), nn.GELU(), nn.Linear(ff, hidden))
        self.v_ff = nn.Sequential(nn.Linear(hidden, ff), nn.GELU(), nn.Linear(ff, hidden))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(4))
        self.drop = nn.Dropout(dropout)

    def forward(self, t, t_valid, v):
        ta = self.t_att(t, v, v, need_weights=False)[0]  # text queries, image keys (all valid)
        va = self.v_att(v, t, t, key_padding_mask=~t_valid, need_weights=False)[0]
        t = self.norms[0](t + self.drop(ta))
        v = self.norms[1](v + self.drop(va))
        return self.norms[2](t + self.drop(self.t_ff(t))), self.norms[3](v + self.drop(self.v_ff(v)))


class VilbertViT(ViTBackbone):
    """Two-stream: text BERT and visual BERT, `co_layers` co-attention blocks at mid-depth; [CLS_t; CLS_v] ->
    Linear + Tanh (hidden). Both BERTs random (upstream); `bert_weights` loads a local BERT into the text stream."""

    config_name = "vilbert"

    def __init__(self, vit: str = "google/vit-base-patch16-224", bert: str | None = "bert-base-uncased",
                 bert_weights: str | None = None, tokenizer: str | None = "bert-base-uncased", co_layers: int = 2,
                 tiny: bool = False, random_init: bool = False, max_length: int = 128, image_preset: str = "vit",
                 freeze: str = "none", train_last: int = 1, seed: int = 0):
        super().__init__(vit=vit, tokenizer=tokenizer, tiny=tiny, random_init=random_init, max_length=max_length,
                         image_preset=image_preset, freeze=freeze, train_last=train_last, seed=seed)
        cfg = _bert_config(bert, tiny, random_init, vocab_size=self.tokenizer.vocab_size, num_hidden_layers=2)
        self.text_bert = _bert_model(cfg, None if tiny else bert_weights, add_pooling_layer=False)
        self.vision_bert = _bert_model(self.text_bert.config, None, add_pooling_layer=False)
        self.vision_bert.embeddings.word_embeddings = None  # the visual stream never looks up word ids
        h = int(cfg.hidden_size)
        self.visual_proj = nn.Linear(self.vit_dim, h)
        self.co = nn.ModuleList(CoAttention(h, int(cfg.num_attention_heads), int(cfg.intermediate_size),
                                            float(cfg.hidden_dropout_prob)) for _ in range(int(co_layers)))
        self.pool = nn.Sequential(nn.Linear(2 * h, h), nn.Tanh())
        self.hidden_size = h
        self.apply_freeze()

    def new_modules(self):
        return [self.visual_proj, self.co, self.pool]

    def forward(self, batch: dict) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        ids, mask = batch["input_ids"], batch["attention_mask"]
        t = self.text_bert.embeddings(input_ids=ids)
        v = self.vision_bert.embeddings(inputs_embeds=self.visual_proj(self.patches(batch)).to(t.dtype))
        t_mask = create_bidirectional_mask(config=self.text_bert.config, inputs_embeds=t, attention_mask=mask)
        t_layers, v_layers = encoder_layers(self.text_bert), encoder_layers(self.vision_bert)
        mid = len(t_layers) // 2
        for layer in t_layers[:mid]:
            t = layer_output(layer(t, t_mask))
        for layer in v_layers[:mid]:
            v = layer_output(layer(v, None))  # every patch token is valid
        for block in self.co:
            t, v = block(t, mask.bool(), v)
        for layer in t_layers[mid:]:
            t = layer_output(layer(t, t_mask))
        for layer in v_layers[mid:]:
            v = layer_output(layer(v, None))
        return self.pool(torch.cat([t[:, 0], v[:, 0]], dim=-1))
