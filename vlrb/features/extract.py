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
    is written to a temporary name and renamed (vlrb/features/shards.py).

One engine: batches are encoded by `vlrb.features.batches.BatchEncoder` and written through
`vlrb.features.shards.ShardWriter`, driven on one device (CPU or one GPU) by a plain loop
(vlrb/features/loop.py: DataLoader workers decode, or several batches at once on a multi-core CPU), and on
several (`devices > 1`, or `engine: lightning`) by Lightning's `Trainer.predict` with DDP, each rank writing its
own shards (vlrb/features/lightning_predict.py). Prompts are tokenised first and batched by token count, so a
batch pads little. How it runs: vlrb/features/options.py.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from vlrb.devices import resolve_device, resolve_precision
from vlrb.features.base import Encoder
from vlrb.features.batches import pretokenize
from vlrb.features.options import RunOptions
from vlrb.features.sections import as_dict, build_encoder, encoder_identity, section
from vlrb.features.shards import done_ids, merge_shards
from vlrb.io import folder_lock, write_json
from vlrb.process import is_rank_zero

SCHEMA_VERSION = 1
MODALITIES = ("text", "vision")
MAX_LISTED_FAILURES = 10_000
_RUNTIME = ("batch_size", "num_workers", "dim", "device", "precision", "devices", "shard_every", "engine",
            "strategy", "cpu_threads", "runtime", "decode", "parallel_batches")


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
            sec = section(cfg, mod)
            enc = (encoders or {}).get(mod)
            out[mod] = _extract_one(bench, mod, sec, RunOptions.from_cfg(cfg, sec, mod), root, enc, force,
                                    progress)
    return out


def _extract_one(bench, mod: str, sec: dict, opts: RunOptions, root: Path, encoder: Encoder | None,
                 force: bool, progress: bool) -> dict:
    if encoder is not None:
        name, family, identity = encoder.name, encoder.family, encoder.identity()
    else:
        name, family, identity = encoder_identity(sec, mod)
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
    done = done_ids(part)
    todo = [i for i, s in enumerate(ids) if s not in done]
    n_resumed = len(ids) - len(todo)

    run: dict = {"n_encoded": 0, "n_forwarded": 0, "wall_s": 0.0, "forward_s": 0.0, "load_s": 0.0}
    device = resolve_device(opts.device)
    dtype = resolve_precision(opts.precision, device)
    if todo:
        t0 = time.perf_counter()
        if encoder is None:
            encoder = build_encoder(sec, mod)
        run["load_s"] = time.perf_counter() - t0
        t_tok = time.perf_counter()
        if mod == "text":  # token-count-sorted batches pad little (order does not matter: shards are keyed by id)
            source = pretokenize(encoder, bench.prompts, todo)
            todo.sort(key=lambda i: -len(source[i]))
        else:
            source = bench.images
        t_tok = time.perf_counter() - t_tok
        if opts.engine_name == "lightning":
            from vlrb.features.lightning_predict import run_lightning  # imports Lightning: seconds, only on this path

            r = run_lightning(encoder, mod, source, todo, ids, part, opts, device, dtype, progress)
            if r is None:  # a non-zero DDP rank: rank 0 merges
                return {"modality": mod, "name": name, "status": "worker"}
            run.update(r)
        else:
            from vlrb.features.loop import run_loop

            run.update(run_loop(encoder, mod, source, todo, ids, part, opts, device, dtype, progress))
        run["wall_s"] += t_tok
    meta_path.unlink(missing_ok=True)  # a stale sidecar must never vouch for the file about to be replaced
    stats = merge_shards(ids, part, final, mod)
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
        "device": str(device) if opts.engine_name == "loop" else f"{opts.devices}x {device.type}",
        "precision": str(dtype).replace("torch.", "") if dtype is not None else "fp32",
        "batch_size": opts.batch_size, "num_workers": run.get("num_workers", opts.num_workers),
        "batches_in_flight": run.get("batches_in_flight", 1), "engine": opts.engine_name,
        "torch_threads": torch.get_num_threads(), "runtime": run.get("runtime"),
        "max_abs_diff_vs_eager": run.get("max_abs_diff"), "prepare_s": run.get("prepare_s"),
        "failures": stats["failures"][:MAX_LISTED_FAILURES],
        "encoder": identity, "config_hash": chash, "samples_hash": shash, "report": str(report_path),
    }
    write_json(report_path, report)
    return report
