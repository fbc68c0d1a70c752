"""Merge a trained LoRA adapter into its base model: a plain transformers model in safetensors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from soraplan.captioner.hub import require_pretrained, torch_dtype
from soraplan.core.config import ConfigError


@dataclass
class MergeConfig:
    base_model: str = ""
    adapter: str = ""  # <train output_dir>/adapter (or <output_dir>/checkpoints/step_*/adapter)
    output_dir: str = ""
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"


def merge_adapter(cfg: MergeConfig) -> Path:
    base = require_pretrained(cfg.base_model, "base_model")
    adapter = require_pretrained(cfg.adapter, "adapter", marker="adapter_config.json")
    if not cfg.output_dir:
        raise ConfigError("set output_dir (where the merged model goes)")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype(cfg.dtype))
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    out = Path(cfg.output_dir)
    merged.save_pretrained(out)  # safetensors by default
    # The adapter dir holds the tokenizer (with chat template) the adapter was trained with.
    AutoTokenizer.from_pretrained(adapter).save_pretrained(out)
    return out
