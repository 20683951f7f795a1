"""Per-sample preprocessing shared by the feature encoders and the end-to-end backbones.

Each piece is a small picklable object or function (no model inside), so DataLoader workers run it on one
prompt or image at a time: tokenise a prompt, pad a batch of token ids, resize and normalise an image.
"""
from __future__ import annotations

from typing import Sequence

import torch


class TokenizeOne:
    """prompt -> token ids (picklable, runs in DataLoader workers); None reads as the empty prompt."""

    def __init__(self, tokenizer, max_length: int, prefix: str = ""):
        self.tokenizer, self.max_length, self.prefix = tokenizer, int(max_length), prefix or ""

    def __call__(self, text) -> list[int]:
        text = "" if text is None else str(text)
        return list(self.tokenizer(self.prefix + text, truncation=True, max_length=self.max_length)["input_ids"])


class PadIds:
    """A batch of token-id lists -> right-padded `input_ids` and their `attention_mask` (B, longest)."""

    def __init__(self, pad_id: int | None):
        self.pad_id = int(pad_id) if pad_id is not None else 0

    def __call__(self, items: Sequence[Sequence[int]]) -> dict:
        n = max(1, max(len(x) for x in items))
        ids = torch.full((len(items), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), n), dtype=torch.long)
        for r, x in enumerate(items):
            ids[r, :len(x)] = torch.as_tensor(x, dtype=torch.long)
            mask[r, :len(x)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def to_rgb(img):
    """A PIL image in RGB mode (greyscale, palette and RGBA images are converted)."""
    return img if getattr(img, "mode", "RGB") == "RGB" else img.convert("RGB")


def image_transform(size: int, mean: Sequence[float], std: Sequence[float], crop_pct: float | None = None):
    """Resize (to a square, or shorter side size/crop_pct then centre-crop) -> tensor -> normalise (bicubic)."""
    from torchvision import transforms as T

    if crop_pct:
        steps = [T.Resize(int(round(size / crop_pct)), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)]
    else:
        steps = [T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC)]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(list(mean), list(std))])


class ImagePreprocess:
    """PIL image -> CHW tensor through `transform` (picklable).

    A torchvision `Compose` that ends in ToTensor + Normalize (the timm and `image_transform` pipelines) is split:
    the resize / crop steps run here, in the decode worker, and give a uint8 tensor (4x less to move between
    processes and to a GPU); `normalize` turns a batch of them into the float input on the model's device, with
    the same operations as ToTensor + Normalize (x / 255, - mean, / std), so the numbers are the same. Any other
    transform (an HF image processor) runs whole and gives its float tensor.
    """

    def __init__(self, transform):
        self.transform = transform
        self.resize, self.mean, self.std = _split_normalize(transform)

    @property
    def gives_uint8(self) -> bool:
        return self.resize is not None

    def __call__(self, img) -> torch.Tensor:
        img = to_rgb(img)
        if self.resize is None:
            return self.transform(img)
        from torchvision.transforms.functional import pil_to_tensor

        return pil_to_tensor(self.resize(img))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """A (B, 3, H, W) uint8 batch -> float32 model input; a float batch is returned as it is."""
        if pixels.dtype != torch.uint8:
            return pixels
        if self.mean is None:
            raise ValueError("a uint8 image batch, but this preprocessing has no mean/std to normalise it with")
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.std, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
        return pixels.float().div(255).sub(mean).div(std)


def _split_normalize(transform):
    """(resize/crop steps, mean, std) of a Compose [..., ToTensor, Normalize]; (None, None, None) otherwise."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    if len(steps) < 2 or not isinstance(steps[-1], T.Normalize) or type(steps[-2]).__name__ not in (
            "ToTensor", "MaybeToTensor"):
        return None, None, None
    geometric = [s for s in steps[:-2] if isinstance(s, (T.Resize, T.CenterCrop))]
    if len(geometric) != len(steps) - 2:  # an unknown step: keep the whole transform
        return None, None, None
    norm = steps[-1]
    mean = [float(x) for x in torch.as_tensor(norm.mean).flatten()]
    std = [float(x) for x in torch.as_tensor(norm.std).flatten()]
    return T.Compose(geometric), mean, std
