"""Refiner training pairs (short caption -> dense caption): loading, dense-target generation
through an OpenAI-compatible endpoint, and tokenisation with the loss on the answer only."""

from __future__ import annotations

import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from soraplan.captioner.postprocess import clean_caption
from soraplan.captioner.prompts import PromptConfig, PromptTemplate
from soraplan.core.config import ConfigError, NonNegativeInt, PositiveFloat, PositiveInt, Range
from soraplan.core.train.checkpoint import atomic_write_text

IGNORE_INDEX = -100  # label of prompt and padding tokens: no loss there
REFINE_PROMPTS = "pipelines/configs/prompts/refine.yaml"


@dataclass(frozen=True)
class RefinePair:
    short: str
    dense: str


@dataclass
class PairSourceConfig:
    # .jsonl ({"short", "dense"} or {"input", "output"} per line), .json (Open-Sora-Plan refiner
    # list of {instruction, input, output}; the configured prompt replaces `instruction`), or a
    # text file of short captions aligned line by line with `dense_path`.
    path: str = ""
    dense_path: str = ""
    limit: PositiveInt | None = None


def load_pairs(cfg: PairSourceConfig, allow_missing_dense: bool = False) -> list[RefinePair]:
    """Pairs from `cfg`; with `allow_missing_dense`, a text file alone gives pairs with dense=''."""
    path = Path(cfg.path)
    if not path.is_file():
        raise FileNotFoundError(f"training pairs not found: {path} (set data.path)")
    if path.suffix == ".jsonl":
        records = []
        for line_no, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                records.append(_json_record(line, f"{path}:{line_no}"))
        pairs = [RefinePair(r.get("short", r.get("input", "")), r.get("dense", r.get("output", ""))) for r in records]
    elif path.suffix == ".json":
        records = _json_record(path.read_text(), str(path), list)
        try:
            pairs = [RefinePair(r["input"], r["output"]) for r in records]
        except (KeyError, TypeError):
            raise ConfigError(f"{path}: expected a list of {{instruction, input, output}} records") from None
    else:
        shorts = path.read_text().splitlines()
        if cfg.dense_path:
            denses = Path(cfg.dense_path).read_text().splitlines()
            if len(denses) != len(shorts):
                raise ConfigError(f"{path} has {len(shorts)} lines but {cfg.dense_path} has {len(denses)}")
        elif allow_missing_dense:
            denses = [""] * len(shorts)
        else:
            raise ConfigError(f"{path} is a text file: set data.dense_path or enable dense_targets")
        pairs = [RefinePair(s, d) for s, d in zip(shorts, denses)]
    pairs = [RefinePair(p.short.strip(), p.dense.strip()) for p in pairs if p.short.strip()]
    return pairs[: cfg.limit] if cfg.limit is not None else pairs


def _json_record(text: str, where: str, kind: type = dict) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: expected a JSON {'object' if kind is dict else 'list'}")
    return value


def save_pairs(pairs: list[RefinePair], path: str | os.PathLike[str]) -> None:
    atomic_write_text(path, "".join(json.dumps({"short": p.short, "dense": p.dense}) + "\n" for p in pairs))


def split_pairs(pairs: list[RefinePair], eval_fraction: float, seed: int) -> tuple[list[RefinePair], list[RefinePair]]:
    """(train, held-out): a seeded shuffle, so every run and every rank gets the same split."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_eval = int(round(len(pairs) * eval_fraction))
    return [pairs[i] for i in order[n_eval:]], [pairs[i] for i in order[:n_eval]]


@dataclass
class DenseTargetConfig:
    """Write dense targets with an OpenAI-compatible chat endpoint (an API or a vLLM server)."""

    enabled: bool = False
    base_url: str = ""  # e.g. http://127.0.0.1:8000/v1
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"  # name of the env var holding the key, never the key
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(file=REFINE_PROMPTS, id="dense_target"))
    temperature: Annotated[float, Range(ge=0, le=2)] = 0.7  # the OpenAI API's range
    max_tokens: PositiveInt = 300
    concurrency: PositiveInt = 8  # requests in flight
    timeout_s: PositiveFloat = 60.0
    max_retries: NonNegativeInt = 2

    def validate(self) -> None:
        if self.enabled and not (self.base_url and self.model):
            raise ConfigError("dense targets need dense_targets.base_url and dense_targets.model")


def generate_dense_targets(shorts: list[str], cfg: DenseTargetConfig) -> list[str | None]:
    """One dense rewrite per short caption; None where the endpoint failed or answered empty."""
    cfg.validate()
    from openai import OpenAI

    template = cfg.prompt.build()
    client = OpenAI(
        base_url=cfg.base_url,
        api_key=os.environ.get(cfg.api_key_env) or "EMPTY",  # self-hosted servers need no key
        timeout=cfg.timeout_s,
        max_retries=cfg.max_retries,
    )

    def rewrite(short: str) -> str | None:
        messages = [{"role": "system", "content": template.system}] if template.system else []
        messages.append({"role": "user", "content": template.user_text(caption=short)})
        try:
            reply = client.chat.completions.create(
                model=cfg.model, messages=messages, temperature=cfg.temperature, max_tokens=cfg.max_tokens
            )
        except Exception:  # openai.APIError, timeouts: the pair is skipped, the run goes on
            return None
        text = clean_caption(reply.choices[0].message.content or "")
        return text or None

    with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        return list(pool.map(rewrite, shorts))


def chat_prompt(tokenizer: Any, template: PromptTemplate, short: str) -> str:
    """The chat-formatted user turn for `short`, ending where the assistant's answer starts."""
    messages = [{"role": "system", "content": template.system}] if template.system else []
    messages.append({"role": "user", "content": template.user_text(caption=short)})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_pair(tokenizer: Any, template: PromptTemplate, pair: RefinePair, max_length: int) -> dict[str, list[int]]:
    """input_ids and labels; prompt tokens are labelled IGNORE_INDEX so only the answer is learnt.

    Prompt and answer are tokenised separately so the boundary is exact.
    """
    prompt_ids = tokenizer(chat_prompt(tokenizer, template, pair.short), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(pair.dense, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def collate(examples: list[dict[str, list[int]]], pad_id: int):  # -> dict of torch tensors
    """Right-pad a micro-batch; padding gets no attention and no loss."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
