"""The trainer kit: EMA warm-up, learning-rate schedules, and the shared loop on a tiny model."""

import json

import pytest
import torch
from torch import nn

from soraplan.core.config import ConfigError, load_config
from soraplan.core.train.config import OptimizerConfig, TrainerConfig
from soraplan.core.train.ema import EMA
from soraplan.core.train.trainer import EMA_DIR, METRICS_FILE, Trainer


def test_ema_warmup_tracks_the_weights_in_a_short_run():
    model = nn.Linear(4, 4)
    ema = EMA(model, decay=0.9999, warmup=True)
    fixed = EMA(model, decay=0.9999, warmup=False)
    target = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(target[name])
    for _ in range(20):
        ema.update(model)
        fixed.update(model)
    for name in target:
        moved = (ema.shadow[name] - start[name]).norm() / (target[name] - start[name]).norm()
        assert moved > 0.99, name  # the first update copies; warm-up keeps it close after
        stuck = (fixed.shadow[name] - start[name]).norm() / (target[name] - start[name]).norm()
        assert stuck < 0.01, name  # 20 updates at 0.9999: the untrained weights
    assert ema.current_decay() == pytest.approx(21 / 30)


def test_ema_saves_a_model_directory_and_restores_its_shadow(tmp_path):
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    for _ in range(3):
        ema.update(model)
    ema.save_pretrained(model, tmp_path / "ema")
    other = EMA(nn.Linear(3, 2), decay=0.9)
    other.load_pretrained(tmp_path / "ema")
    assert other.updates == 3
    for name in ema.shadow:
        assert torch.equal(ema.shadow[name], other.shadow[name])


def test_learning_rate_schedules():
    constant = OptimizerConfig(warmup_steps=4)
    assert [constant.lr_factor(s, 10) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cosine = OptimizerConfig(warmup_ratio=0.1, schedule="cosine", min_lr_ratio=0.1)
    assert cosine.lr_factor(0, 100) == pytest.approx(0.1)
    assert cosine.lr_factor(10, 100) == pytest.approx(1.0)
    assert cosine.lr_factor(100, 100) == pytest.approx(0.1)
    linear = OptimizerConfig(schedule="linear")
    assert linear.lr_factor(50, 100) == pytest.approx(0.5)
    by_time = OptimizerConfig(schedule="cosine", horizon="max_minutes")
    assert by_time.lr_factor(5, 100, budget_spent=0.5) == pytest.approx(0.5)
    assert by_time.lr_factor(5, 100, budget_spent=1.2) == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="optimizer.horizon is max_minutes but max_minutes is not set"):
        load_config(TrainerConfig, None, ["optimizer.horizon=max_minutes"])
    with pytest.raises(ConfigError, match="warmup_steps or warmup_ratio"):
        load_config(TrainerConfig, None, ["optimizer.warmup_steps=5", "optimizer.warmup_ratio=0.1"])


class RegressionTrainer(Trainer):
    """y = x @ W on seeded batches: enough to exercise every part of the loop."""

    name = "regression"

    def build(self) -> None:
        self.model = nn.Linear(8, 1)
        self.ema_model = self.model
        optimizer = self.cfg.optimizer.build(self.model.parameters())
        self.engines["model"] = self.initialize(self.model, optimizer, micro_batch=4,
                                                lr_scheduler=self.lr_scheduler(self.cfg.optimizer, optimizer))
        self.target = torch.randn(8, 1, generator=torch.Generator().manual_seed(123))

    def train_step(self) -> dict[str, float]:
        generator = torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.step)
        x = torch.randn(4, 8, generator=generator)
        engine = self.engines["model"]
        loss = ((engine(x) - x @ self.target) ** 2).mean()
        lr = engine.get_lr()[0]
        engine.backward(loss)
        engine.step()
        return {"loss": loss.item(), "lr": lr}


def train(out, steps, **extra):
    items = {"output_dir": str(out), "steps": steps, "checkpoint.every": 3, "log_every": 2,
             "optimizer.lr": 0.3, "cpu_threads": 1, "ema.decay": 0.9, **extra}
    cfg = load_config(TrainerConfig, None, [f"{k}={v}" for k, v in items.items()])
    trainer = RegressionTrainer(cfg)
    trainer.fit()
    return trainer


def test_loop_checkpoints_and_exact_resume(tmp_path):
    straight = train(tmp_path / "a", 8)
    ckpts = tmp_path / "a" / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_00000008"
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["step_00000006", "step_00000008"]
    last = ckpts / "step_00000008"
    assert (last / "model").is_dir() and (last / EMA_DIR / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((last / "train_state.json").read_text()) == {"step": 8}
    rows = [json.loads(line) for line in (tmp_path / "a" / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9)) and rows[-1]["loss"] < rows[0]["loss"]
    assert (tmp_path / "a" / "tensorboard").is_dir() and (tmp_path / "a" / "config.yaml").is_file()

    train(tmp_path / "b", 5)  # stops after step 5: checkpoint 3 plus a final one at 5
    resumed = train(tmp_path / "b", 8)
    assert resumed.step == 8
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    for name in straight.ema.shadow:
        assert torch.equal(straight.ema.shadow[name], resumed.ema.shadow[name])


def test_a_schedule_over_the_time_budget_decays_to_its_floor_when_the_budget_stops_the_run(tmp_path):
    trainer = train(tmp_path, 10**9, max_minutes=0.02, **{
        "checkpoint.every": 0, "optimizer.schedule": "cosine", "optimizer.horizon": "max_minutes",
        "optimizer.min_lr_ratio": 0.1})
    rows = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    lrs = [r["lr"] for r in rows]
    assert trainer.step == len(rows) > 20 and trainer.budget_spent >= 1
    assert lrs[0] == pytest.approx(0.3, rel=0.05) and 0.03 <= lrs[-1] < 0.04
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
