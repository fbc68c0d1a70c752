"""Generation settings shared by the VLM captioner and the refiner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from soraplan.core.config import NonNegativeInt, PositiveFloat, PositiveInt, Range


@dataclass
class GenerationConfig:
    max_new_tokens: PositiveInt = 256
    do_sample: bool = False  # greedy by default: captions are reproducible
    temperature: PositiveFloat = 0.7  # only used when do_sample
    top_p: Annotated[float, Range(gt=0, le=1)] = 0.9
    repetition_penalty: PositiveFloat = 1.0
    seed: NonNegativeInt = 0

    def kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs


@dataclass(frozen=True)
class Generated:
    """One generated text (cleaned), its length in tokens, or why there is none."""

    text: str | None
    num_tokens: int
    error: str | None = None


def generated_lengths(new_tokens: Any, eos_ids: set[int], pad_id: int | None) -> list[int]:
    """Tokens generated per row of a (B x T) tensor of new tokens: up to and including EOS."""
    lengths = []
    for row in new_tokens.tolist():
        n = 0
        for token in row:
            if token in eos_ids:
                n += 1
                break
            if token == pad_id:
                break
            n += 1
        lengths.append(n)
    return lengths
