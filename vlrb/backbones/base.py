"""The backbone interface, how one is built from its factory, and the per-sample processor that runs in DataLoader workers.

A backbone is an `nn.Module` that turns a batch of (prompt, image) pairs into one pooled joint embedding:

    bb = build_backbone(functools.partial(OfflineBackbone, tiny=True))   # what conf/backbone/tiny_offline.yaml makes
    item = bb.processor("What is shown?", img)  # in Dataset.__getitem__ (a worker process): ids + pixels
    batch = bb.processor.collate([item, ...])   # pads ids, stacks pixels
    h = bb(batch)                                # (B, bb.hidden_size)

`bb.processor` is a small picklable object (tokenizer + image transform), not a bound method of the
module, so workers never copy the weights. A backbone is chosen with `backbone=<name>`: conf/backbone/<name>.yaml
names its class (`_target_`, `_partial_: true`), which says which file names it (`config_name`).

Images: a sample without an image, or whose image fails to decode, gets the placeholder: a flat
mid-grey (128, 128, 128) square. Mid-grey maps to about 0 after the usual normalisations, i.e. "no visual
evidence", where the original's black (or, in RouterDC, white) image is an extreme input. The callers count
such samples and report them (see `vlrb.backbones.data`).
"""
from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from vlrb.features.sections import as_dict
from vlrb.preprocess import ImagePreprocess, PadIds, TokenizeOne
from vlrb.weights import WeightsUnavailableError, local_snapshot, offline_env, offline_hint, packaged_tokenizer

log = logging.getLogger(__name__)

