"""The vLLM backend without vllm: our row functions, the config mapping, and the processor Ray
builds from them (not run: its engine needs vllm and a GPU)."""

import base64
import importlib.util
import io
from functools import partial

import numpy as np
import pytest
from PIL import Image

from soraplan.captioner.caption import CaptionJobConfig, run
from soraplan.captioner.frames import FrameSamplingConfig, decode_clip, unpack_frames
from soraplan.captioner.generation import GenerationConfig
from soraplan.captioner.prompts import PromptConfig, PromptTemplate
from soraplan.captioner.vllm_backend import (
    ERROR_KEY,
    VLLMConfig,
    engine_config,
    sampling_params,
    to_request,
    to_result,
    vllm_processor,
)
from soraplan.captioner.vlm import VLMConfig
from soraplan.core.config import ConfigError, load_config
from soraplan.core.ray_session import RayConfig
from soraplan.core.schema import read_clip_table

from .conftest import CAPTION_PROMPTS

FRAMES = FrameSamplingConfig(short_side=48)  # 3 keyframes of 64 x 48


@pytest.fixture(scope="module")
def decoded(clip_shards):
    rows = {r["clip_id"]: r for r in read_clip_table(clip_shards).to_pylist()}
    return {cid: decode_clip(rows[cid], FRAMES) for cid in ["c0", "bad"]}


def jpeg_frames(url: str, prefix: str) -> np.ndarray:
    assert url.startswith(prefix)
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(f)))) for f in url[len(prefix) :].split(",")])


def through_ray_wrappers(row, prompt, frames_as, engine_output):
    """What Ray's processor does around the stages: our request merged into the row, the engine's
    columns added (or an error row passed on untouched), then its postprocess step (identity)."""
    from ray.llm._internal.batch.stages.base import wrap_postprocess, wrap_preprocess

    request = partial(to_request, prompt=prompt, frames_as=frames_as, sampling=sampling_params(GenerationConfig()))
    data = wrap_preprocess(request, "__data")(dict(row))["__data"]  # it updates the row it is given
    if not data[ERROR_KEY]:
        data.update(engine_output)
    return wrap_postprocess(lambda r: r, "__data", include_error_column=True)({"__data": data})


def test_requests_carry_the_frames_as_a_video_or_as_images(decoded):
    prompt = PromptTemplate(id="p", text="Describe the clip.", system="You caption videos.")
    frames = unpack_frames(decoded["c0"]["frames"], decoded["c0"]["frames_shape"])
    assert frames.shape == (3, 48, 64, 3)
    sampling = sampling_params(GenerationConfig())

    video = to_request(decoded["c0"], prompt, "video", sampling)
    system, user = video["messages"]
    assert system == {"role": "system", "content": "You caption videos."}
    assert [c["type"] for c in user["content"]] == ["video_url", "text"] and user["content"][1]["text"] == "Describe the clip."
    sent = jpeg_frames(user["content"][0]["video_url"]["url"], "data:video/jpeg;base64,")
    assert sent.shape == frames.shape and np.abs(sent.astype(int) - frames).mean() < 3  # JPEG, quality 95
    assert video[ERROR_KEY] == "" and video["frames"] == b"" and video["sampling_params"] == sampling

    images = to_request(decoded["c0"], prompt, "images", sampling)["messages"][1]["content"]
    assert [c["type"] for c in images] == ["image_url"] * 3 + ["text"]
    for part, frame in zip(images, frames):
        (sent,) = jpeg_frames(part["image_url"]["url"], "data:image/jpeg;base64,")
        assert sent.shape == frame.shape and np.abs(sent.astype(int) - frame).mean() < 3

    # An undecoded clip becomes an error row that every stage skips; its request has no media.
    bad = to_request(decoded["bad"], prompt, "video", sampling)
    assert bad[ERROR_KEY].startswith("decode failed") and bad["messages"][1]["content"][0]["type"] == "text"

    # The camera move curation measured (c0: pan_left) goes into the prompt where it asks for it.
    camera = PromptTemplate(id="p", text="Describe the clip. {camera_motion} Be brief.")
    assert decoded["c0"]["camera_motion"] == "pan_left"
    text = to_request(decoded["c0"], camera, "video", sampling)["messages"][0]["content"][1]["text"]
    assert text == "Describe the clip. The camera pans left. Be brief."
    assert to_request(decoded["bad"], camera, "video", sampling)["messages"][0]["content"][0]["text"] \
        == "Describe the clip. Be brief."


