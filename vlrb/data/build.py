"""Build a routing benchmark (Y, C, meta, splits, reports) from VLMEvalKit logs, a records table or a folder
of per-model result files.

Every reader (vlrb.data.vlmevalkit_inputs, vlrb.data.records, vlrb.data.results) produces the same `Inputs`
(vlrb.data.inputs), one `assemble` (vlrb.data.assemble) turns them into the upstream layout, and this module runs
the whole build: which inputs, whether they changed since the last build, and an atomic write of the result.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Mapping

from vlrb.data.assemble import assemble
from vlrb.data.families import Family, rule_identity, user_families
from vlrb.data.inputs import BuildError
from vlrb.data.pool import dataset_specs
from vlrb.data.write import integrity_report, write_benchmark
from vlrb.io import (check_target_dir, file_digest, folder_lock, new_temp_dir, remove_stale_temp_dirs,
                     stat_fingerprint, swap_dir, write_json)
from vlrb.pricing import PriceTable

BUILD_VERSION = 2  # 2: answers.parquet and meta's answer_format / n_options (docs/method.md#answers)
FORMAT_MARKER = "vlrb-benchmark"  # manifest.json["format"]: how a folder is recognised as a vlrb build
PRESERVED = ("EMBEDDINGS", "reports/features")  # derived later from the benchmark; kept across rebuilds


def _fingerprint(data_cfg, prices: PriceTable | None, files: list[str], families: Mapping[str, Family]) -> str:
    cfg = dict(data_cfg)
    for k in ("workers", "root", "generate", "families"):  # families: by what the rules are, below
        cfg.pop(k, None)
    price = {m: [p.input_per_1m, p.output_per_1m] for m, p in prices.prices.items()} if prices else None
    blob = {"v": BUILD_VERSION, "cfg": cfg, "prices": price, "files": [stat_fingerprint(f) for f in files]}
    if families:  # a user's rules: a changed scorer rebuilds (absent otherwise, so older builds stay up to date)
        blob["rules"] = {name: rule_identity(f) for name, f in sorted(families.items())}
    blob = json.dumps(blob, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def is_benchmark_dir(path: Path) -> bool:
    """True for a folder vlrb built (its manifest carries the format marker; older vlrb builds a fingerprint)."""
    try:
        m = json.loads((Path(path) / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and (m.get("format") == FORMAT_MARKER or {"fingerprint", "build_version"} <= m.keys())


def check_root(root: Path, create_parents: bool = False) -> None:
    """data.root may be new, empty or an earlier vlrb build: never a folder with someone else's files."""
    check_target_dir(root, is_ours=is_benchmark_dir, what="a vlrb benchmark (no manifest.json with "
                     f"format={FORMAT_MARKER!r})", key="data.root", create_parents=create_parents)


def build(data_cfg, prices: PriceTable | None, *, families: Mapping[str, Family] | None = None, force: bool = False,
          progress: bool = True, log=None, create_parents: bool = False) -> dict:
    """Build (or confirm up to date) the benchmark at data_cfg["root"]. Returns the manifest.

    `families`: correctness rules of the user's own (vlrb.data.families.user_family) that `data.extra_datasets`
    may name, beside vlrb's; None: those of `data_cfg["families"]`, plain records whose scorer, if any, is a
    function already (the build job imports a config's `_target_` and passes the result here).

    data.root must be new, empty or an earlier vlrb build (anything else is refused, never replaced); its
    parent must exist unless `create_parents`. One build per root at a time (a lock beside it); what killed
    builds left behind is removed first.
    """
    log = log or logging.getLogger("vlrb.build").info
    root = Path(data_cfg["root"])
    check_root(root, create_parents)
    root.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(root, log):
        check_root(root)  # again under the lock: another process may have written it meanwhile
        stale = remove_stale_temp_dirs(root)
        if stale:
            log(f"removed {len(stale)} unfinished build folder(s) left by an interrupted build: "
                f"{', '.join(p.name for p in stale)}")
        return _build_locked(root, data_cfg, prices, families, force, progress, log)


