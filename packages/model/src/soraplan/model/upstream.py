"""Reading released upstream checkpoints (WF-VAE, Open-Sora-Plan) and renaming their weights.

A checkpoint is a save_pretrained-style folder (config.json + weights) or a weights file with
the config given separately. Weights are read as safetensors or as a torch file with
`weights_only=True`: a file that needs arbitrary unpickling is refused, never executed.
Each model's converter holds one table of `KeyRule`s that turns upstream names into ours.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from soraplan.core.config import ConfigError

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors",
                "diffusion_pytorch_model.bin", "pytorch_model.bin")
# Training checkpoints nest the weights: WF-VAE's trainer saves EMA and generator weights so.
NESTED = (("ema_state_dict",), ("state_dict", "gen_model"), ("state_dict",), ("model",))


def read_weights_file(path: Path, nested: Sequence[tuple[str, ...]] = NESTED) -> dict[str, Tensor]:
    """A state dict from safetensors or a `weights_only` torch file, out of the first `nested`
    key path it is found under."""
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{path} holds more than tensors and is not unpickled ({reason}); "
                          "convert it to safetensors where you trust it") from None
    for keys in nested:
        inner = obj
        for key in keys:
            inner = inner.get(key) if isinstance(inner, dict) else None
        if isinstance(inner, dict) and inner:
            obj = inner
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ConfigError(f"{path} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def convert_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `soraplan-vae convert` and `soraplan-dit convert`."""
    parser.add_argument("source", help="upstream checkpoint: a folder with config.json and weights, "
                        "or a weights file (.safetensors, or a torch file of tensors only)")
    parser.add_argument("out", help="folder to write (save_pretrained)")
    parser.add_argument("--config", help="the upstream config.json when SOURCE is a weights file")


def find_weights(folder: Path) -> list[Path]:
    """The weight files of a save_pretrained folder (several when sharded with an index)."""
    for name in WEIGHT_FILES:
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / s for s in shards]
        if (folder / name).is_file():
            return [folder / name]
    raise FileNotFoundError(f"no weights in {folder} (looked for {', '.join(WEIGHT_FILES)})")


def read_checkpoint(source: str | Path, config: str | Path | None = None
                    ) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(upstream config, state dict) of a folder, or of a weights file plus its config.json."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"upstream checkpoint not found: {source}")
    config_path = Path(config) if config else (source / "config.json" if source.is_dir() else None)
    if config_path is None:
        raise ConfigError(f"{source} is a weights file: give its config.json with --config")
    if not config_path.is_file():
        raise FileNotFoundError(f"upstream config not found: {config_path} (--config)")
    files = find_weights(source) if source.is_dir() else [source]
    state: dict[str, Tensor] = {}
    for path in files:
        state.update(read_weights_file(path))
    return json.loads(config_path.read_text()), state


@dataclass(frozen=True)
class KeyRule:
    """One row of a key-mapping table: where `pattern` matches an upstream key it is replaced
    by `replacement` (re.sub; None drops the tensor). Every matching row applies, in order.
    `part` orders tensors that several upstream keys contribute to one of ours (concatenated
    on dim 0, e.g. q, k, v -> to_qkv); `transform` reshapes or permutes the tensor."""

    pattern: str
    replacement: str | None
    transform: Callable[[Tensor], Tensor] | None = None
    part: int | None = None


def rename_state_dict(state: dict[str, Tensor], table: Sequence[KeyRule]) -> dict[str, Tensor]:
    parts: dict[str, dict[int, Tensor]] = {}
    for key, value in state.items():
        name: str | None = key
        part = 0
        for rule in table:
            if name is None or not re.search(rule.pattern, name):
                continue
            if rule.replacement is None:
                name = None
                break
            name = re.sub(rule.pattern, rule.replacement, name)
            value = rule.transform(value) if rule.transform else value
            part = rule.part if rule.part is not None else part
        if name is not None:
            parts.setdefault(name, {})[part] = value
    return {name: torch.cat([p[i] for i in sorted(p)]) if len(p) > 1 else next(iter(p.values()))
            for name, p in parts.items()}


def load_converted(model: torch.nn.Module, state: dict[str, Tensor], what: str) -> None:
    """Load renamed weights strictly; a mismatch names the keys (a config that does not fit)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4})" if len(keys) > 4 else "")
        raise ConfigError(f"the {what} checkpoint does not fit its config: missing [{few(missing)}], "
                          f"unexpected [{few(unexpected)}], other shapes [{few(wrong)}]")
    # The model keeps the checkpoint's precision (a float64 or bf16 release stays so).
    if any(t.is_meta for t in own.values()):  # built on the meta device: take the tensors as they are
        model.load_state_dict(state, assign=True)
    else:
        model.to(next(v.dtype for v in state.values() if v.is_floating_point()))
        model.load_state_dict(state)


def require(config: dict[str, Any], key: str, allowed: Sequence[Any], default: Any) -> None:
    """Stop with one line when an upstream config value has no counterpart here."""
    value = config.get(key, default)
    if value not in allowed:
        raise ConfigError(f"upstream config {key}={value!r} is not supported (supported: "
                          f"{', '.join(map(repr, allowed))})")
