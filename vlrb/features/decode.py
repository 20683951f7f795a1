"""JPEG decoding on the extraction device: the DataLoader workers only read the encoded bytes, and the main
process decodes a whole batch with `torchvision.io.decode_jpeg` on the device (nvJPEG on a GPU), then resizes
and crops it there with the encoder's own resize / crop steps. Only compressed bytes cross the process boundary
and the host-to-device link, and the CPU workers stop being the bottleneck of a fast GPU.

    decode: pil          PIL in the workers (resize and crop there too): the reference pixels
            torchvision  this module; images that are not JPEG (PNG, ...) are still decoded by PIL in the workers
            auto         torchvision when extracting on a GPU, pil elsewhere

It applies to encoders whose preprocessing is resize + centre crop + normalise (timm and the tiny test models,
`ImagePreprocess.gives_uint8`). The pixels are those of another decoder and another resampling implementation,
so embeddings differ from the PIL path by a small amount (bench_features.py prints it); on a CPU the PIL path
stays the default. A JPEG that does not decode is reported as `decode_failed`, as with PIL.
"""
from __future__ import annotations

import io
from typing import Sequence

import torch

DECODES = ("auto", "pil", "torchvision")
JPEG_MAGIC = b"\xff\xd8"


def choose_decode(decode: str, device: torch.device, preprocess) -> str:
    """pil or torchvision for this run (see the module docstring)."""
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {', '.join(DECODES)}; got {decode!r}")
    fits = bool(getattr(preprocess, "gives_uint8", False))
    if decode == "torchvision" and not fits:
        raise ValueError("decode=torchvision needs an encoder whose preprocessing is resize + crop + normalise "
                         "(timm families); this one uses its own image processor: use decode=pil or auto")
    if decode == "auto":
        return "torchvision" if device.type == "cuda" and fits else "pil"
    return decode


class RawImages:
    """`raw[i]` -> the encoded image bytes of row i of an image loader, or None (no image)."""

    def __init__(self, images):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images.raw_bytes(i)


class EncodedJpeg:
    """JPEG bytes as a uint8 tensor, to be decoded on the device."""

    def __init__(self, data: torch.Tensor):
        self.data = data


class DeviceDecoder:
    """The three pieces the extraction loop plugs in: `item` (worker), `collate` (worker), `finish` (device)."""

    def __init__(self, preprocess):
        self.preprocess = preprocess  # ImagePreprocess: its `resize` steps also run on tensors

    def item(self, raw: bytes):
        """Worker side: a JPEG stays encoded; anything else is decoded by PIL and resized here."""
        if raw[:2] == JPEG_MAGIC:
            return EncodedJpeg(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
        from PIL import Image

        img = Image.open(io.BytesIO(raw))
        img.load()
        return self.preprocess(img)

    def collate(self, items: Sequence) -> dict:
        jpeg = [j for j, it in enumerate(items) if isinstance(it, EncodedJpeg)]
        pixels = [j for j, it in enumerate(items) if not isinstance(it, EncodedJpeg)]
        return {"jpeg": [items[j].data for j in jpeg], "jpeg_at": jpeg,
                "pixels": torch.stack([items[j] for j in pixels]) if pixels else None, "pixels_at": pixels,
                "n": len(items)}

    def finish(self, batch: dict, device: torch.device) -> tuple[dict | None, list[tuple[int, str]]]:
        """({"pixel_values": (n_ok, 3, H, W) uint8 on device} or None, [(position in the batch, error), ...])."""
        out: list[torch.Tensor | None] = [None] * batch["n"]
        failed: list[tuple[int, str]] = []
        if batch["pixels"] is not None:
            px = batch["pixels"].to(device, non_blocking=True)
            for k, j in enumerate(batch["pixels_at"]):
                out[j] = px[k]
        for j, img in zip(batch["jpeg_at"], decode_jpegs(batch["jpeg"], device)):
            if isinstance(img, Exception):
                failed.append((j, f"{type(img).__name__}: {img}"))
            else:
                out[j] = self.preprocess.resize(img)
        kept = [x for x in out if x is not None]
        return ({"pixel_values": torch.stack(kept)} if kept else None), failed


def decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list:
    """RGB uint8 CHW tensors on `device`, batched; when the batch call fails, one by one (an Exception per failure)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not data:
        return []
    try:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
    except Exception:  # a broken file spoils the batched call: find it
        out = []
        for d in data:
            try:
                out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
            except Exception as e:
                out.append(e)
        return out
