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


def save_tiny_t5(path: str | os.PathLike[str], d_model: int = 32, seed: int = 0) -> Path:
    """A randomly initialised 2-layer T5 encoder with a character tokenizer, saved at `path`:
    a stand-in for mT5, loaded back through `soraplan.model.dit.text.TextEncoder`."""
    import string

    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + list(string.printable[:95]))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>",
                                   eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(vocab), d_model=d_model, d_kv=8, d_ff=2 * d_model,
                      num_layers=2, num_heads=4, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    path = Path(path)
    T5EncoderModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path