PLACEHOLDER_RGB = (128, 128, 128)
OFFLINE_HINT = offline_hint("backbone=offline")
BackboneUnavailableError = WeightsUnavailableError  # the name users of the backbones catch


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of an HF encoder: `model.encoder.layer` (BERT, older ViT) or `model.layers`
    (ViT in recent transformers)."""
    enc = getattr(model, "encoder", None)
    return enc.layer if enc is not None else model.layers


def layer_output(out) -> torch.Tensor:
    """The hidden states a transformer layer returns: a tensor in transformers 5, the first item of a tuple before."""
    return out[0] if isinstance(out, (tuple, list)) else out


def placeholder_image(size: int = 224):
    from PIL import Image

    return Image.new("RGB", (int(size), int(size)), PLACEHOLDER_RGB)


# ---------------------------------------------------------------------------------------------- processor
class Processor:
    """prompt + PIL image -> {"input_ids": list[int], "pixel_values": (3, S, S)}; `collate` batches them.

    `image_transform` maps a PIL RGB image to a CHW float tensor; `image=None` uses the placeholder. A torchvision
    `Compose` ending in ToTensor + Normalize (what `vlrb.preprocess.image_transform` builds) is split: the sample
    keeps the resized image as uint8 (4x less to move from a decode worker and to a GPU), and the backbone turns a
    batch into its float input with `normalize`, on the model's device, with the same operations.
    """

    def __init__(self, tokenizer, image_transform: Callable, image_size: int, max_length: int = 128):
        self.tokenizer = tokenizer
        self.pixels = ImagePreprocess(image_transform)
        self.image_size = int(image_size)
        self.max_length = int(max_length)
        self.text = TokenizeOne(tokenizer, self.max_length)
        self.pad = PadIds(getattr(tokenizer, "pad_token_id", None))

    def image(self, img) -> torch.Tensor:
        return self.pixels(placeholder_image(self.image_size) if img is None else img)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """A collated batch of `image` outputs -> the float model input (a float batch is returned as it is)."""
        return self.pixels.normalize(pixels)

    def __call__(self, prompt: str | None, img) -> dict:
        return {"input_ids": self.text(prompt), "pixel_values": self.image(img)}

    def collate(self, items: Sequence[dict]) -> dict:
        return {**self.pad([it["input_ids"] for it in items]),
                "pixel_values": torch.stack([it["pixel_values"] for it in items])}


# ---------------------------------------------------------------------------------------------- base class
class Backbone(nn.Module):
    """Subclasses build `self.processor` and the network, set `self.hidden_size`, and implement `forward`.

    Freezing (the `freeze` parameter every backbone takes):
      none     every weight trains (upstream VL-RouterBench: `freeze_backbone=False`)
      towers   the pretrained unimodal towers (ViT; MiniLM + EfficientNet) are frozen, the rest trains
      partial  the towers are frozen except their last `train_last` blocks (and their final norm / head)
    Frozen towers run in eval mode (no BatchNorm statistics drift, no dropout), and autograd stores no
    activations below the first trainable layer, which is what makes CPU training affordable.
    """

    name: str = ""  # its conf/backbone name (tiny_ for a tiny one), set by build_backbone
    config_name: str = ""  # the conf/backbone/<name>.yaml that names this class
    # convolutional towers (attribute names) whose batch norms are folded into their convolutions for routing:
    # only towers built as (conv, bn) pairs in forward order (vlrb.backbones.fold)
    fold_for_inference: tuple[str, ...] = ()

    def __init__(self, freeze: str = "none", train_last: int = 1):
        super().__init__()
        if freeze not in ("none", "towers", "partial"):
            raise ValueError(f"freeze must be none, towers or partial; got {freeze!r}")
        self.freeze, self.train_last = freeze, int(train_last)
        self.hidden_size: int = 0
        self.processor: Processor | None = None
        self.params: dict[str, Any] = {}
        self._frozen: list[nn.Module] = []

    def forward(self, batch: dict) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @contextlib.contextmanager
    def inference(self):
        """For routing (eval mode, no gradients): the towers of `fold_for_inference` swapped for copies with their
        batch norms folded in (the same scores up to float rounding, less time). The copies are kept until a
        weight of the tower changes (training, loading, moving to another device); the trained towers, their
        state_dict and checkpoints are never touched."""
        if not self.fold_for_inference or self.training:
            yield self
            return
        from vlrb.backbones.fold import fold_batchnorms

        cache = self.__dict__.setdefault("_folded_towers", {})  # plain attribute: not a submodule, never saved
        trained = {name: self._modules[name] for name in self.fold_for_inference}
        for name, tower in trained.items():
            key = tuple((t.data_ptr(), t._version, t.device) for t in (*tower.parameters(), *tower.buffers()))
            if cache.get(name, (None,))[0] != key:
                folded = copy.deepcopy(tower).eval()
                fold_batchnorms(folded)
                cache[name] = (key, folded)
            self._modules[name] = cache[name][1]
        try:
            yield self
        finally:
            self._modules.update(trained)

    def towers(self) -> list[tuple[list[nn.Module], list[nn.Module], list[nn.Module]]]:
        """Per pretrained tower: (stem modules, ordered blocks, head modules after the last block)."""
        return []

    def new_modules(self) -> list[nn.Module]:
        """The randomly initialised parts (fusion, projections) that a router may train at its `head_lr`."""
        return []

    def apply_freeze(self) -> None:
        """Call at the end of a subclass __init__."""
        self._frozen = []
        if self.freeze == "none":
            return
        for stem, blocks, head in self.towers():
            if self.freeze == "towers":
                frozen = list(stem) + list(blocks) + list(head)
            else:
                keep = max(0, min(self.train_last, len(blocks)))
                frozen = list(stem) + list(blocks[:len(blocks) - keep])
            for m in frozen:
                m.requires_grad_(False)
            self._frozen.extend(frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen:  # frozen parts always behave as at inference
            m.eval()
        return self

    def describe(self) -> dict:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"backbone": self.name, "hidden_size": self.hidden_size, "freeze": self.freeze,
                "params_total": int(total), "params_trainable": int(trainable)}


# ---------------------------------------------------------------------------------------------- building
def build_backbone(factory: "Callable[..., Backbone] | Backbone | str | dict", **params: Any) -> "Backbone":
    """A backbone from its factory (the `_partial_` of conf/backbone/<name>.yaml: its `_target_` class with keyword
    arguments), as it is when already built; `params` are passed on (e.g. the router's seed). A name
    (`"tiny_offline"`) or `{name, params}` mapping, as routers saved by the first versions hold, is looked up among
    vlrb's own backbone classes by their `config_name` (the conf/backbone file that names them)."""
    if isinstance(factory, Backbone):
        return factory
    if isinstance(factory, (str, dict)):
        factory, given = backbone_factory(factory)
        params = {**given, **params}
    bb = factory(**params)
    func = getattr(factory, "func", factory)
    tiny = {**getattr(factory, "keywords", {}), **params}.get("tiny")
    bb.name = ("tiny_" if tiny else "") + getattr(func, "config_name", getattr(func, "__name__", "backbone"))
    bb.params = {**getattr(factory, "keywords", {}), **params}
    return bb


def backbone_factory(spec: "str | dict") -> tuple[Callable[..., "Backbone"], dict]:
    """(class, parameters) of a backbone named `offline`, `tiny_offline`, ... or `{name, params}` (legacy form)."""
    from vlrb.components import own_classes

    spec = dict(as_dict(spec)) if not isinstance(spec, str) else {"name": spec}
    name, params = str(spec["name"]), dict(spec.get("params") or {})
    if name.startswith("tiny_"):
        name, params = name[len("tiny_"):], {"tiny": True, **params}
    classes = {getattr(c, "config_name", None): c for c in own_classes(Backbone).values()}
    if name not in classes:
        raise KeyError(f"unknown backbone {spec['name']!r}; backbones are chosen with backbone=<name> "
                       f"(conf/backbone/): {', '.join(sorted(n for n in classes if n))}")
    return classes[name], params


# ---------------------------------------------------------------------------------------------- offline loading
def resolve_local(name_or_path: str, what: str) -> Path:
    """A local folder for an HF id: the folder itself or its snapshot in the local HF cache. Never downloads."""
    return local_snapshot(name_or_path, what,
                          f"Put the model folder on this machine and pass its path, or {OFFLINE_HINT}.")


class HashTokenizer:
    """`tokenizer: hash`: lower-cased words hashed into a BERT-sized vocabulary, [CLS] ... [SEP].

    Dependency-free and meaningless: only for throughput checks with random weights (`random_init`) on a machine
    without the packaged tokenizer. Never select it for a router you evaluate.
    """

    vocab_size, pad_token_id, cls_token_id, sep_token_id = 30522, 0, 101, 102

    def __call__(self, text: str, truncation: bool = True, max_length: int = 512) -> dict:
        import zlib

        ids = [1000 + zlib.crc32(w.encode()) % (self.vocab_size - 1000) for w in str(text).lower().split()]
        ids = [self.cls_token_id] + ids[:max(0, max_length - 2)] + [self.sep_token_id]
        return {"input_ids": ids}


def load_tokenizer(name_or_path: str | None, fallback_dirs: Sequence[str | Path] = ()):
    """The tokenizer `name_or_path` (local only); else the first fallback folder that has one; else the packaged
    MiniLM tokenizer (same uncased WordPiece vocabulary as bert-base-uncased), with a warning.
    `"hash"` selects the `HashTokenizer` (throughput checks only)."""
    from transformers import AutoTokenizer

    if name_or_path == "hash":
        return HashTokenizer()
    offline_env()
    tried = []
    if name_or_path:
        try:
            return AutoTokenizer.from_pretrained(str(resolve_local(name_or_path, "tokenizer")), local_files_only=True)
        except (BackboneUnavailableError, OSError, ValueError) as e:
            tried.append(f"{name_or_path} ({type(e).__name__})")
    for d in fallback_dirs:
        try:
            return AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        except (OSError, ValueError, TypeError):
            tried.append(str(d))
    log.warning("tokenizer: %s not available offline; using the packaged all-MiniLM-L6-v2 tokenizer (the same "
                "uncased WordPiece vocabulary as bert-base-uncased)", ", ".join(tried) or "none configured")
    return packaged_tokenizer()
