"""Optional vLLM backend through `ray.data.llm`, for GPU clusters (needs `pip install vllm`)."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from soraplan.captioner.postprocess import clean_caption
from soraplan.captioner.prompts import PromptTemplate
from soraplan.captioner.vlm import VLMConfig

if TYPE_CHECKING:
    import ray.data

    from soraplan.captioner.shards import ActorPoolConfig


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(
            "backend=vllm needs the vllm package (GPU only): `uv pip install vllm`, "
            "or set backend=transformers"
        )


def caption_with_vllm(
    ds: ray.data.Dataset, vlm: VLMConfig, prompt: PromptTemplate, actors: ActorPoolConfig
) -> ray.data.Dataset:
    """Decoded-frame rows -> the same result columns the transformers CaptionStage writes."""
    require_vllm()
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from soraplan.captioner.caption import unpack_frames

    gen = vlm.generation
    sampling = {"max_tokens": gen.max_new_tokens, "temperature": gen.temperature if gen.do_sample else 0.0,
                "top_p": gen.top_p if gen.do_sample else 1.0, "repetition_penalty": gen.repetition_penalty}

    def preprocess(row: dict[str, Any]) -> dict[str, Any]:
        from PIL import Image

        frames = unpack_frames(row["frames"], row["frames_shape"]) if row["decoded"] else []
        # A clip that failed to decode still goes through (one black pixel) so no row is lost;
        # its decode error is kept and the caption is discarded in postprocess.
        images = [Image.fromarray(f) for f in frames] or [Image.new("RGB", (1, 1))]
        content = [{"type": "image", "image": im} for im in images]
        messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
        messages.append({"role": "user", "content": [*content, {"type": "text", "text": prompt.user_text()}]})
        keep = {k: row[k] for k in ("clip_id", "decoded", "decode_error", "end_s", "width", "height", "fps")}
        return {**keep, "messages": messages, "sampling_params": sampling}

    def postprocess(row: dict[str, Any]) -> dict[str, Any]:
        error = (None if row["decoded"] else row["decode_error"]) or row.get("__inference_error__") or None
        return {
            **{k: row[k] for k in ("clip_id", "end_s", "width", "height", "fps")},
            "vlm_caption": None if error else clean_caption(row["generated_text"]),
            "caption_model": vlm.model,
            "caption_prompt": prompt.id,
            "caption_error": error,
            "caption_tokens": 0 if error else int(row.get("num_generated_tokens") or 0),
            "caption_seconds": 0.0,
        }

    config = vLLMEngineProcessorConfig(
        model_source=vlm.model,
        batch_size=actors.batch_size,
        concurrency=actors.concurrency,
        prepare_multimodal_stage=True,
        should_continue_on_error=True,
        engine_kwargs={"dtype": vlm.dtype},
    )
    return build_processor(config, preprocess=preprocess, postprocess=postprocess)(ds)
