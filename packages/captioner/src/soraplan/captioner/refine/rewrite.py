"""Rewrite short captions into dense ones with the refiner: shards (Ray batch) or a text file."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from soraplan.captioner.generation import GenerationConfig, Generated, generated_lengths
from soraplan.captioner.hub import pick_device, require_pretrained, torch_dtype
from soraplan.captioner.postprocess import clean_caption
from soraplan.captioner.prompts import PromptConfig
from soraplan.captioner.refine.data import REFINE_PROMPTS, chat_prompt
from soraplan.captioner.shards import (
    PARTS_DIR,
    assemble,
    kept_rows,
    latest_results,
    load_inputs,
    model_stage,
    open_output,
)
from soraplan.core.config import ConfigError, PositiveInt
from soraplan.core.outputs import write_json_atomic, write_part
from soraplan.core.progress import Progress
from soraplan.core.ray_session import RayConfig, refuse_relative_paths_on_a_cluster
from soraplan.core.schema import REFINE_ERROR_FIELD, REFINED_CAPTION_FIELDS

# A result part: the same types in every part, whatever nulls a batch happened to hold.
RESULT_SCHEMA = pa.schema([pa.field("clip_id", pa.string()), *REFINED_CAPTION_FIELDS, REFINE_ERROR_FIELD,
                           pa.field("refine_tokens", pa.int64())])


@dataclass
class RefinerConfig:
    model: str = ""  # merged refiner (dir or HF id), or the base model when `adapter` is set
    adapter: str = ""  # optional unmerged LoRA adapter dir
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    device: str = "auto"
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(file=REFINE_PROMPTS, id="osp_refine"))
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def check(self) -> None:
        """Fail fast (before any data is read) when the weights cannot be found."""
        require_pretrained(self.model, "refiner.model")
        if self.adapter:
            require_pretrained(self.adapter, "refiner.adapter", marker="adapter_config.json")

    def build(self) -> CaptionRefiner:
        return CaptionRefiner(self)


class CaptionRefiner:
    """Loads the refiner once; `rewrite` turns a list of short captions into dense ones."""

    def __init__(self, cfg: RefinerConfig) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.template = cfg.prompt.build()
        self.device = pick_device(cfg.device)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.adapter or cfg.model)
        self.tokenizer.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch_dtype(cfg.dtype))
        if cfg.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, cfg.adapter)
        self.model = model.to(self.device).eval()
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else self.tokenizer.eos_token_id])
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        torch.manual_seed(cfg.generation.seed)

    def _generate(self, captions: list[str]) -> list[Generated]:
        import torch

        texts = [chat_prompt(self.tokenizer, self.template, c) for c in captions]
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self.cfg.generation.kwargs(), pad_token_id=self.pad_id)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        decoded = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [Generated(clean_caption(t), n) for t, n in zip(decoded, generated_lengths(new_tokens, self.eos_ids, self.pad_id))]

    def rewrite(self, captions: list[str]) -> list[Generated]:
        if not captions:
            return []
        try:
            return self._generate(captions)
        except Exception as exc:
            if len(captions) == 1:
                return [Generated(None, 0, f"generation failed: {exc.__class__.__name__}: {exc}")]
        return [self.rewrite([c])[0] for c in captions]  # isolate the failing rows


class RefineStage:
    """Actor-pool stage: one refiner per actor, per-row errors."""

    def __init__(self, cfg: RefinerConfig) -> None:
        self.refiner = cfg.build()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        sources = [str(s) if isinstance(s, str) else "" for s in batch["source_text"]]
        todo = [i for i, s in enumerate(sources) if s.strip()]
        results = dict(zip(todo, self.refiner.rewrite([sources[i] for i in todo])))
        n = len(sources)
        missing = Generated(None, 0, "no caption to refine")
        rows = [results.get(i, missing) for i in range(n)]
        return {
            "clip_id": batch["clip_id"],
            "refined_caption": np.array([r.text for r in rows], dtype=object),
            "refine_error": np.array([r.error for r in rows], dtype=object),
            "refine_tokens": np.array([r.num_tokens for r in rows], dtype=np.int64),
        }


@dataclass
class RewriteJobConfig:
    input: str = ""  # shard dir (e.g. soraplan-caption output) or a .txt file, one prompt a line
    out: str = ""  # output dir for shards, or a .txt path for a text input
    source_columns: list[str] = field(default_factory=lambda: ["vlm_caption", "caption"])  # first non-empty
    refiner: RefinerConfig = field(default_factory=RefinerConfig)
    # Where the job runs and its refiner actors; `batch_size` captions a model call (also in
    # process, for a text file).
    ray: RayConfig = field(default_factory=lambda: RayConfig(batch_size=8, num_cpus=1.0, num_gpus=0.0))
    part_rows: PositiveInt = 64  # results per resume part

    def validate(self) -> None:
        if not self.source_columns:
            raise ConfigError("source_columns: name at least one caption column to refine")


def rewrite_text_file(cfg: RewriteJobConfig) -> dict[str, Any]:
    """In-process: one refined line per input line (an empty line where rewriting failed)."""
    prompts = Path(cfg.input).read_text().splitlines()
    refiner = cfg.refiner.build()
    start = time.perf_counter()
    results: list[Generated] = []
    with Progress(len(prompts), "rewrite", "prompt") as progress:
        for i in range(0, len(prompts), cfg.ray.batch_size):
            batch = prompts[i : i + cfg.ray.batch_size]
            results.extend(refiner.rewrite(batch))
            progress.update(len(batch))
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text("".join((r.text or "") + "\n" for r in results))
    tokens = sum(r.num_tokens for r in results)
    seconds = time.perf_counter() - start
    return {"prompts": len(prompts), "errors": sum(r.error is not None for r in results),
            "generated_tokens": tokens, "tokens_per_s": round(tokens / seconds, 3) if seconds > 0 else None}


def rewrite_shards(cfg: RewriteJobConfig) -> dict[str, Any]:
    """Ray batch job: adds `refined_caption` (and `refine_error`) to every row of the shards."""
    inputs = load_inputs(cfg.input)
    out = open_output(cfg.out, cfg)
    kept = kept_rows(inputs, ["clip_id", *cfg.source_columns])
    done = {cid for cid, r in latest_results(out).items() if r.get("refine_error") is None}
    items = [
        {"clip_id": r["clip_id"], "source_text": next((r[c] for c in cfg.source_columns if r.get(c)), "")}
        for r in kept
        if r["clip_id"] not in done
    ]
    start = time.perf_counter()
    tokens = 0
    if items:
        ray = cfg.ray.init()
        ds = ray.data.from_items(items).map_batches(
            RefineStage, fn_constructor_kwargs={"cfg": cfg.refiner}, **model_stage(cfg.ray))
        with Progress(len(items), "rewrite", "row") as progress:
            for batch in ds.iter_batches(batch_size=cfg.part_rows, batch_format="pyarrow"):
                tokens += int(pa.compute.sum(batch["refine_tokens"]).as_py() or 0)
                write_part(out / PARTS_DIR, batch.to_pylist(), RESULT_SCHEMA)
                progress.update(batch.num_rows, tokens=tokens)
    wall = time.perf_counter() - start
    results = latest_results(out)
    rows_out = assemble(out, inputs, results, [*REFINED_CAPTION_FIELDS, REFINE_ERROR_FIELD])
    kept_ids = [r["clip_id"] for r in kept]
    summary = {
        "rows_in": sum(t.num_rows for t in inputs.values()),
        "rows_out": rows_out,
        "kept": len(kept_ids),
        "refined": sum(results.get(c, {}).get("refined_caption") is not None for c in kept_ids),
        "errors": sum(results.get(c, {}).get("refine_error") is not None for c in kept_ids),
        "processed_this_run": len(items),
        "generated_tokens": tokens,
        "wall_seconds": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 3) if items and wall > 0 else None,
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def run_rewrite(cfg: RewriteJobConfig) -> dict[str, Any]:
    if not cfg.input or not cfg.out:
        raise ConfigError("set both --input (or input=) and --out (or out=)")
    cfg.refiner.check()
    if Path(cfg.input).suffix == ".txt":  # in this process, without Ray
        return rewrite_text_file(cfg)
    refuse_relative_paths_on_a_cluster(cfg.ray.address, [("--input", cfg.input), ("--out", cfg.out)],
                                       models=[("refiner.model", cfg.refiner.model),
                                               ("refiner.adapter", cfg.refiner.adapter)])
    return rewrite_shards(cfg)
