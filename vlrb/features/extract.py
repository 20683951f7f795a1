"""Embedding extraction into the upstream layout, batched, resumable and cached.

`extract_features(bench, encoder_cfg)` writes, under the benchmark root,

  EMBEDDINGS/text/<name>.parquet      sample_id, embedding (list<float32>)            one row per benchmark row
  EMBEDDINGS/vision/<name>.parquet    sample_id, embedding, has_image, image_status   (same order as meta.parquet)
  EMBEDDINGS/<modality>/<name>.meta.json   encoder config + hashes: a re-run with the same encoder and samples
                                           is a no-op
  reports/features/<name>.json        counts, decode failures (sample ids), throughput, device, batch size

Rules (docs/method.md#features-and-fusion, docs/layout.md#embeddings):
  * a sample without an image gets a zero vector, `has_image = False`, `image_status = "none"`;
  * an image that fails to decode gets a zero vector, `has_image = False`, `image_status = "decode_failed"`,
    and is counted and listed in the report (never fatal, never silent);
  * finished batches go to `<name>.parquet.partial/` shard files every `shard_every` batches (and on any
    exception), so an interrupted run continues where it stopped and repeats no finished batch; the final file
    is written to a temporary name and renamed.

Single device (CPU or one GPU): a plain loop, DataLoader workers decode, resize and crop images (uint8 to the
device, normalised there), `torch.inference_mode`, bf16 autocast on GPU; the forward runs on the fastest path
that gives the same embeddings (`runtime`, vlrb/features/runtime.py: ONNX Runtime on a CPU when installed). On a
multi-core CPU several batches are encoded at once instead (`parallel_batches`), one per core, each thread
decoding its own images and running a single-threaded forward; results are written in order.
Prompts are tokenised first and batched by token count, so a batch pads little. Several GPUs (`devices > 1`):
Lightning `Trainer.predict` with DDP, each rank writing shards.
"""
from __future__ import annotations

import contextlib
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset

from vlrb.devices import autocast, resolve_device, resolve_precision
from vlrb.process import import_lightning, is_rank_zero
from vlrb.features.encoders import section_identity, Encoder, _section, as_dict, encoder_class
from vlrb.io import atomic_path, folder_lock, write_json

SCHEMA_VERSION = 1
MODALITIES = ("text", "vision")
MAX_LISTED_FAILURES = 10_000
_RUNTIME = ("batch_size", "num_workers", "dim", "device", "precision", "devices", "shard_every", "engine",
            "strategy", "cpu_threads", "runtime", "decode", "parallel_batches")


# ---------------------------------------------------------------------------------------------- options
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


# ---------------------------------------------------------------------------------------------- hashing
def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_hash(modality: str, family: str, identity: dict) -> str:
    return _sha({"schema": SCHEMA_VERSION, "modality": modality, "family": family,
                 "identity": {k: v for k, v in identity.items() if k not in _RUNTIME}})


def samples_hash(bench, modality: str) -> str:
    """Sample ids plus what is encoded for them (the prompt, or the image reference)."""
    h = hashlib.sha256()
    ids = [str(s) for s in bench.sample_ids]
    if modality == "text":
        for s, p in zip(ids, bench.prompts):
            h.update(f"{s}\x1f{p}\x1e".encode())
    else:
        im = bench.images
        for i, s in enumerate(ids):
            kind, ref = str(im.kinds[i]), im.refs[i]
            ref = hashlib.sha256(str(ref).encode()).hexdigest() if kind == "b64" else str(ref)
            h.update(f"{s}\x1f{kind}\x1f{ref}\x1f{Path(str(im.tsv_files[i])).name}\x1e".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- data
class EncodeDataset(Dataset):
    """Item k -> (row, preprocessed input or None, status, error). Runs in DataLoader workers."""

    def __init__(self, modality: str, source, positions: Sequence[int], preprocess):
        self.modality, self.source, self.positions, self.preprocess = modality, source, list(positions), preprocess

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k: int):
        i = int(self.positions[k])
        if self.modality == "text":
            return i, self.preprocess(self.source[i]), "ok", ""
        try:
            img = self.source[i]
            if img is None:
                return i, None, "none", ""
            return i, self.preprocess(img), "ok", ""
        except Exception as e:  # ImageDecodeError and anything a broken file makes PIL/transforms raise
            return i, None, "decode_failed", f"{type(e).__name__}: {e}"


