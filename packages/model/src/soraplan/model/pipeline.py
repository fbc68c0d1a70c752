"""`SoraPlanPipeline`: text-to-video with our DiTs and VAEs as a diffusers pipeline.

    pipe = SoraPlanPipeline.from_pretrained("kite_pipeline")  # a save_pretrained directory
    frames = pipe("a red kite over the sea", num_frames=29, height=256, width=256,
                  num_inference_steps=50, guidance_scale=7.5,
                  generator=torch.Generator().manual_seed(0)).frames[0]  # (T, H, W, 3) in [0, 1]

The transformer is a Skiparse DiT or an STDiT, the VAE a WF-VAE or a per-frame image VAE
(AutoencoderKL). Sampling is `soraplan.model.dit.diffusion.sample_latents` (the scheduler of
the DiT's diffusion, classifier-free guidance against the empty prompt or `negative_prompt`);
decoding is the VAE's codec (`codec_of`), which undoes the latent shift and scale saved in the
VAE's config. `soraplan-sample` is a CLI over
this class. Loading through `DiffusionPipeline` and `AutoModel`: `soraplan.model.auto`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.video_processor import VideoProcessor
from torch import Tensor

# diffusers loads a saved component only from a module already imported: import every soraplan
# class a pipeline can hold, so `SoraPlanPipeline.from_pretrained` works in a fresh process.
import soraplan.model.dit.modeling_skiparse  # noqa: F401
import soraplan.model.dit.modeling_stdit  # noqa: F401
import soraplan.model.vae.modeling_wfvae  # noqa: F401
from soraplan.model.auto import write_class_module
from soraplan.model.dit.codec import LatentCodec, codec_of
from soraplan.model.dit.diffusion import sample_latents
from soraplan.model.dit.text import encode_text


@dataclass
class SoraPlanPipelineOutput(BaseOutput):
    """`frames`: (B, T, H, W, 3) in [0, 1] for output_type "np", (B, T, 3, H, W) for "pt", lists
    of PIL images for "pil", DiT latents (B, C, T', H', W') for "latent"."""

    frames: np.ndarray | Tensor | list[Any]


class SoraPlanPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->transformer->vae"
    # Prompts may come as embeddings (a text cache) instead.
    _optional_components = ["tokenizer", "text_encoder"]

    def __init__(self, tokenizer: Any, text_encoder: Any, transformer: torch.nn.Module,
                 vae: torch.nn.Module, scheduler: Any) -> None:
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder,
                              transformer=transformer, vae=vae, scheduler=scheduler)
        self.video_processor = VideoProcessor(vae_scale_factor=self.codec.spatial_compression)

    @property
    def codec(self) -> LatentCodec:
        return codec_of(self.vae)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        # diffusers records a component by its parent package when it has a pipeline package of
        # that name ("dit" for soraplan.model.dit.*) and then looks for the class there when
        # loading; record ours by their full module path, as it does for other outside classes.
        if type(value).__module__.startswith("soraplan.") and name in self.__dict__.get("_internal_dict", {}):
            self.register_to_config(**{name: (type(value).__module__, type(value).__name__)})

    def save_pretrained(self, save_directory: str | os.PathLike[str], *args: Any, **kwargs: Any) -> None:
        """One directory: model_index.json, a folder per component, and `pipeline.py` for
        `DiffusionPipeline.from_pretrained(dir, custom_pipeline="pipeline", trust_remote_code=True)`."""
        write_class_module(save_directory, type(self))
        super().save_pretrained(save_directory, *args, **kwargs)

    def check_inputs(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """The latent shape (C, T', H', W') of a video of this size; a ValueError naming the
        argument when the VAE or the DiT cannot make one."""
        codec = self.codec
        t, s = codec.temporal_compression, codec.spatial_compression
        if num_frames < 1 or (num_frames - 1) % t:
            raise ValueError(f"num_frames must be 1 + {t}n, got {num_frames}")
        if height % s or width % s:
            raise ValueError(f"height and width must be multiples of {s}, got {height}x{width}")
        shape = (codec.latent_channels, 1 + (num_frames - 1) // t, height // s, width // s)
        try:
            self.transformer.token_grid(shape[1:])
        except ValueError as exc:
            raise ValueError(f"height/width: {exc}") from None
        return shape

    def encode_prompt(self, prompts: list[str], max_sequence_length: int = 512) -> tuple[Tensor, Tensor]:
        """Text states (B, L, D) and mask (B, L), L the longest prompt's tokens."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("this pipeline holds no text encoder: pass prompt_embeds and "
                             "negative_prompt_embeds")
        return encode_text(self.tokenizer, self.text_encoder, prompts, max_sequence_length)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str = "",
        num_frames: int = 29,
        height: int = 256,
        width: int = 256,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        generator: torch.Generator | None = None,
        prompt_embeds: Tensor | None = None,
        prompt_attention_mask: Tensor | None = None,
        negative_prompt_embeds: Tensor | None = None,
        negative_prompt_attention_mask: Tensor | None = None,
        max_sequence_length: int = 512,
        output_type: str = "np",
        return_dict: bool = True,
    ) -> SoraPlanPipelineOutput | tuple[Any]:
        """One video per prompt. `generator`: a CPU generator, the only source of noise (None:
        drawn from torch's global generator). Embeddings (from `encode_prompt` or a text cache)
        replace `prompt` and `negative_prompt`; masks default to all tokens."""
        latent_shape = self.check_inputs(num_frames, height, width)
        if prompt_embeds is None:
            if prompt is None:
                raise ValueError("pass prompt or prompt_embeds")
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            states, mask = self.encode_prompt([*prompts, *[negative_prompt] * len(prompts)],
                                              max_sequence_length)
            prompt_embeds, negative_prompt_embeds = states.chunk(2)
            prompt_attention_mask, negative_prompt_attention_mask = mask.chunk(2)
        elif negative_prompt_embeds is None:
            raise ValueError("prompt_embeds need negative_prompt_embeds (e.g. of the empty prompt)")
        batch = prompt_embeds.shape[0]
        if prompt_attention_mask is None:
            prompt_attention_mask = torch.ones(prompt_embeds.shape[:2], dtype=torch.bool)
        if negative_prompt_attention_mask is None:
            negative_prompt_attention_mask = torch.ones(negative_prompt_embeds.shape[:2], dtype=torch.bool)
        device = self._execution_device
        text = [x.to(device) for x in (prompt_embeds, prompt_attention_mask)]
        null = [x.expand(batch, *x.shape[1:]).to(device)
                for x in (negative_prompt_embeds, negative_prompt_attention_mask)]
        seed = generator if generator is not None else int(torch.randint(2**62, ()))
        latents = sample_latents(self.transformer, self.scheduler, latent_shape, *text, *null,
                                 num_inference_steps, guidance_scale, seed)
        if output_type == "latent":
            frames = latents
        else:
            video = self.codec.decode(latents)  # (B, 3, T, H, W) in [-1, 1]
            frames = self.video_processor.postprocess_video(video, output_type)
        self.maybe_free_model_hooks()
        return SoraPlanPipelineOutput(frames) if return_dict else (frames,)
