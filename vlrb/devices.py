"""Where the paths outside Lightning run (feature extraction, routing raw inputs, serving): the device, the precision,
and the autocast context. Lightning trains on the devices its trainer preset names (conf/trainer/)."""
from __future__ import annotations

import contextlib
import functools

import torch

PRECISIONS = {"fp32": None, "32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
              "fp16": torch.float16, "16": torch.float16, "float16": torch.float16}


@functools.cache
def cuda_available() -> bool:
    """Asked once per process: torch's NVML-based check loads a library on every call (0.4 ms, per request when
    serving)."""
    return torch.cuda.is_available()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """auto: the GPU when there is one, else the CPU; an explicit cuda device needs CUDA."""
    if str(device) == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not cuda_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; use device=auto or cpu")
    return d


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 autocast on a GPU that supports it (else fp16), full fp32 on CPU."""
    p = str(precision).lower()
    if p == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if p not in PRECISIONS:
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16; got {precision!r}")
    return PRECISIONS[p]


def device_precision(accelerator: str = "auto") -> str:
    """The Lightning precision a trainer preset that says `auto` means: bf16-mixed on a GPU with bf16 (16-mixed on an
    older one), 32-true on a CPU (conf/trainer/auto.yaml and ddp.yaml; resolved when the config is composed)."""
    if str(accelerator).lower() in ("gpu", "cuda", "auto") and cuda_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for a reduced precision; nothing for fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@functools.cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # made once (15 µs per limit after, 4 ms per threadpool_limits call)


def one_blas_thread():
    """A context in which NumPy's BLAS (OpenBLAS) runs on one thread. Routing a few raw inputs alternates small NumPy
    products (scaler, k-NN, logistic heads) with torch forwards; after a product, OpenBLAS's idle threads spin and
    take the cores from the torch forward that follows (the text encoder ran 2x slower, measured on 2 cores)."""
    return _blas_controller().limit(limits=1, user_api="blas")
