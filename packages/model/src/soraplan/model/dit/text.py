"""Text conditioning: a T5 / mT5 encoder loaded by HF id or local path, and an on-disk cache of
its states so training and sampling need not keep the encoder in memory."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from soraplan.core.config import PositiveInt
from torch import Tensor, nn


@dataclass
class TextEncoderConfig:
    path: str = "google/mt5-xxl"  # HF id or local directory with the tokenizer and the encoder
    max_length: PositiveInt = 512  # tokens; longer prompts are truncated

    def build(self, device: str | torch.device = "cpu") -> "TextEncoder":
        return TextEncoder(self.path, self.max_length, device)


class TextEncoder:
    def __init__(self, path: str, max_length: int, device: str | torch.device = "cpu",
                 config_key: str = "text_encoder.path") -> None:
        from transformers import AutoConfig, AutoTokenizer, MT5EncoderModel, T5EncoderModel

        try:
            config = AutoConfig.from_pretrained(path)
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        except OSError as exc:
            offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
            raise FileNotFoundError(
                f"text encoder {path!r} not found{offline}; set {config_key} to a local T5/mT5 "
                f"directory or a reachable HF id (for a trial without downloads, `soraplan-dit "
                f"text-encoder --out DIR --corpus captions.txt` saves a small random one)") from exc
        model_cls = MT5EncoderModel if config.model_type == "mt5" else T5EncoderModel
        self.model = model_cls.from_pretrained(path).to(device).eval().requires_grad_(False)
        self.max_length = max_length
        self.device = torch.device(device)

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        return encode_text(self.tokenizer, self.model, prompts, self.max_length)


@torch.no_grad()
def encode_text(tokenizer: Any, model: nn.Module, prompts: list[str],
                max_length: int) -> tuple[Tensor, Tensor]:
    """(states (B, L, dim), mask (B, L)) with L the longest prompt, capped at max_length; padded
    positions are zero. Also the text path of `SoraPlanPipeline`."""
    tokens = tokenizer(prompts, padding="longest", truncation=True, max_length=max_length,
                       return_tensors="pt").to(model.device)
    states = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    mask = tokens.attention_mask.bool()
    return states.last_hidden_state.float() * mask[..., None], mask


def pad_text_states(states: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack variable-length (L_i, D) states into (B, L_max, D) and their (B, L_max) mask."""
    length = max(s.shape[0] for s in states)
    out = torch.zeros(len(states), length, states[0].shape[1])
    mask = torch.zeros(len(states), length, dtype=torch.bool)
    for i, s in enumerate(states):
        out[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = True
    return out, mask


class TextEmbeddingCache:
    """Text states by prompt: <root>/<sha1 of prompt>.safetensors holding the unpadded states."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _file(self, prompt: str) -> Path:
        return self.root / f"{hashlib.sha1(prompt.encode()).hexdigest()}.safetensors"

    def missing(self, prompts: list[str]) -> list[str]:
        return sorted({p for p in prompts if not self._file(p).is_file()})

    def fill(self, encoder: TextEncoder, prompts: list[str], batch_size: int = 8) -> None:
        todo = self.missing(prompts)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            states, mask = encoder.encode(chunk)
            for prompt, s, m in zip(chunk, states, mask):
                tmp = self._file(prompt).with_suffix(".tmp")
                save_file({"states": s[m].contiguous().cpu()}, str(tmp))
                os.replace(tmp, self._file(prompt))

    def get(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        missing = self.missing(prompts)
        if missing:
            raise KeyError(f"{len(missing)} prompt(s) not in the text cache {self.root}, "
                           f"e.g. {missing[0]!r}")
        return pad_text_states([load_file(str(self._file(p)))["states"] for p in prompts])
