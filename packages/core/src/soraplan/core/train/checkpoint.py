"""Atomic checkpoint directories: every file is written into a hidden staging directory that is
renamed into place only when complete, and `latest` names the newest complete one.

A run killed mid-save leaves only a `.staging-*` directory behind, which resume ignores.
Layout: <root>/step_00000500/... and <root>/latest (a text file holding the tag).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

LATEST_FILE = "latest"
STAGING_PREFIX = ".staging-"
CHECKPOINTS_DIR = "checkpoints"  # in a training output dir
EMA_DIR = "ema"  # in a checkpoint: a model directory of the EMA weights (from_pretrained loads it)


def checkpoint_tag(step: int) -> str:
    """The name of the checkpoint taken after `step` optimizer steps (the same in every trainer)."""
    return f"step_{step:08d}"


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` so readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def staging_dir(root: str | os.PathLike[str], tag: str) -> Path:
    """Where the files of checkpoint `tag` are written before `commit_checkpoint`.

    Deterministic (no random suffix) so every rank of a distributed job writes into the same one.
    """
    return Path(root) / f"{STAGING_PREFIX}{tag}"


def commit_checkpoint(root: str | os.PathLike[str], tag: str, keep_last: int | None = None) -> Path:
    """Move the staged checkpoint into place, point `latest` at it and prune old ones.

    Call on one process only, after every process has finished writing into the staging dir.
    """
    root = Path(root)
    final = root / tag
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging_dir(root, tag), final)
    atomic_write_text(root / LATEST_FILE, tag)
    if keep_last is not None:
        for old in list_checkpoints(root)[:-keep_last]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoint directories under `root`, oldest first (by modification time)."""
    root = Path(root)
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(dirs, key=lambda p: (p.stat().st_mtime, p.name))


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The checkpoint `latest` points at, or None when there is none yet."""
    marker = Path(root) / LATEST_FILE
    if not marker.is_file():
        return None
    path = Path(root) / marker.read_text().strip()
    return path if path.is_dir() else None


def resolve_pretrained(path: str | os.PathLike[str], what: str = "model") -> Path:
    """The model directory to load from `path`: a training output dir or its `checkpoints/` (the
    latest checkpoint's EMA weights), one checkpoint (its EMA weights), or a save_pretrained dir.
    `what` names the model in the error."""
    path = Path(path)
    for root in (path / CHECKPOINTS_DIR, path):
        latest = latest_checkpoint(root)
        if latest is not None:
            path = latest
            break
    if (path / EMA_DIR / "config.json").is_file():
        return path / EMA_DIR
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(f"no {what} weights under {str(path)!r}: expected a training output dir, "
                            "a checkpoint, or a save_pretrained directory")
