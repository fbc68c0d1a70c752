"""`soraplan-caption`: caption the kept clips of curated shards (or a directory of clips) with a VLM.

Ray Data pipeline: CPU tasks decode the sampled frames of each clip, an actor pool runs the
model (loaded once per actor), the driver streams results into resumable parts and finally
writes new shards with `vlm_caption, caption_model, caption_prompt, caption_error`.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from soraplan.captioner.frames import PROBED_COLUMNS, FrameSamplingConfig, decode_clip, unpack_frames
from soraplan.captioner.hub import require_pretrained
from soraplan.captioner.prompts import PromptConfig, PromptTemplate
from soraplan.captioner.shards import (
    PARTS_DIR,
    assemble,
    count_status,
    kept_rows,
    latest_results,
    load_inputs,
    model_stage,
    open_output,
)
from soraplan.captioner.vllm_backend import VLLMConfig
from soraplan.captioner.vlm import VLMConfig
from soraplan.core.cli import Command, console_main
from soraplan.core.config import ConfigError, PositiveFloat, PositiveInt
from soraplan.core.outputs import write_json_atomic, write_part
from soraplan.core.progress import Progress
from soraplan.core.ray_session import RayConfig, refuse_relative_paths_on_a_cluster
from soraplan.core.schema import CAPTION_ERROR_FIELD, CAPTION_FIELDS, STATUS_ERROR

# Row columns the decode task needs; the rest of the row stays on the driver.
_TASK_COLUMNS = ["clip_id", "path", "start_s", "end_s", "width", "height", "fps", "crop", "camera_motion"]
# A result part: the same types in every part, whatever nulls a batch happened to hold.
RESULT_SCHEMA = pa.schema([
    pa.field("clip_id", pa.string()),
    *(pa.field(c, pa.int64() if c in ("width", "height") else pa.float64()) for c in PROBED_COLUMNS),
    *CAPTION_FIELDS, CAPTION_ERROR_FIELD,
    pa.field("caption_tokens", pa.int64()), pa.field("caption_seconds", pa.float64()),
])


@dataclass
class CaptionJobConfig:
    input: str = ""  # curated shard dir (<dir>/clips/*.parquet) or a directory of video files
    out: str = ""
    backend: Literal["transformers", "vllm"] = "transformers"
    frames: FrameSamplingConfig = field(default_factory=FrameSamplingConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    vlm: VLMConfig = field(default_factory=VLMConfig)
    # Where the job runs and its model actors: `concurrency` actors taking `batch_size` clips a
    # call (with backend=vllm: the number of engines and their batch size).
    ray: RayConfig = field(default_factory=lambda: RayConfig(batch_size=8, num_cpus=1.0, num_gpus=0.0))
    vllm: VLLMConfig = field(default_factory=VLLMConfig)  # backend=vllm only
    # Must differ from the actors' resources (it does whenever they take a GPU): with equal
    # resources Ray fuses decoding into the model actors, serialising the two.
    decode_num_cpus: PositiveFloat = 0.5
    part_rows: PositiveInt = 64  # results per resume part
    limit: PositiveInt | None = None  # caption at most this many pending clips (smoke runs)

    def validate(self) -> None:
        actor_cpus = 1.0 if self.ray.num_cpus is None else self.ray.num_cpus  # None: Ray's default
        if self.backend == "transformers" and not self.ray.num_gpus and self.decode_num_cpus == actor_cpus:
            raise ConfigError(
                f"decode_num_cpus and ray.num_cpus are both {actor_cpus}: Ray would run decoding inside "
                "the model actors, one after the other; give them different values")


class CaptionStage:
    """Actor-pool stage: loads the VLM once, captions batches, records per-row errors."""

    def __init__(self, vlm_cfg: VLMConfig, prompt: PromptTemplate) -> None:
        self.vlm_cfg, self.prompt = vlm_cfg, prompt
        self.captioner = vlm_cfg.build(prompt)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["clip_id"])
        good = [i for i in range(n) if batch["decoded"][i]]
        start = time.perf_counter()
        captions = self.captioner.caption([unpack_frames(batch["frames"][i], batch["frames_shape"][i]) for i in good],
                                          [self.prompt.clip_text(batch["camera_motion"][i]) for i in good])
        seconds = time.perf_counter() - start
        texts: list[str | None] = [None] * n
        tokens = [0] * n
        errors: list[str | None] = [None if ok else err for ok, err in zip(batch["decoded"], batch["decode_error"])]
        for i, cap in zip(good, captions):
            texts[i], tokens[i], errors[i] = cap.text, cap.num_tokens, cap.error
        result = {c: batch[c] for c in ["clip_id", *PROBED_COLUMNS]}
        result.update(
            vlm_caption=np.array(texts, dtype=object),
            caption_model=np.array([self.vlm_cfg.model] * n, dtype=object),
            caption_prompt=np.array([self.prompt.id] * n, dtype=object),
            caption_error=np.array(errors, dtype=object),
            caption_tokens=np.array(tokens, dtype=np.int64),
            caption_seconds=np.full(n, seconds / max(n, 1)),
        )
        return result


def run(cfg: CaptionJobConfig) -> dict[str, Any]:
    """Run the job; returns (and writes to <out>/summary.json) the counts and speeds."""
    if not cfg.input or not cfg.out:
        raise ConfigError("set both --input (or input=) and --out (or out=)")
    refuse_relative_paths_on_a_cluster(cfg.ray.address, [("--input", cfg.input), ("--out", cfg.out)],
                                       models=[("vlm.model", cfg.vlm.model)])
    # Before any data is read. vLLM resolves the model itself, on the GPU workers.
    if cfg.backend == "transformers":
        require_pretrained(cfg.vlm.model, "vlm.model")
    else:
        from soraplan.captioner.vllm_backend import require_vllm

        require_vllm()
    prompt = cfg.prompt.build()
    inputs = load_inputs(cfg.input)
    out = open_output(cfg.out, cfg)
    kept = kept_rows(inputs, _TASK_COLUMNS)
    done = {cid for cid, r in latest_results(out).items() if r.get("caption_error") is None}
    pending = [r for r in kept if r["clip_id"] not in done]  # errors are retried on resume
    if cfg.limit is not None:
        pending = pending[: cfg.limit]

    start = time.perf_counter()
    tokens = 0
    model_seconds = 0.0
    if pending:
        ray = cfg.ray.init()
        ds = ray.data.from_items(pending).map(decode_clip, fn_kwargs={"frames_cfg": cfg.frames}, num_cpus=cfg.decode_num_cpus)
        if cfg.backend == "vllm":
            from soraplan.captioner.vllm_backend import caption_with_vllm

            ds = caption_with_vllm(ds, cfg.vlm, cfg.vllm, prompt, cfg.ray, cfg.frames.most_frames())
        else:
            ds = ds.map_batches(CaptionStage, fn_constructor_kwargs={"vlm_cfg": cfg.vlm, "prompt": prompt},
                                **model_stage(cfg.ray))
        with Progress(len(pending), "caption", "clip") as progress:
            for batch in ds.iter_batches(batch_size=cfg.part_rows, batch_format="pandas"):
                rows = [_plain(r) for r in batch.to_dict("records")]
                tokens += sum(r["caption_tokens"] for r in rows)
                model_seconds += sum(r["caption_seconds"] for r in rows)
                write_part(out / PARTS_DIR, rows, RESULT_SCHEMA)
                progress.update(len(rows), tokens=tokens)
    wall = time.perf_counter() - start

    results = latest_results(out)
    rows_out = assemble(out, inputs, results, [*CAPTION_FIELDS, CAPTION_ERROR_FIELD])
    kept_ids = {r["clip_id"] for r in kept}
    errors = sum(1 for cid in kept_ids if results.get(cid, {}).get("caption_error") is not None)
    captioned = sum(1 for cid in kept_ids if results.get(cid, {}).get("vlm_caption") is not None)
    summary = {
        "rows_in": sum(t.num_rows for t in inputs.values()),
        "rows_out": rows_out,
        "kept": len(kept),
        "input_errors": count_status(inputs, STATUS_ERROR),  # unusable inputs: never captioned
        "captioned": captioned,
        "errors": errors,
        "missing": len(kept_ids) - captioned - errors,
        "processed_this_run": len(pending),
        "resumed_from_previous_runs": len(done & kept_ids),
        "generated_tokens": tokens,
        "wall_seconds": round(wall, 3),
        "model_seconds": round(model_seconds, 3),
        "clips_per_s": round(len(pending) / wall, 4) if pending and wall > 0 else None,
        "tokens_per_s": round(tokens / wall, 3) if pending and wall > 0 else None,
        "model_tokens_per_s": round(tokens / model_seconds, 3) if model_seconds > 0 else None,
        "model": cfg.vlm.model,
        "prompt": prompt.id,
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """pandas/numpy scalars -> Python values (NaN -> None) for a parquet part."""
    plain = {}
    for key, value in row.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and value != value:
            value = None
        plain[key] = value
    return plain


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", help="curated shard dir or a directory of video files")
    parser.add_argument("--out", help="output dir for shards, parts and summary.json")


COMMAND = Command("caption", __doc__.splitlines()[0], lambda cfg, args: run(cfg), CaptionJobConfig,
                  _arguments, {"input": "input", "out": "out"})
main = console_main("soraplan-caption", __doc__, COMMAND)


if __name__ == "__main__":
    main()