def _build_locked(root: Path, data_cfg, prices, families, force: bool, progress: bool, log) -> dict:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    families = dict(families) if families is not None else user_families(data_cfg.get("families"))
    specs = dataset_specs(data_cfg, families)
    reader = data_cfg.get("reader", "vlmevalkit")

    disc = None
    if reader == "vlmevalkit":
        from vlrb.data import vlmevalkit as vk
        from vlrb.data.vlmevalkit_inputs import discover_vlmevalkit, read_vlmevalkit

        disc = discover_vlmevalkit(data_cfg, prices, specs)
        tasks, _ = vk.plan(disc, specs, families)
        from vlrb.data.tsv import find_tsv
        files = sorted({str(p) for t in tasks for p in (t.eval_file, t.pred_file, t.judge_cache) if p}
                       | {str(p) for p in (find_tsv(data_cfg.get("tsv_dir"), d) for d in specs) if p})
    elif reader == "records":
        files = [str(data_cfg["records"])] if Path(str(data_cfg["records"])).exists() else []
    elif reader == "results":
        from vlrb.data.results import result_files

        folder = Path(str(data_cfg["dir"])).expanduser()
        files = ([str(folder / str(data_cfg["items"]))] + [str(p) for p in result_files(folder, str(data_cfg["results"])).values()]
                 if folder.is_dir() else [])
    else:
        raise BuildError(f"data.reader must be 'vlmevalkit', 'records' or 'results', got {reader!r}")
    fp = _fingerprint(data_cfg, prices, files, families)
    manifest_path = root / "manifest.json"
    if not force and manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("fingerprint") == fp and (root / "data" / "matrices" / "Y.npz").exists():
            log(f"benchmark at {root} is up to date (inputs unchanged); use force=true to rebuild")
            return {**old, "up_to_date": True}
    timings["discover"] = time.perf_counter() - t0

    t = time.perf_counter()
    if reader == "vlmevalkit":
        inp = read_vlmevalkit(data_cfg, prices, progress, disc, families)
    elif reader == "results":
        from vlrb.data.results import read_results

        inp = read_results(data_cfg, prices, progress)
    else:
        from vlrb.data.records import read_records

        inp = read_records(data_cfg, prices, progress)  # a full `cost` column: prices are not used
    timings["read"] = time.perf_counter() - t
    t = time.perf_counter()
    b = assemble(inp, data_cfg, prices, specs)
    timings["assemble"] = time.perf_counter() - t

    t = time.perf_counter()
    tmp = new_temp_dir(root)
    try:
        write_benchmark(b, tmp, specs)
        res, text = integrity_report(b)
        write_json(tmp / "reports" / "data_integrity" / "validation_results.json", res)
        (tmp / "reports" / "data_integrity" / "validation_report.txt").write_text(text)
        timings["write"] = time.perf_counter() - t
        t = time.perf_counter()
        manifest = {
            "format": FORMAT_MARKER, "fingerprint": fp, "build_version": BUILD_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "reader": reader, "n_samples": int(b.Y.shape[0]), "n_models": int(b.Y.shape[1]), "models": b.models,
            "inputs": [{"path": f, "bytes": os.path.getsize(f), "sha256": file_digest(f)} for f in files],
            "prices": {m: [float(i), float(o)] for m, i, o in zip(b.models, b.price_in, b.price_out)}
            if b.price_in is not None else None,
            "python": platform.python_version(),
        }
        if families:  # the user's own correctness rules this build read with
            manifest["rules"] = {name: rule_identity(f) for name, f in sorted(families.items())}
        timings["hash_inputs"] = time.perf_counter() - t
        manifest["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        write_json(tmp / "manifest.json", manifest)
        swap_dir(tmp, root, carry=PRESERVED)  # features extracted from the previous build are carried over
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    manifest["timings_s"]["total"] = round(time.perf_counter() - t0, 3)
    manifest["up_to_date"] = False
    manifest["integrity"] = res
    return manifest
