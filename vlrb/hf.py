"""Local-only loading of Hugging Face models: a folder, or its snapshot in the local HF cache. Never downloads."""
from __future__ import annotations

import os
from pathlib import Path


def local_snapshot(name_or_path: str, error: type[Exception], what: str, advice: str) -> Path:
    """The model folder for an HF id or path; otherwise `error` saying where we looked and `advice`."""
    p = Path(os.path.expanduser(str(name_or_path)))
    if p.is_dir():
        return p
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path), local_files_only=True))
    except Exception as e:  # LocalEntryNotFoundError, HFValidationError, ...
        cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        raise error(f"{what} {name_or_path!r} is not available offline: it is neither a local folder nor in the "
                    f"Hugging Face cache ({cache}; {type(e).__name__}). Nothing is downloaded at run time. {advice}") from None
