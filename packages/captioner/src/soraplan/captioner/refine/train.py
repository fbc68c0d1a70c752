"""LoRA fine-tuning of the caption refiner on the shared trainer: one DeepSpeed engine (ZeRO stage
from the config) in one process, or in many under the `deepspeed` launcher or torchrun.

Recipe (Open-Sora-Plan v1.3): LoRA r=64, alpha=64, dropout 0.1 on every attention and MLP
projection, the rewrite instruction as the user turn, loss on the answer only, 1 epoch, global
batch 32, lr 1.5e-4 with 10% warm-up then linear decay, gradient checkpointing.

Output: the shared trainer layout (`config.yaml`, `metrics.jsonl`, `tensorboard/`,
`checkpoints/step_XXXXXXXX/{model/, adapter/, train_state.json}`) plus `adapter/` (the final
adapter and its tokenizer, what `merge` reads), `heldout.jsonl` and `metrics.json` (the run's
held-out loss before and after training).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch

from soraplan.captioner.hub import require_pretrained, torch_dtype
from soraplan.captioner.prompts import PromptConfig
from soraplan.captioner.refine.data import (
    IGNORE_INDEX,
    REFINE_PROMPTS,
    DenseTargetConfig,
    PairSourceConfig,
    RefinePair,
    collate,
    encode_pair,
    generate_dense_targets,
    load_pairs,
    save_pairs,
    split_pairs,
)
from soraplan.core.config import ConfigError, PositiveFloat, PositiveInt, Range
from soraplan.core.outputs import write_json_atomic
from soraplan.core.train.config import EMAConfig, OptimizerConfig, TrainerConfig
from soraplan.core.train.distributed import barrier, mean_over_ranks
from soraplan.core.train.trainer import Trainer

ADAPTER_DIR = "adapter"  # in <output_dir> and in every checkpoint: peft save_pretrained + tokenizer
HELDOUT_FILE = "heldout.jsonl"
PAIRS_FILE = "pairs.jsonl"  # pairs with generated dense targets, written once and reused on resume
SUMMARY_FILE = "metrics.json"


@dataclass
class LoraAdapterConfig:
    """peft LoRA settings; `build` gives peft's own `LoraConfig`."""

    r: PositiveInt = 64
    alpha: PositiveInt = 64
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.1
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def validate(self) -> None:
        if not self.target_modules:
            raise ConfigError("target_modules: name at least one module to adapt")

    def build(self):  # -> peft.LoraConfig; peft is imported lazily (slow import)
        from peft import LoraConfig, TaskType

        return LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=self.r, lora_alpha=self.alpha,
            lora_dropout=self.dropout, target_modules=list(self.target_modules),
        )


@dataclass
class RefineTrainConfig(TrainerConfig):
    output_dir: str = "runs/refiner"
    steps: PositiveInt = 100_000  # upper bound: the run is `epochs` passes over the pairs
    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(lr=1.5e-4, warmup_ratio=0.1, schedule="linear"))
    ema: EMAConfig = field(default_factory=lambda: EMAConfig(enabled=False))  # a LoRA needs none
    base_model: str = ""  # HF id or local path (meta-llama/Llama-3.1-8B-Instruct on GPU)
    data: PairSourceConfig = field(default_factory=PairSourceConfig)
    dense_targets: DenseTargetConfig = field(default_factory=DenseTargetConfig)
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(file=REFINE_PROMPTS, id="osp_refine"))
    lora: LoraAdapterConfig = field(default_factory=LoraAdapterConfig)
    epochs: PositiveFloat = 1.0
    global_batch_size: PositiveInt = 32  # micro_batch_size x processes x gradient accumulation
    micro_batch_size: PositiveInt = 4
    max_length: PositiveInt = 512  # tokens of prompt + answer; longer pairs are cut
    eval_fraction: Annotated[float, Range(ge=0, lt=1)] = 0.05  # held-out share of the pairs
    gradient_checkpointing: bool = True
    # The frozen base weights; the LoRA weights train in float32, or bf16 with precision=bf16.
    dtype: Literal["float32", "bfloat16"] = "bfloat16"

    def validate(self) -> None:
        super().validate()
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(f"global_batch_size {self.global_batch_size} is not a multiple of "
                              f"micro_batch_size {self.micro_batch_size}")


