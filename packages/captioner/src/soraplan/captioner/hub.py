"""Find pretrained weights (HF id or local path) before a job touches any data."""

from __future__ import annotations

import os
from pathlib import Path


class ModelSourceError(FileNotFoundError):
    """The configured model cannot be loaded; the message names the config key to set."""


def require_pretrained(source: str, config_key: str, marker: str = "config.json") -> str:
    """Return `source` if a model can be loaded from it, else raise ModelSourceError.

    `source` is a local directory (must contain `marker`) or a Hugging Face id, which is
    looked up the standard way, so HF_HUB_OFFLINE=1 means "from the local cache only".
    """
    if not source:
        raise ModelSourceError(f"no model configured: set {config_key}=<HF id or local path>")
    path = Path(source).expanduser()
    if path.exists():
        if not (path / marker).is_file():
            raise ModelSourceError(f"{path} has no {marker}; set {config_key} to a saved model directory")
        return str(path)
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ModelSourceError(f"model path does not exist: {source}; set {config_key}")
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(source, marker)
    except Exception as exc:  # offline cache miss, unknown repo, gated repo, no network
        where = "the local HF cache (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True") else "the Hugging Face Hub"
        raise ModelSourceError(
            f"cannot find model {source!r} in {where}: {exc.__class__.__name__}; "
            f"download it or set {config_key} to a local path"
        ) from exc
    return source


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(name: str):  # -> torch.dtype; torch imported lazily for light CLIs
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