def test_sampling_params_follow_the_generation_config():
    assert sampling_params(GenerationConfig(max_new_tokens=64, seed=3)) == {
        "max_tokens": 64, "temperature": 0.0, "top_p": 1.0, "repetition_penalty": 1.0, "seed": 3,
    }
    sampled = GenerationConfig(do_sample=True, temperature=0.5, top_p=0.8, repetition_penalty=1.1)
    assert sampling_params(sampled) == {
        "max_tokens": 256, "temperature": 0.5, "top_p": 0.8, "repetition_penalty": 1.1, "seed": 0,
    }


def test_results_from_generated_failed_and_undecoded_rows(decoded):
    prompt = PromptTemplate(id="video_describe", text="Describe the clip.")
    good = through_ray_wrappers(
        decoded["c0"], prompt, "video",
        {"generated_text": "  The video shows a red square\nmoving right .", "num_generated_tokens": 9},
    )
    result = to_result(good, "org/vlm", "video_describe")
    assert result == {
        "clip_id": "c0", "end_s": 2.0, "width": 64, "height": 48, "fps": 8.0,
        "vlm_caption": "A red square moving right.",  # the transformers backend's clean_caption
        "caption_model": "org/vlm", "caption_prompt": "video_describe", "caption_error": None,
        "caption_tokens": 9, "caption_seconds": 0.0,
    }
    # A failed generation (Ray's engine stage with should_continue_on_error) passes on as an error row.
    failed = through_ray_wrappers(
        decoded["c0"], prompt, "video",
        {"generated_text": "", "num_generated_tokens": 0, ERROR_KEY: "ValueError: prompt too long"},
    )
    assert to_result(failed, "org/vlm", "video_describe") == dict(
        result, vlm_caption=None, caption_error="generation failed: ValueError: prompt too long", caption_tokens=0
    )
    # A clip that did not decode skips the engine and Ray's postprocess, and keeps its own error.
    undecoded = through_ray_wrappers(decoded["bad"], prompt, "video", {})
    assert "generated_text" not in undecoded
    bad = to_result(undecoded, "org/vlm", "video_describe")
    assert bad["clip_id"] == "bad" and bad["vlm_caption"] is None and bad["caption_error"].startswith("decode failed")
    assert bad["caption_model"] == "org/vlm" and bad["caption_tokens"] == 0 and bad["end_s"] is None


def test_engine_config_from_our_config(tiny_llava_next_video_dir):
    job = load_config(CaptionJobConfig, None, [
        "backend=vllm", f"vlm.model={tiny_llava_next_video_dir}", "vlm.dtype=bfloat16", "ray.batch_size=16",
        "ray.concurrency=4", "vllm.accelerator_type=A100", "vllm.engine_kwargs={max_model_len: 8192, tensor_parallel_size: 2}",
    ])
    vlm, actors = job.vlm, job.ray
    config = engine_config(vlm, job.vllm, actors, "video", 8)
    assert config.model_source == str(tiny_llava_next_video_dir)
    assert (config.batch_size, config.concurrency, config.accelerator_type) == (16, 4, "A100")
    assert config.should_continue_on_error
    kwargs = {k: v for k, v in config.engine_kwargs.items() if k != "task_type"}  # Ray adds task_type
    assert kwargs == {"dtype": "bfloat16", "limit_mm_per_prompt": {"video": 1}, "max_model_len": 8192, "tensor_parallel_size": 2}
    images = engine_config(vlm, VLLMConfig(), actors, "images", 8)
    assert images.engine_kwargs["limit_mm_per_prompt"] == {"image": 8} and images.accelerator_type is None
    # The engine arguments win over the derived ones, also in the message-parsing stage.
    custom = engine_config(vlm, VLLMConfig(engine_kwargs={"limit_mm_per_prompt": {"image": 2}}), actors, "images", 8)
    assert custom.engine_kwargs["limit_mm_per_prompt"] == {"image": 2}
    assert custom.prepare_multimodal_stage["model_config_kwargs"] == {"limit_mm_per_prompt": {"image": 2}}


