"""The transformers VLM backend: frames + prompt -> caption, one model load per actor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from soraplan.captioner.generation import GenerationConfig, Generated, generated_lengths
from soraplan.captioner.hub import pick_device, torch_dtype
from soraplan.captioner.postprocess import clean_caption
from soraplan.captioner.prompts import PromptTemplate
from soraplan.core.config import ConfigError


@dataclass
class VLMConfig:
    model: str = ""  # HF id or local dir of an AutoModelForImageTextToText + AutoProcessor
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    device: str = "auto"
    # auto: one video for models whose processor takes videos (LLaVA-NeXT-Video, Qwen2-VL),
    # else one image per frame (LLaVA-1.6); images / video force one way.
    frames_as: Literal["auto", "images", "video"] = "auto"
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def build(self, prompt: PromptTemplate) -> VLMCaptioner:
        return VLMCaptioner(self, prompt)


def frames_input(frames_as: str, processor: Any) -> Literal["images", "video"]:
    """How the sampled frames of a clip go into the model: as one video, or as images."""
    takes_video = getattr(processor, "video_processor", None) is not None
    if frames_as == "auto":
        return "video" if takes_video else "images"
    if frames_as == "video" and not takes_video:
        raise ConfigError(f"{type(processor).__name__} takes no videos: set vlm.frames_as=images (or auto)")
    return "video" if frames_as == "video" else "images"


class VLMCaptioner:
    def __init__(self, cfg: VLMConfig, prompt: PromptTemplate) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.cfg, self.prompt = cfg, prompt
        self.device = pick_device(cfg.device)
        self.processor = AutoProcessor.from_pretrained(cfg.model)
        if not getattr(self.processor, "chat_template", None):
            raise ConfigError(f"{cfg.model}: the processor has no chat template (vlm.model)")
        self.frames_as = frames_input(cfg.frames_as, self.processor)
        self.processor.tokenizer.padding_side = "left"  # batched generation continues on the right
        self.model = AutoModelForImageTextToText.from_pretrained(cfg.model, dtype=torch_dtype(cfg.dtype))
        self.model.to(self.device).eval()
        tok = self.processor.tokenizer
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else tok.eos_token_id])
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        torch.manual_seed(cfg.generation.seed)

    def _messages(self, num_frames: int, text: str) -> list[dict[str, Any]]:
        visual = [{"type": "video"}] if self.frames_as == "video" else [{"type": "image"}] * num_frames
        messages: list[dict[str, Any]] = []
        if self.prompt.system:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.prompt.system}]})
        messages.append({"role": "user", "content": [*visual, {"type": "text", "text": text}]})
        return messages

    def _generate(self, clips: list[np.ndarray], prompts: list[str]) -> list[Generated]:
        import torch

        texts = [
            self.processor.apply_chat_template(self._messages(len(c), p), add_generation_prompt=True, tokenize=False)
            for c, p in zip(clips, prompts)
        ]
        visual = {"videos": clips} if self.frames_as == "video" else {"images": [list(c) for c in clips]}
        inputs = self.processor(text=texts, **visual, return_tensors="pt", padding=True).to(self.device)
        for key in [k for k in inputs if k.startswith("pixel_values")]:  # images and videos
            inputs[key] = inputs[key].to(self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self.cfg.generation.kwargs(), pad_token_id=self.pad_id)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        decoded = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        lengths = generated_lengths(new_tokens, self.eos_ids, self.pad_id)
        return [Generated(clean_caption(t), n) for t, n in zip(decoded, lengths)]

    def caption(self, clips: list[np.ndarray], prompts: list[str] | None = None) -> list[Generated]:
        """One caption per clip (N x H x W x 3 frames), each asked with its prompt (default: the
        template's text); a failing clip gets an error, not an exception."""
        if not clips:
            return []
        prompts = prompts or [self.prompt.clip_text()] * len(clips)

        def subset(ids: list[int]) -> list[Generated]:
            return self.caption([clips[i] for i in ids], [prompts[i] for i in ids])

        if self.frames_as == "video" and len({len(c) for c in clips}) > 1:
            # Videos of different lengths do not stack into one tensor: one batch per frame count.
            by_count: dict[int, list[int]] = {}
            for i, clip in enumerate(clips):
                by_count.setdefault(len(clip), []).append(i)
            done = {i: cap for ids in by_count.values() for i, cap in zip(ids, subset(ids))}
            return [done[i] for i in range(len(clips))]
        if any(len(c) == 0 for c in clips):
            ok = [i for i, c in enumerate(clips) if len(c)]
            captions = dict(zip(ok, subset(ok)))
            return [captions.get(i, Generated(None, 0, "no frames to caption")) for i in range(len(clips))]
        try:
            return self._generate(clips, prompts)
        except Exception as exc:
            if len(clips) == 1:
                return [Generated(None, 0, f"generation failed: {exc.__class__.__name__}: {exc}")]
        # The batch failed: retry one by one so only the bad clips get error rows.
        return [subset([i])[0] for i in range(len(clips))]