def prepare_pairs(cfg: RefineTrainConfig) -> list[RefinePair]:
    """Load pairs; with dense_targets.enabled, write missing dense targets through the endpoint."""
    pairs = load_pairs(cfg.data, allow_missing_dense=cfg.dense_targets.enabled)
    if cfg.dense_targets.enabled:
        todo = [i for i, p in enumerate(pairs) if not p.dense]
        targets = generate_dense_targets([pairs[i].short for i in todo], cfg.dense_targets)
        for i, dense in zip(todo, targets):
            pairs[i] = RefinePair(pairs[i].short, dense or "")
    return [p for p in pairs if p.dense]


def answer_loss(model: Any, examples: list[dict[str, list[int]]], pad_id: int, batch_size: int,
                device: torch.device | str) -> tuple[float, int]:
    """(summed loss, number) over the answer tokens of `examples`: their ratio is the token-weighted
    mean, what "held-out loss" means everywhere here."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[i : i + batch_size], pad_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            labels = batch["labels"][:, 1:]
            total += torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                reduction="sum",
            ).item()
            count += int((labels != IGNORE_INDEX).sum())
    model.train()
    return total, count


class RefinerTrainer(Trainer):
    """`build` reads the pairs and wraps base model + LoRA in one DeepSpeed engine; `train_step`
    takes one global batch (gradient accumulation inside DeepSpeed); `evaluate` gives the held-out
    loss; `run` trains between two evaluations and writes the final adapter."""

    name = "refine"
    save_frozen = False  # checkpoints hold the LoRA and its optimizer state, not the base model
    cfg: RefineTrainConfig

    def build(self) -> None:
        cfg = self.cfg
        base = require_pretrained(cfg.base_model, "base_model")
        self.template = cfg.prompt.build()
        train_pairs, self.eval_pairs = split_pairs(self.read_pairs(), cfg.eval_fraction, cfg.seed)
        if not train_pairs:
            raise ConfigError(f"no training pairs left from {cfg.data.path} (data.path)")
        per_micro_step = cfg.micro_batch_size * self.world_size
        if cfg.global_batch_size % per_micro_step:
            raise ConfigError(f"global_batch_size {cfg.global_batch_size} is not a multiple of "
                              f"micro_batch_size x processes ({cfg.micro_batch_size} x {self.world_size})")
        self.grad_accum = cfg.global_batch_size // per_micro_step
        self.num_train_pairs = len(train_pairs)

        from peft import get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(base)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id
        self.train_examples = self.encode(train_pairs)
        if not self.train_examples:
            raise ConfigError(f"max_length: every one of the {len(train_pairs)} training pairs has a prompt of "
                              f"{self.cfg.max_length} tokens or more, leaving no answer token to learn; "
                              f"raise max_length or shorten the prompt ({self.cfg.prompt.id})")
        self.eval_examples = self.encode(self.eval_pairs)
        steps_per_epoch = math.ceil(len(self.train_examples) / cfg.global_batch_size)
        self.total_steps = min(cfg.steps, max(1, math.ceil(cfg.epochs * steps_per_epoch)))
        self.orders: dict[int, list[int]] = {}

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype(cfg.dtype))
        if cfg.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.model = get_peft_model(model, cfg.lora.build()).to(self.device)
        optimizer = cfg.optimizer.build([p for p in self.model.parameters() if p.requires_grad])
        scheduler = self.lr_scheduler(cfg.optimizer, optimizer)
        self.engines["model"] = self.engine = self.initialize(
            self.model, optimizer, cfg.micro_batch_size, self.grad_accum, scheduler)
        self.eval_loss_before: float | None = None

    def read_pairs(self) -> list[RefinePair]:
        """The pairs; generated dense targets are written once (rank 0) to <output_dir>/pairs.jsonl,
        which every rank and every resumed run then reads, so all train on the same targets."""
        if not self.cfg.dense_targets.enabled:
            return prepare_pairs(self.cfg)
        cached = self.out / PAIRS_FILE
        if self.rank == 0 and not cached.is_file():
            save_pairs(prepare_pairs(self.cfg), cached)
        barrier()
        return load_pairs(PairSourceConfig(path=str(cached)))

    def encode(self, pairs: list[RefinePair]) -> list[dict[str, list[int]]]:
        examples = [encode_pair(self.tokenizer, self.template, p, self.cfg.max_length) for p in pairs]
        # A pair whose prompt alone fills max_length has no answer token left to learn from.
        return [e for e in examples if any(label != IGNORE_INDEX for label in e["labels"])]

    def micro_batch(self, index: int) -> list[int]:
        """Training examples of global micro-batch `index`: a slice of the stream of seeded
        per-epoch shuffles, so it depends on the step alone and a resumed run sees the same data."""
        size = self.cfg.micro_batch_size * self.world_size
        n = len(self.train_examples)
        ids: list[int] = []
        while len(ids) < size:
            epoch, offset = divmod(index * size + len(ids), n)
            if epoch not in self.orders:
                generator = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
                self.orders[epoch] = torch.randperm(n, generator=generator).tolist()
            ids += self.orders[epoch][offset : offset + size - len(ids)]
        return ids[self.rank :: self.world_size]  # every rank takes its share of the same batch

    def train_step(self) -> dict[str, float]:
        # LoRA dropout draws from (seed, step, rank), so a resumed run repeats the uninterrupted one.
        torch.manual_seed((self.cfg.seed * 100_003 + self.step) * 1_009 + self.rank)
        lr = self.engine.get_lr()[0]
        loss_sum = 0.0
        for micro in range(self.grad_accum):
            examples = [self.train_examples[i] for i in self.micro_batch(self.step * self.grad_accum + micro)]
            batch = {k: v.to(self.device) for k, v in collate(examples, self.pad_id).items()}
            loss = self.engine(**batch).loss
            self.engine.backward(loss)  # DeepSpeed scales by 1 / accumulation
            self.engine.step()  # the optimizer and the schedule step at the last micro-batch
            loss_sum += loss.item()
        loss = mean_over_ranks(torch.tensor(loss_sum / self.grad_accum, device=self.device)).item()
        return {"loss": loss, "lr": lr}

    def evaluate(self) -> float | None:
        """Held-out loss (token-weighted mean over answer tokens); ranks share the pairs."""
        if not self.eval_examples:
            return None
        total, count = answer_loss(self.model, self.eval_examples[self.rank :: self.world_size], self.pad_id,
                                   self.cfg.micro_batch_size, self.device)
        sums = torch.tensor([total, count], dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(sums)
        return (sums[0] / sums[1].clamp(min=1)).item()

    def extra_state(self) -> dict[str, Any]:
        return {"eval_loss_before": self.eval_loss_before}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.eval_loss_before = state.get("eval_loss_before")

    def export(self, directory: Path) -> None:
        """The adapter (peft safetensors) and the tokenizer it was trained with, in <directory>/adapter."""
        self.model.save_pretrained(directory / ADAPTER_DIR)
        self.tokenizer.save_pretrained(directory / ADAPTER_DIR)

    def run(self) -> dict[str, Any]:
        """Evaluate, train (from the latest checkpoint, if any), evaluate; on rank 0 write the final
        adapter, heldout.jsonl and metrics.json. Returns the metrics (on every rank)."""
        if self.rank == 0:
            save_pairs(self.eval_pairs, self.out / HELDOUT_FILE)
        if self.eval_loss_before is None:  # a resumed run keeps the loss of the untrained adapter
            self.eval_loss_before = self.evaluate()
        start = time.monotonic()
        self.fit()
        metrics = {
            "train_pairs": self.num_train_pairs,
            "eval_pairs": len(self.eval_pairs),
            "steps": self.step,
            "planned_steps": self.total_steps,
            "grad_accumulation": self.grad_accum,
            "world_size": self.world_size,
            "train_seconds": round(time.monotonic() - start, 2),
            "eval_loss_before": self.eval_loss_before,
            "eval_loss_after": self.evaluate(),
        }
        if self.rank == 0:
            self.export(self.out)
            write_json_atomic(self.out / SUMMARY_FILE, metrics)
        barrier()
        return metrics