class CollateEncoded:
    def __init__(self, collate):
        self.collate = collate

    def __call__(self, items):
        rows = np.array([it[0] for it in items], dtype=np.int64)
        status = [it[2] for it in items]
        errors = [it[3] for it in items]
        ok = np.array([s == "ok" for s in status], dtype=bool)
        inputs = self.collate([it[1] for it in items if it[2] == "ok"]) if ok.any() else None
        return rows, status, errors, inputs, ok


def _to_device(inputs: dict, device: torch.device) -> dict:
    nb = device.type == "cuda"
    return {k: v.to(device, non_blocking=nb) for k, v in inputs.items()}


# ---------------------------------------------------------------------------------------------- shards
def _embedding_array(emb: np.ndarray) -> pa.Array:
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n, d = emb.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(emb.reshape(-1)))


def embeddings_to_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<float> column of equal-length rows -> (n, d) float32 (no per-row Python work)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if n == 0:
        return np.zeros((0, 0), np.float32)
    if arr.null_count:
        raise ValueError("embedding column has null rows")
    if isinstance(arr, pa.FixedSizeListArray):
        d = arr.type.list_size
        return arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, d)
    offs = arr.offsets.to_numpy()
    lens = np.diff(offs)
    if (lens != lens[0]).any():
        raise ValueError(f"embedding rows have different lengths ({lens.min()}..{lens.max()})")
    flat = arr.values.to_numpy(zero_copy_only=False)[offs[0]:offs[-1]]
    return flat.astype(np.float32, copy=False).reshape(n, int(lens[0]))


class ShardWriter:
    """Buffers finished batches and writes them as atomic parquet shards into the partial folder."""

    def __init__(self, folder: Path, dim: int, prefix: str):
        self.folder, self.dim, self.prefix = folder, dim, prefix
        self.rows: list[np.ndarray] = []
        self.embs: list[np.ndarray] = []
        self.status: list[str] = []
        self.errors: list[str] = []
        self.n_shards = 0
        self.n_written = 0

    def add(self, sample_ids: Sequence[str], emb: np.ndarray, status: Sequence[str], errors: Sequence[str]):
        self.rows.append(np.asarray(sample_ids, dtype=object))
        self.embs.append(emb)
        self.status.extend(status)
        self.errors.extend(errors)

    def flush(self) -> None:
        if not self.rows:
            return
        ids = np.concatenate(self.rows)
        table = pa.table({"sample_id": pa.array(ids.tolist(), pa.string()),
                          "embedding": _embedding_array(np.concatenate(self.embs)),
                          "status": pa.array(self.status, pa.string()), "error": pa.array(self.errors, pa.string())})
        path = self.folder / f"{self.prefix}-{self.n_shards:05d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        self.n_shards += 1
        self.n_written += len(ids)
        self.rows, self.embs, self.status, self.errors = [], [], [], []


def _shard_prefix(tag: str = "") -> str:
    """Unique per writer: a resumed run in the same second and process must not overwrite earlier shards."""
    import uuid

    return f"shard-{time.strftime('%Y%m%d%H%M%S')}{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _done_ids(folder: Path) -> set[str]:
    done: set[str] = set()
    for f in sorted(folder.glob("*.parquet")):
        try:
            done.update(pq.read_table(f, columns=["sample_id"]).column(0).to_pylist())
        except Exception:  # an unreadable shard (should not happen: shards are renamed into place) is redone
            f.unlink()
    return done


