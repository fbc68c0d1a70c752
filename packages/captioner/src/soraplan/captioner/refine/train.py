"""LoRA fine-tuning of the caption refiner: one process, or DeepSpeed ZeRO-2 under `deepspeed`.

Recipe (Open-Sora-Plan v1.3): LoRA r=64, alpha=64, dropout 0.1 on every attention and MLP
projection, the rewrite instruction as the user turn, loss on the answer only, 1 epoch, global
batch 32, lr 1.5e-4 with 10% warmup then linear decay, gradient checkpointing.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from soraplan.captioner.hub import pick_device, require_pretrained, torch_dtype
from soraplan.captioner.prompts import PromptConfig
from soraplan.captioner.refine.data import (
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
from soraplan.core.config import dump_yaml

ADAPTER_DIR = "adapter"


@dataclass
class LoraSettings:
    r: int = 64
    alpha: int = 64
    dropout: float = 0.1
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def build(self):  # -> peft.LoraConfig; peft is imported lazily (slow import)
        from peft import LoraConfig, TaskType

        return LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=self.r, lora_alpha=self.alpha,
            lora_dropout=self.dropout, target_modules=list(self.target_modules),
        )


@dataclass
class DeepSpeedSettings:
    enabled: bool = False  # run under `deepspeed` (or torchrun) with ZeRO
    zero_stage: int = 2


@dataclass
class RefineTrainConfig:
    base_model: str = ""  # HF id or local path (meta-llama/Llama-3.1-8B-Instruct on GPU)
    output_dir: str = ""
    data: PairSourceConfig = field(default_factory=PairSourceConfig)
    dense_targets: DenseTargetConfig = field(default_factory=DenseTargetConfig)
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(file=REFINE_PROMPTS, id="osp_refine"))
    lora: LoraSettings = field(default_factory=LoraSettings)
    deepspeed: DeepSpeedSettings = field(default_factory=DeepSpeedSettings)
    epochs: float = 1.0
    global_batch_size: int = 32
    micro_batch_size: int = 4
    lr: float = 1.5e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = True
    max_length: int = 512
    eval_fraction: float = 0.05
    max_steps: int | None = None  # stop early (smoke runs, benches)
    max_seconds: float | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    device: str = "auto"
    seed: int = 0
    log_every: int = 10


def prepare_pairs(cfg: RefineTrainConfig) -> list[RefinePair]:
    """Load pairs; with dense_targets.enabled, write missing dense targets through the endpoint."""
    pairs = load_pairs(cfg.data, allow_missing_dense=cfg.dense_targets.enabled)
    if cfg.dense_targets.enabled:
        todo = [i for i, p in enumerate(pairs) if not p.dense]
        targets = generate_dense_targets([pairs[i].short for i in todo], cfg.dense_targets)
        for i, dense in zip(todo, targets):
            pairs[i] = RefinePair(pairs[i].short, dense or "")
    return [p for p in pairs if p.dense]


def _has_answer(example: dict[str, list[int]]) -> bool:
    return any(label != -100 for label in example["labels"])


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _dist() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by deepspeed/torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        import deepspeed

        deepspeed.init_distributed()
    return dist.get_rank(), dist.get_world_size()


def mean_loss(model: Any, examples: list[dict[str, list[int]]], pad_id: int, batch_size: int, device: str) -> float:
    """Token-weighted mean loss over answer tokens (what "held-out loss" means everywhere here)."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[i : i + batch_size], pad_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            labels = batch["labels"][:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
            )
            total += losses.item()
            count += int((labels != -100).sum())
    model.train()
    return total / max(count, 1)


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    model: Any  # the trained peft model, in memory


