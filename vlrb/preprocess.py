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
    """PIL image -> normalised CHW float tensor through `transform` (picklable)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img) -> torch.Tensor:
        return self.transform(to_rgb(img))
