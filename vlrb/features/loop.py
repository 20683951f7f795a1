"""The single-process extraction engine (CPU or one GPU): batches from a DataLoader, or several at once on a
multi-core CPU, each encoded by `BatchEncoder` and written in order through `ShardWriter`.

The forward runs on the fastest path that gives the same embeddings (`runtime`, vlrb/features/runtime.py: ONNX
Runtime on a CPU when installed), checked on the first batch. On a multi-core CPU several batches are encoded at
once (`parallel_batches`), one per core, each thread decoding its own images and running a single-threaded
forward; elsewhere DataLoader workers decode ahead.
"""
from __future__ import annotations

import itertools
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from vlrb.features.batches import BatchEncoder, make_dataset, make_loader
from vlrb.features.options import RunOptions, batches_in_flight
from vlrb.features.shards import ShardWriter


def run_loop(encoder, mod: str, source, todo: list[int], ids: list[str], part: Path, opts: RunOptions,
             device: torch.device, dtype, progress: bool) -> dict:
    """Encode rows `todo` of `source` into shards under `part`; the run's counts and timings."""
    from tqdm.auto import tqdm

    from vlrb.features.decode import DeviceDecoder, choose_decode
    from vlrb.features.runtime import prepare_forward

    encoder.to(device).eval()
    writer = ShardWriter(part, ids, opts.shard_every)
    decoder = None
    if mod == "vision" and choose_decode(opts.decode, device, encoder.preprocess) == "torchvision":
        decoder = DeviceDecoder(encoder.preprocess)
    threads = torch.get_num_threads()
    if device.type == "cpu" and opts.cpu_threads:
        torch.set_num_threads(int(opts.cpu_threads))
    width = batches_in_flight(opts, device, dtype, decoder is not None)
    if width > 1:  # each batch decodes its own images and runs its forward on one core
        torch.set_num_threads(max(1, torch.get_num_threads() // width))
    encode = BatchEncoder(encoder, device, dtype, decoder=decoder, prepare=lambda inputs: prepare_forward(
        encoder, opts.runtime, device, dtype, inputs, n_items=len(todo), spin=opts.num_workers == 0 and width == 1))

    def results():
        if width == 1:
            for batch in make_loader(encoder, mod, source, todo, opts.batch_size, opts.num_workers, device, decoder):
                yield encode(batch)
            return
        dataset, collate = make_dataset(encoder, mod, source, todo, decoder)
        n, bs = len(dataset), opts.batch_size

        def task(s):
            return encode(collate([dataset[j] for j in range(s, min(n, s + bs))]))

        starts = iter(range(0, n, bs))
        pool = ThreadPoolExecutor(width, thread_name_prefix="vlrb-encode")
        try:  # a window of batches in flight, handed back in order
            window = deque(pool.submit(task, s) for s in itertools.islice(starts, 4 * width))
            while window:
                try:
                    done = window.popleft().result()
                except BaseException:  # a failed batch (or Ctrl-C): the batches already encoded are still written
                    for f in window:
                        f.cancel()
                    yield from (f.result() for f in window if not f.cancelled() and f.exception() is None)
                    raise
                window.extend(pool.submit(task, s) for s in itertools.islice(starts, 1))
                yield done
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    n_fwd, fwd_s = 0, 0.0
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), unit=" items", desc=f"{mod}:{encoder.name}", disable=not progress, leave=False)
    try:
        for b in results():
            writer.add(b.rows, b.emb, b.status, b.errors)
            n_fwd, fwd_s = n_fwd + b.n_forwarded, fwd_s + b.forward_s / width
            bar.update(len(b.rows))
    finally:  # an interruption keeps every finished batch
        writer.flush()
        bar.close()
        torch.set_num_threads(threads)
    if getattr(encoder, "_channels_last", False):
        encoder.set_channels_last(False)  # hand the encoder back as it came
    prepared = encode.prepared
    return {"n_encoded": writer.n_written, "n_forwarded": n_fwd, "wall_s": time.perf_counter() - t0,
            "forward_s": fwd_s, "runtime": prepared.runtime if prepared else None,
            "max_abs_diff": prepared.max_abs_diff if prepared else None,
            "prepare_s": prepared.prepare_s if prepared else 0.0, "batches_in_flight": width,
            "num_workers": 0 if width > 1 else opts.num_workers}