def train_refiner(cfg: RefineTrainConfig) -> TrainResult:
    """Train a LoRA adapter; writes <output_dir>/adapter, metrics.json, run.yaml, heldout.jsonl."""
    base = require_pretrained(cfg.base_model, "base_model")
    if not cfg.output_dir:
        raise ValueError("set output_dir")
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rank, world = _dist()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    template = cfg.prompt.build()
    pairs = prepare_pairs(cfg)
    train_pairs, eval_pairs = split_pairs(pairs, cfg.eval_fraction, cfg.seed)
    if not train_pairs:
        raise ValueError(f"no training pairs left from {cfg.data.path}")

    tokenizer = AutoTokenizer.from_pretrained(base)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # A pair whose prompt alone fills max_length has no answer token left to learn from.
    train_ex = [e for p in train_pairs if _has_answer(e := encode_pair(tokenizer, template, p, cfg.max_length))]
    eval_ex = [e for p in eval_pairs if _has_answer(e := encode_pair(tokenizer, template, p, cfg.max_length))]

    device = pick_device(cfg.device) if world == 1 else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype(cfg.dtype))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, cfg.lora.build()).to(device)

    accum = max(1, cfg.global_batch_size // (cfg.micro_batch_size * world))
    steps_per_epoch = math.ceil(len(train_ex) / (cfg.micro_batch_size * accum * world))
    total_steps = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = max(1, round(cfg.warmup_ratio * total_steps))
    params = [p for p in model.parameters() if p.requires_grad]

    engine = None
    if cfg.deepspeed.enabled:
        import deepspeed

        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
            "gradient_accumulation_steps": accum,
            "gradient_clipping": cfg.max_grad_norm,
            "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
            "bf16": {"enabled": cfg.dtype == "bfloat16"},
            "fp16": {"enabled": cfg.dtype == "float16"},
            "steps_per_print": 10**9,
        }
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup, total_steps))
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup, total_steps))

    eval_before = mean_loss(model, eval_ex, pad_id, cfg.micro_batch_size, device) if eval_ex else None
    generator = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    losses: list[float] = []
    start = time.perf_counter()
    step = 0
    model.train()
    while step < total_steps:
        if cfg.max_seconds is not None and time.perf_counter() - start > cfg.max_seconds:
            break
        step_loss = 0.0
        for _ in range(accum):
            if len(order) < cfg.micro_batch_size * world:  # next epoch: a fresh seeded shuffle
                order += torch.randperm(len(train_ex), generator=generator).tolist()
            take, order = order[: cfg.micro_batch_size * world], order[cfg.micro_batch_size * world :]
            mine = take[rank::world]  # every rank sees its own slice of the same global order
            batch = {k: v.to(device) for k, v in collate([train_ex[i] for i in mine], pad_id).items()}
            loss = (engine or model)(**batch).loss
            if engine is not None:
                engine.backward(loss)  # DeepSpeed scales by 1/accum and steps at the boundary
                engine.step()
            else:
                (loss / accum).backward()
            step_loss += loss.item() / accum
        if engine is None:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        step += 1
        if rank == 0 and (step % cfg.log_every == 0 or step == total_steps):
            print(json.dumps({"step": step, "loss": round(step_loss, 4), "lr": scheduler.get_last_lr()[0]}), flush=True)

    eval_after = mean_loss(model, eval_ex, pad_id, cfg.micro_batch_size, device) if eval_ex else None
    metrics = {
        "train_pairs": len(train_pairs),
        "eval_pairs": len(eval_pairs),
        "steps": step,
        "planned_steps": total_steps,
        "grad_accumulation": accum,
        "world_size": world,
        "train_seconds": round(time.perf_counter() - start, 2),
        "eval_loss_before": eval_before,
        "eval_loss_after": eval_after,
        "train_losses": losses,
    }
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out / ADAPTER_DIR)  # adapter weights only, safetensors
        tokenizer.save_pretrained(out / ADAPTER_DIR)
        save_pairs(eval_pairs, out / "heldout.jsonl")
        dump_yaml(cfg, out / "run.yaml")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return TrainResult(metrics, model)
