"""How an extraction runs (never what it gives): batch size, workers, device, precision, engine, runtime.

Each setting is a top-level key of the encoder config (`conf/encoder/_base.yaml`), and may be overridden inside
a modality's section (`text:` / `vision:`). None of them changes the embeddings' cache key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from vlrb.devices import resolve_device


@dataclass
class RunOptions:
    batch_size: int | str = 32  # auto: auto_batch_size(device, modality)
    num_workers: int | str = "auto"  # auto: auto_workers(device)
    device: str = "auto"
    precision: str = "auto"
    devices: int = 1
    shard_every: int = 16  # batches per resumable shard
    engine: str = "auto"  # auto | loop | lightning
    strategy: str = "ddp"  # Lightning strategy when engine=lightning
    cpu_threads: int | None = None  # torch intra-op threads on CPU during extraction (None: torch's default)
    runtime: str = "auto"  # auto | eager | compile | onnxruntime (vlrb/features/runtime.py)
    decode: str = "auto"  # auto | pil | torchvision (JPEG decoded on the extraction device; vlrb/features/decode.py)
    parallel_batches: int | str = "auto"  # batches encoded at once, one thread each (auto: batches_in_flight)

    @classmethod
    def from_cfg(cls, cfg: dict, section: dict, modality: str = "text") -> "RunOptions":
        """Top-level keys, overridden by the same keys inside the modality's section."""
        kw = {}
        for f in cls.__dataclass_fields__:
            v = section.get(f, cfg.get(f))
            if v is not None:
                kw[f] = v
        o = cls(**kw)
        if o.num_workers == "auto":
            o.num_workers = auto_workers(resolve_device(o.device))
        elif not str(o.num_workers).isdigit():
            raise ValueError(f"num_workers must be auto or a whole number >= 0, got {o.num_workers!r}")
        if str(o.parallel_batches) != "auto" and not (str(o.parallel_batches).isdigit() and int(o.parallel_batches)):
            raise ValueError(f"parallel_batches must be auto or a whole number >= 1, got {o.parallel_batches!r}")
        if o.batch_size == "auto":
            o.batch_size = auto_batch_size(resolve_device(o.device), modality)
        elif not str(o.batch_size).isdigit() or not int(o.batch_size):
            raise ValueError(f"batch_size must be auto or a whole number >= 1, got {o.batch_size!r}")
        o.batch_size, o.num_workers, o.shard_every = int(o.batch_size), int(o.num_workers), max(1, int(o.shard_every))
        o.devices = int(o.devices) if str(o.devices).isdigit() else (torch.cuda.device_count() or 1)
        return o

    @property
    def engine_name(self) -> str:
        """The engine that runs: `engine`, or for auto, lightning on several devices and the loop on one."""
        return self.engine if self.engine != "auto" else ("lightning" if self.devices > 1 else "loop")


RUN_KEYS = tuple(RunOptions.__dataclass_fields__)  # the settings of a section that are RunOptions, not the encoder's


def auto_batch_size(device: torch.device, modality: str) -> int:
    """`batch_size: auto`: 16 images per batch on a CPU, 32 otherwise. With a batch per core in flight, 16 images
    of 224 px keep each forward's activations in its core's cache: the demo's vision pipeline ran 12% faster than
    at 32 (benchmarks/results/cpu_speed_2core.md). A GPU wants larger batches than either: raise it there."""
    return 16 if device.type == "cpu" and modality == "vision" else 32


def auto_workers(device: torch.device, cores: int | None = None) -> int:
    """DataLoader workers for `num_workers: auto`. On a CPU the workers share the cores with the forward, which
    uses them all: half the cores, at most 4 (on 2 cores one worker is 15% faster than two, pipeline 73.5% vs
    67.5% of the bare Lite0 forward, benchmarks/results/cpu_speed_2core.md). On a GPU the CPU only decodes and
    feeds it: every core but one, at most 8."""
    cores = cores or os.cpu_count() or 1
    if device.type == "cpu":
        return min(4, max(1, cores // 2))
    return min(8, max(1, cores - 1))


def batches_in_flight(opts: RunOptions, device: torch.device, dtype, device_decode: bool) -> int:
    """Batches encoded at once (`parallel_batches`). auto: on a CPU in fp32, under ONNX Runtime or eager, one
    batch per core, each decoding its own images and running its forward on one thread; else 1 (one batch at a
    time on every core, DataLoader workers decoding ahead). On the 2-core machine this was tuned on, two
    single-threaded Lite0 forwards ran as fast as one two-threaded forward, and decoding inside them left no
    worker process competing for the cores (benchmarks/results/cpu_speed_2core.md)."""
    if str(opts.parallel_batches) != "auto":
        return max(1, int(opts.parallel_batches))
    if (device.type != "cpu" or dtype is not None or device_decode or opts.runtime == "compile"
            or torch.get_num_threads() < 2):
        return 1
    return torch.get_num_threads()
