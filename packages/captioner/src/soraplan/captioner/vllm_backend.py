"""Optional vLLM backend through `ray.data.llm`, for GPU clusters.

The processor Ray builds runs `to_request` (ours) -> PrepareMultimodal -> ChatTemplate -> Tokenize
-> vLLM engine -> Detokenize, then `to_result` (ours) makes the same result columns as the
transformers CaptionStage. Only the engine stages need vllm and a GPU; everything here is plain
functions on rows and configs.
"""

from __future__ import annotations

import base64
import importlib.util
import io
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from soraplan.captioner.frames import PROBED_COLUMNS, unpack_frames
from soraplan.captioner.generation import GenerationConfig
from soraplan.captioner.postprocess import clean_caption
from soraplan.captioner.prompts import PromptTemplate
from soraplan.captioner.vlm import VLMConfig, frames_input
from soraplan.core.config import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import ray.data
    from ray.data.llm import Processor, vLLMEngineProcessorConfig

    from soraplan.core.ray_session import RayConfig

# Ray's processor stages skip rows whose `__inference_error__` is set (a failed engine call, or a
# clip that did not decode) and hand them on unchanged, past the postprocess step.
ERROR_KEY = "__inference_error__"


@dataclass
class VLLMConfig:
    """Engine settings for backend=vllm; model, dtype and generation come from `vlm.*`, the batch
    size and the number of engines from `ray.batch_size` and `ray.concurrency`."""

    accelerator_type: str | None = None  # Ray accelerator type of the engine GPUs, e.g. "A100", "H100"
    # vLLM engine arguments (max_model_len, tensor_parallel_size, gpu_memory_utilization, ...);
    # they override the dtype and limit_mm_per_prompt derived from the rest of the config.
    engine_kwargs: dict[str, Any] = field(default_factory=dict)


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        # A ConfigError: the CLI prints it without a traceback, like every other setup mistake.
        raise ConfigError(
            "backend=vllm needs the `vllm` package, which is not installed. On a GPU node install the "
            "captioner's vllm extra (Ray's LLM extra: the vLLM that ray.data.llm is tested with): "
            "`uv sync --package soraplan-captioner --extra vllm`; or set backend=transformers"
        )


def sampling_params(gen: GenerationConfig) -> dict[str, Any]:
    """vLLM SamplingParams for our generation settings (temperature 0 is greedy in vLLM)."""
    return {
        "max_tokens": gen.max_new_tokens,
        "temperature": gen.temperature if gen.do_sample else 0.0,
        "top_p": gen.top_p if gen.do_sample else 1.0,
        "repetition_penalty": gen.repetition_penalty,
        "seed": gen.seed,
    }


def engine_config(
    vlm: VLMConfig, settings: VLLMConfig, ray_cfg: RayConfig, frames_as: str, most_frames: int
) -> vLLMEngineProcessorConfig:
    from ray.data.llm import vLLMEngineProcessorConfig

    # vLLM reserves room for a fixed number of images or videos per prompt, and checks it when
    # parsing the messages too.
    limits = {"video": 1} if frames_as == "video" else {"image": most_frames}
    engine_kwargs = {"dtype": vlm.dtype, "limit_mm_per_prompt": limits, **settings.engine_kwargs}
    return vLLMEngineProcessorConfig(
        model_source=vlm.model,
        batch_size=ray_cfg.batch_size,
        concurrency=ray_cfg.concurrency,
        accelerator_type=settings.accelerator_type,
        engine_kwargs=engine_kwargs,
        prepare_multimodal_stage={
            "enabled": True,
            "model_config_kwargs": {"limit_mm_per_prompt": engine_kwargs["limit_mm_per_prompt"]},
        },
        should_continue_on_error=True,  # a failed generation becomes an error row
    )


def _jpeg_base64(frame: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def to_request(row: dict[str, Any], prompt: PromptTemplate, frames_as: str, sampling: dict[str, Any]) -> dict[str, Any]:
    """A decoded clip row -> OpenAI-style chat messages with its frames, and sampling params."""
    text = {"type": "text", "text": prompt.clip_text(row.get("camera_motion"))}
    visual: list[dict[str, Any]] = []
    if row["decoded"]:
        frames = [_jpeg_base64(f) for f in unpack_frames(row["frames"], row["frames_shape"])]
        if frames_as == "video":
            # vLLM reads a video/jpeg data URL as the comma-separated list of its frames.
            visual = [{"type": "video_url", "video_url": {"url": "data:video/jpeg;base64," + ",".join(frames)}}]
        else:
            visual = [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + f}} for f in frames]
    messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
    messages.append({"role": "user", "content": [*visual, text]})
    return {
        "messages": messages,
        "sampling_params": sampling,
        # Ray carries every input column along: drop the raw frames, the messages have them.
        "frames": b"",
        # An undecoded clip skips every stage as an error row and keeps its decode error.
        ERROR_KEY: "" if row["decoded"] else row["decode_error"],
    }


def to_result(row: dict[str, Any], model: str, prompt_id: str) -> dict[str, Any]:
    """A processed row (generated, failed, or undecoded) -> the caption job's result columns."""
    if not row["decoded"]:
        error = row["decode_error"]
    else:
        error = f"generation failed: {row[ERROR_KEY]}" if row.get(ERROR_KEY) else None
    return {
        **{c: row[c] for c in ["clip_id", *PROBED_COLUMNS]},
        "vlm_caption": None if error else clean_caption(row["generated_text"]),
        "caption_model": model,
        "caption_prompt": prompt_id,
        "caption_error": error,
        "caption_tokens": 0 if error else int(row["num_generated_tokens"]),
        # vLLM runs requests concurrently, so per-request latencies do not add up to model time.
        "caption_seconds": 0.0,
    }


def vllm_processor(
    vlm: VLMConfig, settings: VLLMConfig, prompt: PromptTemplate, ray_cfg: RayConfig, most_frames: int
) -> Processor:
    """The ray.data.llm processor (built lazily by Ray: nothing starts until a dataset runs)."""
    from ray.data.llm import build_processor
    from transformers import AutoProcessor

    # The model's own processor says whether it takes a video (as in the transformers backend).
    frames_as = frames_input(vlm.frames_as, AutoProcessor.from_pretrained(vlm.model))
    config = engine_config(vlm, settings, ray_cfg, frames_as, most_frames)
    preprocess = partial(to_request, prompt=prompt, frames_as=frames_as, sampling=sampling_params(vlm.generation))
    return build_processor(config, preprocess=preprocess)


def caption_with_vllm(
    ds: ray.data.Dataset, vlm: VLMConfig, settings: VLLMConfig, prompt: PromptTemplate,
    ray_cfg: RayConfig, most_frames: int,
) -> ray.data.Dataset:
    """Decoded-frame rows -> the same result columns the transformers CaptionStage writes."""
    require_vllm()
    rows = vllm_processor(vlm, settings, prompt, ray_cfg, most_frames)(ds)
    # Error rows bypass a processor's postprocess, so the results are made in a map after it.
    return rows.map(to_result, fn_kwargs={"model": vlm.model, "prompt_id": prompt.id})