# ---------------------------------------------------------------------------------------------- main entry
def extract_features(bench, encoder_cfg: Any, *, root: str | Path | None = None, force: bool = False,
                     progress: bool = True, modalities: Iterable[str] = MODALITIES,
                     encoders: dict[str, Encoder] | None = None) -> dict:
    """Extract text and vision embeddings of every benchmark row; returns {modality: stats}.

    encoder_cfg: the `encoder` config (conf/encoder/*.yaml): `text` and `vision` sections plus batch_size,
      num_workers, device, precision, devices, shard_every (each may be overridden inside a section).
    root: where EMBEDDINGS/ and reports/ go (default: the benchmark's root).
    force: recompute even if a matching cache exists (also discards a partial run).
    encoders: already built encoders by modality (skips building; used by benchmarks and tests).
    """
    cfg = as_dict(encoder_cfg)
    root = Path(root) if root is not None else (Path(bench.root) if getattr(bench, "root", None) else None)
    if root is None:
        raise ValueError("extract_features: the benchmark has no root folder; pass root=")
    out = {}
    # a rebuild of the same root waits, and does not carry half-written features; the other processes of a
    # multi-device run follow the first one, which holds the lock for them all (they would wait on it forever)
    with folder_lock(root) if is_rank_zero() else contextlib.nullcontext():
        for mod in modalities:
            if mod not in MODALITIES:
                raise ValueError(f"unknown modality {mod!r}; expected text or vision")
            sec = _section(cfg, mod)
            enc = (encoders or {}).get(mod)
            out[mod] = _extract_one(bench, mod, sec, RunOptions.from_cfg(cfg, sec, mod), root, enc, force,
                                    progress)
    return out


