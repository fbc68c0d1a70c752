"""Test kit: tiny randomly initialised models built from configs, and a tokenizer trained on the
spot.

They stand in for LLaMA-3.1-Instruct and LLaVA-class VLMs in tests and CPU benchmarks: same
classes, same save/load path, nothing downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
QWEN_VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
SPECIAL_TOKENS = [
    "<pad>", "<s>", "</s>", IMAGE_TOKEN, VIDEO_TOKEN, "<|system|>", "<|user|>", "<|assistant|>", *QWEN_VISION_TOKENS
]


def chat_template(image: str = IMAGE_TOKEN, video: str = "") -> str:
    """Role-tagged turns closed by </s>; content is a string or a list of image/video/text parts."""
    return (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>' }}"
        "{% if m['content'] is string %}{{ m['content'] }}"
        "{% else %}{% for c in m['content'] %}"
        f"{{% if c['type'] == 'image' %}}{{{{ '{image}' }}}}{{% elif c['type'] == 'video' %}}{{{{ '{video}' }}}}"
        "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
        "{% endfor %}{% endif %}{{ '</s>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    )


CHAT_TEMPLATE = chat_template()


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 512):  # -> PreTrainedTokenizerFast
    """A byte-level BPE tokenizer trained on `corpus`, with special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", chat_template=CHAT_TEMPLATE
    )


def build_tiny_llama(out_dir: str | Path, tokenizer, hidden_size: int = 64, num_layers: int = 2, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        # LoRA leaves the final norm and lm_head frozen. At the usual 0.02 init their logits stay
        # within about +-1 for a narrow model, which caps how far a LoRA can lower the loss;
        # 1/sqrt(width) gives unit-scale logits at the start and room to become confident.
        initializer_range=hidden_size**-0.5,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def _tiny_clip_llama(tokenizer, image_size: int, patch_size: int):  # -> (CLIPVisionConfig, LlamaConfig)
    """The vision tower and language model of the tiny LLaVA-class models."""
    from transformers import CLIPVisionConfig, LlamaConfig

    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=patch_size, projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return vision, text


def _save(model, processor, tokenizer, out_dir: str | Path) -> Path:
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return Path(out_dir)


def build_tiny_llava(out_dir: str | Path, tokenizer, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> Path:
    import torch
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    vision, text = _tiny_clip_llama(tokenizer, image_size, patch_size)
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",  # "full" breaks the tiny CLIP's token count
        vision_feature_layer=-1,
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
    )
    torch.manual_seed(seed)
    return _save(LlavaForConditionalGeneration(config), processor, tokenizer, out_dir)


def build_tiny_llava_next_video(
    out_dir: str | Path, tokenizer, image_size: int = 32, patch_size: int = 8, seed: int = 0
) -> Path:
    """A LLaVA-NeXT-Video model: frames of a video are pooled 2x2 per frame; images go through anyres."""
    import torch
    from transformers import (
        LlavaNextImageProcessor,
        LlavaNextVideoConfig,
        LlavaNextVideoForConditionalGeneration,
        LlavaNextVideoProcessor,
    )
    from transformers.models.llava_next_video.video_processing_llava_next_video import LlavaNextVideoVideoProcessor

    vision, text = _tiny_clip_llama(tokenizer, image_size, patch_size)
    pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    patches = (image_size // patch_size) ** 2
    config = LlavaNextVideoConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_index=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        image_seq_length=patches,
        video_seq_length=patches // 4,  # per frame, after the 2x2 average pooling
    )
    size = dict(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    processor = LlavaNextVideoProcessor(
        video_processor=LlavaNextVideoVideoProcessor(**size),
        image_processor=LlavaNextImageProcessor(image_grid_pinpoints=pinpoints, **size),
        tokenizer=tokenizer, patch_size=patch_size, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=chat_template(video=VIDEO_TOKEN),
    )
    torch.manual_seed(seed)
    return _save(LlavaNextVideoForConditionalGeneration(config), processor, tokenizer, out_dir)


def build_tiny_qwen2_vl(out_dir: str | Path, tokenizer, seed: int = 0) -> Path:
    """A Qwen2-VL-style model (M-RoPE, patch merging) that takes frames as images or as a video."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_VISION_TOKENS}
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, **special,
        ),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], **special,
    )
    # Few pixels: 2x2 merged patches of 28 px per frame (pair of frames for video).
    pixels = dict(min_pixels=28 * 28 * 4, max_pixels=56 * 56 * 4, patch_size=14, merge_size=2, temporal_patch_size=2)
    template = chat_template(image="<|vision_start|><|image_pad|><|vision_end|>", video="<|vision_start|><|video_pad|><|vision_end|>")
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels), video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer, chat_template=template,
    )
    torch.manual_seed(seed)
    return _save(Qwen2VLForConditionalGeneration(config), processor, tokenizer, out_dir)