def test_most_frames_bounds_every_sampling_mode():
    assert FrameSamplingConfig().most_frames() == 3
    uniform, fps = FrameSamplingConfig(mode="uniform", num_frames=8), FrameSamplingConfig(mode="fps", max_frames=16)
    assert (uniform.most_frames(), fps.most_frames()) == (8, 16)
    assert len(fps.times(0.0, 600.0)) == 16 and len(uniform.times(0.0, 600.0)) == 8


def test_ray_builds_the_processor_without_vllm(ray_session, tiny_llava_next_video_dir, tiny_llava_dir, decoded):
    """ray.data.llm imports and builds its stages lazily: this runs without vllm; the stages would not."""
    prompt = PromptConfig(file=str(CAPTION_PROMPTS)).build()
    vlm = VLMConfig(model=str(tiny_llava_next_video_dir), dtype="bfloat16")
    settings = VLLMConfig(accelerator_type="A100", engine_kwargs={"max_model_len": 4096})
    processor = vllm_processor(vlm, settings, prompt, RayConfig(batch_size=16, concurrency=2), 3)
    assert processor.list_stage_names() == [
        "PrepareMultimodalStage", "ChatTemplateStage", "TokenizeStage", "vLLMEngineStage", "DetokenizeStage",
    ]
    engine = processor.get_stage_by_name("vLLMEngineStage")
    assert engine.fn_constructor_kwargs["model"] == str(tiny_llava_next_video_dir)
    assert engine.fn_constructor_kwargs["batch_size"] == 16 and engine.fn_constructor_kwargs["should_continue_on_error"]
    assert engine.fn_constructor_kwargs["engine_kwargs"]["limit_mm_per_prompt"] == {"video": 1}
    assert engine.fn_constructor_kwargs["engine_kwargs"]["max_model_len"] == 4096
    assert engine.map_batches_kwargs["accelerator_type"] == "A100"
    multimodal = processor.get_stage_by_name("PrepareMultimodalStage").fn_constructor_kwargs["model_config_kwargs"]
    assert multimodal["limit_mm_per_prompt"] == {"video": 1} and multimodal["model"] == str(tiny_llava_next_video_dir)
    # Ray's preprocess step is ours: LLaVA-NeXT-Video gets a video, LLaVA (no video processor) images.
    request = processor.preprocess(dict(decoded["c0"]))["__data"]
    assert [c["type"] for c in request["messages"][0]["content"]] == ["video_url", "text"]
    assert request["sampling_params"] == sampling_params(vlm.generation)
    llava = vllm_processor(VLMConfig(model=str(tiny_llava_dir)), VLLMConfig(), prompt, RayConfig(), 3)
    assert [c["type"] for c in llava.preprocess(dict(decoded["c0"]))["__data"]["messages"][0]["content"]] == ["image_url"] * 3 + ["text"]
    assert llava.get_stage_by_name("vLLMEngineStage").fn_constructor_kwargs["engine_kwargs"]["limit_mm_per_prompt"] == {"image": 3}


def test_missing_vllm_fails_fast_naming_package_and_install(tmp_path):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    cfg = CaptionJobConfig(input=str(tmp_path / "no_such_input"), out=str(tmp_path / "out"), backend="vllm")
    cfg.vlm.model = "org/any-vlm"
    with pytest.raises(ConfigError) as info:
        run(cfg)
    message = str(info.value)
    assert "`vllm` package" in message and "backend=transformers" in message
    assert "`uv sync --package soraplan-captioner --extra vllm`" in message
    assert not (tmp_path / "out").exists()