def _extract_one(bench, mod: str, sec: dict, opts: RunOptions, root: Path, encoder: Encoder | None,
                 force: bool, progress: bool) -> dict:
    if encoder is not None:
        name, family, identity = encoder.name, encoder.family, encoder.identity()
    else:
        cls = encoder_class(sec, mod)
        name, family, identity = cls.default_name(sec), cls.family, section_identity(sec, cls)
    out_dir = root / "EMBEDDINGS" / mod
    final, meta_path = out_dir / f"{name}.parquet", out_dir / f"{name}.meta.json"
    part = out_dir / f"{name}.parquet.partial"
    report_path = root / "reports" / "features" / f"{name}.json"
    chash, shash = config_hash(mod, family, identity), samples_hash(bench, mod)
    ids = [str(s) for s in bench.sample_ids]
    is_worker = not is_rank_zero()

    if not force and final.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("config_hash") == chash and meta.get("samples_hash") == shash:
            return {"modality": mod, "name": name, "status": "cached", "path": str(final), "n_samples": len(ids),
                    "n_encoded": 0, "report": str(report_path)}

    # the partial folder belongs to one (encoder, samples) pair; anything else is stale
    state_path = part / "state.json"
    if not is_worker:
        if part.exists() and (force or not state_path.exists()
                              or json.loads(state_path.read_text()) != {"config_hash": chash, "samples_hash": shash}):
            shutil.rmtree(part)
        part.mkdir(parents=True, exist_ok=True)
        write_json(state_path, {"config_hash": chash, "samples_hash": shash})
    done = _done_ids(part)
    todo = [i for i, s in enumerate(ids) if s not in done]
    n_resumed = len(ids) - len(todo)

    run: dict = {"n_encoded": 0, "n_forwarded": 0, "wall_s": 0.0, "forward_s": 0.0, "load_s": 0.0}
    device = resolve_device(opts.device)
    dtype = resolve_precision(opts.precision, device)
    if todo:
        t0 = time.perf_counter()
        if encoder is None:
            from vlrb.features.encoders import build_encoder

            encoder = build_encoder(sec, mod)
        run["load_s"] = time.perf_counter() - t0
        t_tok = time.perf_counter()
        if mod == "text":  # token-count-sorted batches pad little (order does not matter: shards are keyed by id)
            source = pretokenize(encoder, bench.prompts, todo)
            todo.sort(key=lambda i: -len(source[i]))
        else:
            source = bench.images
        t_tok = time.perf_counter() - t_tok
        engine = opts.engine if opts.engine != "auto" else ("lightning" if opts.devices > 1 else "loop")
        if engine == "lightning":
            r = _run_lightning(encoder, mod, source, todo, ids, part, opts, device, dtype, progress)
            if r is None:  # a non-zero DDP rank: rank 0 merges
                return {"modality": mod, "name": name, "status": "worker"}
            run.update(r)
        else:
            run.update(_run_loop(encoder, mod, source, todo, ids, part, opts, device, dtype, progress))
        run["wall_s"] += t_tok
    dim = encoder.dim if encoder is not None else None
    meta_path.unlink(missing_ok=True)  # a stale sidecar must never vouch for the file about to be replaced
    stats = _merge(ids, part, final, mod, dim)
    if mod == "text":
        stats["counts"] = {"n_empty_prompts": int(sum(1 for p in bench.prompts if not str(p).strip()))}
    meta = {"schema": SCHEMA_VERSION, "modality": mod, "name": name, "family": family, "config_hash": chash,
            "samples_hash": shash, "n_samples": len(ids), "dim": stats["dim"], "encoder": identity,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(meta_path, meta)
    shutil.rmtree(part, ignore_errors=True)
    report = {
        "modality": mod, "name": name, "family": family, "status": "resumed" if n_resumed and todo else "extracted",
        "path": str(final), "n_samples": len(ids), "dim": stats["dim"],
        "n_encoded": run["n_encoded"], "n_resumed": n_resumed,
        **stats["counts"],
        "throughput_items_s": run["n_encoded"] / run["wall_s"] if run["wall_s"] else None,
        "forward_items_s": run["n_forwarded"] / run["forward_s"] if run["forward_s"] else None,
        "wall_s": run["wall_s"], "forward_s": run["forward_s"], "load_s": run["load_s"],
        "device": str(device) if engine_of(opts) == "loop" else f"{opts.devices}x {device.type}",
        "precision": str(dtype).replace("torch.", "") if dtype is not None else "fp32",
        "batch_size": opts.batch_size, "num_workers": run.get("num_workers", opts.num_workers),
        "batches_in_flight": run.get("batches_in_flight", 1), "engine": engine_of(opts),
        "torch_threads": torch.get_num_threads(), "runtime": run.get("runtime"),
        "max_abs_diff_vs_eager": run.get("max_abs_diff"), "prepare_s": run.get("prepare_s"),
        "failures": stats["failures"][:MAX_LISTED_FAILURES],
        "encoder": identity, "config_hash": chash, "samples_hash": shash, "report": str(report_path),
    }
    write_json(report_path, report)
    return report


def engine_of(opts: RunOptions) -> str:
    return opts.engine if opts.engine != "auto" else ("lightning" if opts.devices > 1 else "loop")


class Pretokenized(dict):
    """row -> token ids of the prompts to encode (what `EncodeDataset` reads for text once tokenised)."""


def pretokenize(encoder: Encoder, prompts, rows) -> Pretokenized:
    return Pretokenized((i, encoder.preprocess(prompts[i])) for i in rows)


def _identity(x):
    return x


def _dataset(encoder: Encoder, mod: str, source, todo, decoder=None) -> tuple["EncodeDataset", "CollateEncoded"]:
    """The items to encode and how a list of them becomes a batch of (rows, status, errors, inputs, ok); with a
    `decoder` (vlrb/features/decode.py) JPEGs stay encoded, for `decoder.finish` to decode on the device."""
    preprocess, collate = (_identity if isinstance(source, Pretokenized) else encoder.preprocess), encoder.collate
    if decoder is not None:
        from vlrb.features.decode import RawImages

        source, preprocess, collate = RawImages(source), decoder.item, decoder.collate
    return EncodeDataset(mod, source, todo, preprocess), CollateEncoded(collate)


def _loader(encoder: Encoder, mod: str, source, todo, opts: RunOptions, device: torch.device,
            decoder=None) -> DataLoader:
    """Batches of `_dataset`, decoded ahead by `opts.num_workers` DataLoader worker processes."""
    nw = opts.num_workers
    if nw and mod == "text":
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked workers + Rust threads deadlock otherwise
    dataset, collate = _dataset(encoder, mod, source, todo, decoder)
    return DataLoader(dataset, batch_size=opts.batch_size, shuffle=False, num_workers=nw, collate_fn=collate,
                      pin_memory=device.type == "cuda", prefetch_factor=4 if nw else None, persistent_workers=False)


def encode_items(encoder: Encoder, mod: str, source, *, batch_size: int = 32,
                 device: str | torch.device = "auto", forward=None) -> np.ndarray:
    """(n, dim) float32 embeddings of `source` (prompts, or images as a Sequence giving PIL/None) in memory,
    through the same preprocessing as extraction; a missing or undecodable image gives a zero vector.
    `forward`: the encoder's forward to use (an `AutoForward` kept across calls); default the module itself."""
    device = resolve_device(device)
    if getattr(encoder, "_vlrb_device", None) != device:  # moved once: `.to` walks every module (ms per call)
        encoder.to(device).eval()
        encoder._vlrb_device = device
    forward = forward or encoder
    dataset, collate = _dataset(encoder, mod, source, range(len(source)))
    out = np.zeros((len(source), encoder.dim), np.float32)
    dtype = resolve_precision("auto", device)
    with torch.inference_mode():
        for s in range(0, len(source), batch_size):  # in this thread, no DataLoader: a request's worth is small
            rows, status, errors, inputs, ok = collate([dataset[k] for k in range(s, min(s + batch_size, len(source)))])
            if inputs is not None:
                with autocast(device, dtype):
                    out[rows[ok]] = forward(_to_device(inputs, device)).float().cpu().numpy()
    return out


def _run_loop(encoder: Encoder, mod, source, todo, ids, part: Path, opts, device, dtype, progress) -> dict:
    from tqdm.auto import tqdm

    from vlrb.features.decode import DeviceDecoder, choose_decode
    from vlrb.features.runtime import prepare_forward

    encoder.to(device).eval()
    writer = ShardWriter(part, encoder.dim, prefix=_shard_prefix())
    decoder = None
    if mod == "vision" and choose_decode(opts.decode, device, encoder.preprocess) == "torchvision":
        decoder = DeviceDecoder(encoder.preprocess)
    threads = torch.get_num_threads()
    if device.type == "cpu" and opts.cpu_threads:
        torch.set_num_threads(int(opts.cpu_threads))
    width = batches_in_flight(opts, device, dtype, decoder is not None)
    if width > 1:  # each batch decodes its own images and runs its forward on one core
        torch.set_num_threads(max(1, torch.get_num_threads() // width))
    prepared, prepare_lock = None, threading.Lock()

    def forward_path(inputs):
        """The prepared forward, built (and checked) on the first batch with inputs, by whichever thread has it."""
        nonlocal prepared
        with prepare_lock:
            if prepared is None:
                prepared = prepare_forward(encoder, opts.runtime, device, dtype, inputs, n_items=len(todo),
                                           spin=opts.num_workers == 0 and width == 1)
        return prepared

    def encode(batch):
        """One batch -> (rows, status, errors, embeddings, items forwarded, forward seconds)."""
        rows, status, errors, inputs, ok = batch
        emb = np.zeros((len(rows), encoder.dim), np.float32)
        if inputs is not None and decoder is not None:
            inputs = _decode_on_device(decoder, inputs, device, status, errors, ok)
        if inputs is None:
            return rows, status, errors, emb, 0, 0.0
        inputs = _to_device(inputs, device)
        with torch.inference_mode():  # per thread: inference mode and autocast are thread-local
            forward = (prepared or forward_path(inputs)).forward
            tf = time.perf_counter()
            with autocast(device, dtype):
                y = forward(inputs)
        if y.shape != (int(ok.sum()), encoder.dim):
            raise ValueError(f"{encoder.name}: forward gave {tuple(y.shape)}, expected "
                             f"({int(ok.sum())}, {encoder.dim})")
        emb[ok] = y.float().cpu().numpy()
        return rows, status, errors, emb, int(ok.sum()), time.perf_counter() - tf

    def results():
        if width == 1:
            for batch in _loader(encoder, mod, source, todo, opts, device, decoder):
                yield encode(batch)
            return
        dataset, collate = _dataset(encoder, mod, source, todo, decoder)
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

    n_fwd, fwd_s, n_batches = 0, 0.0, 0
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), unit=" items", desc=f"{mod}:{encoder.name}", disable=not progress, leave=False)
    try:
        for rows, status, errors, emb, n_ok, seconds in results():
            writer.add([ids[i] for i in rows], emb, status, errors)
            n_fwd, fwd_s, n_batches = n_fwd + n_ok, fwd_s + seconds / width, n_batches + 1
            bar.update(len(rows))
            if n_batches % opts.shard_every == 0:
                writer.flush()
    finally:  # an interruption keeps every finished batch
        writer.flush()
        bar.close()
        torch.set_num_threads(threads)
    if getattr(encoder, "_channels_last", False):
        encoder.set_channels_last(False)  # hand the encoder back as it came
    return {"n_encoded": writer.n_written, "n_forwarded": n_fwd, "wall_s": time.perf_counter() - t0,
            "forward_s": fwd_s, "runtime": prepared.runtime if prepared else None,
            "max_abs_diff": prepared.max_abs_diff if prepared else None,
            "prepare_s": prepared.prepare_s if prepared else 0.0, "batches_in_flight": width,
            "num_workers": 0 if width > 1 else opts.num_workers}


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


def _decode_on_device(decoder, batch: dict, device, status: list, errors: list, ok: np.ndarray) -> dict | None:
    """Pixels of the batch's JPEGs decoded on the device; a JPEG that fails is marked like a PIL failure."""
    inputs, failed = decoder.finish(batch, device)
    at = np.flatnonzero(ok)  # the batch's inputs are its ok rows, in order
    for j, err in failed:
        r = at[j]
        status[r], errors[r], ok[r] = "decode_failed", err, False
    return inputs


def _run_lightning(encoder: Encoder, mod, source, todo, ids, part: Path, opts, device, dtype, progress) -> dict | None:
    """Several GPUs (or an explicit engine=lightning): Trainer.predict; each rank writes its own shards."""
    L = import_lightning()  # slow to import (seconds): only on this path

    from vlrb.features.lightning_predict import EncoderPredictModule, ShardPredictionWriter

    if device.type == "cuda":
        accelerator = "gpu"
        precision = {torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed", None: "32-true"}[dtype]
    else:
        accelerator, precision = "cpu", ("bf16-mixed" if dtype == torch.bfloat16 else "32-true")
    strategy = opts.strategy if opts.devices > 1 else "auto"
    writer = ShardPredictionWriter(part, encoder.dim, ids, opts.shard_every)
    trainer = L.Trainer(accelerator=accelerator, devices=opts.devices, strategy=strategy, precision=precision,
                        callbacks=[writer], logger=False, enable_progress_bar=progress, enable_checkpointing=False,
                        enable_model_summary=False, inference_mode=True)
    t0 = time.perf_counter()
    trainer.predict(EncoderPredictModule(encoder), dataloaders=_loader(encoder, mod, source, todo, opts, device),
                    return_predictions=False)
    trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return None
    return {"n_encoded": len(todo), "n_forwarded": 0, "wall_s": time.perf_counter() - t0, "forward_s": 0.0}


def _merge(ids: list[str], part: Path, final: Path, mod: str, dim: int | None) -> dict:
    """All shards -> one parquet in benchmark row order (atomic); counts and failures."""
    files = sorted(part.glob("*.parquet"))
    if not files:
        raise RuntimeError(f"{part}: no finished shards to merge")
    table = pa.concat_tables([pq.read_table(f) for f in files])
    got = table.column("sample_id").to_pylist()
    first: dict[str, int] = {}
    for j, s in enumerate(got):
        first.setdefault(s, j)  # DDP padding repeats a few samples
    missing = [s for s in ids if s not in first]
    if missing:
        raise RuntimeError(f"{part}: {len(missing)} samples were not encoded (e.g. {missing[:5]}); re-run to finish")
    take = pa.array([first[s] for s in ids], pa.int64())
    table = table.take(take)
    emb = embeddings_to_numpy(table.column("embedding"))
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    errors = table.column("error").to_pylist()
    cols = {"sample_id": pa.array(ids, pa.string()), "embedding": _embedding_array(emb)}
    counts = {}
    failures = []
    if mod == "vision":
        cols["has_image"] = pa.array(status == "ok", pa.bool_())
        cols["image_status"] = pa.array(status.tolist(), pa.string())
        failed = np.flatnonzero(status == "decode_failed")
        failures = [{"sample_id": ids[i], "error": errors[i]} for i in failed]
        counts = {"n_with_image": int((status == "ok").sum()), "n_without_image": int((status == "none").sum()),
                  "n_decode_failed": int(len(failed))}
    with atomic_path(final) as tmp:
        pq.write_table(pa.table(cols), tmp)
    return {"dim": int(emb.shape[1]), "counts": counts, "failures": failures}
