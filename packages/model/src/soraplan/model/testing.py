"""Test kits: stand-ins for a trained text encoder and for encoded latents, so tests, smoke runs
and benches need neither a model hub nor a trained VAE."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from soraplan.model.dit.data import write_index, write_latent, write_null_text


def write_synthetic_latents(root: str | os.PathLike[str], shapes: list[tuple[int, int, int]],
                            per_shape: int, channels: int, text_dim: int, seed: int = 0) -> Path:
    """Random latents and text states in the latent-shard layout (`soraplan.model.dit.data`)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for shape_index, (t, h, w) in enumerate(shapes):
        for i in range(per_shape):
            length = int(torch.randint(2, 9, (1,), generator=generator))
            rows.append(write_latent(
                root, f"synthetic-{shape_index}-{i:04d}", f"synthetic sample {i}",
                torch.randn(channels, t, h, w, generator=generator),
                torch.randn(length, text_dim, generator=generator)))
    write_index(root, rows)
    write_null_text(root, torch.zeros(1, text_dim))
    return Path(root)


def save_tiny_t5(path: str | os.PathLike[str], d_model: int = 32, seed: int = 0,
                 vocabulary: list[str] | None = None, num_layers: int = 2, num_heads: int = 4) -> Path:
    """A randomly initialised T5 encoder and its tokenizer, saved at `path` and loaded back through
    `soraplan.model.dit.text.TextEncoder`: a stand-in for mT5 in tests, smoke runs and trials.

    The tokenizer is word-level over `vocabulary` (lower-case words; anything else is `<unk>`),
    or character-level over printable ASCII when `vocabulary` is None. A random encoder still
    gives every prompt distinct, fixed states, which is all a DiT needs to learn its conditioning.
    """
    import string

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    specials = ["<pad>", "</s>", "<unk>"]
    tokens = sorted(set(vocabulary)) if vocabulary is not None else list(string.printable[:95])
    vocab = {tok: i for i, tok in enumerate(specials + [t for t in tokens if t not in specials])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    if vocabulary is None:
        tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    else:
        tokenizer.normalizer = normalizers.Lowercase()
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>",
                                   eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(vocab), d_model=d_model, d_kv=d_model // num_heads,
                      d_ff=2 * d_model, num_layers=num_layers, num_heads=num_heads, pad_token_id=0,
                      eos_token_id=1, decoder_start_token_id=0)
    path = Path(path)
    T5EncoderModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path
