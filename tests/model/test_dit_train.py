import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from soraplan.core.config import ConfigError, load_config
from soraplan.core.train.ema import WEIGHTS_NAME
from soraplan.core.train.trainer import EMA_DIR
from soraplan.core.train.universal import saved_world_size
from soraplan.model.dit.data import LatentDataset
from soraplan.model.dit.modeling_skiparse import SkiparseDiT
from soraplan.model.dit.train import DiTTrainer, TrainDiTConfig
from soraplan.model.testing import write_synthetic_latents

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "pipelines" / "configs" / "dit_tiny_cpu.yaml"


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    # Two buckets of 8 samples: a 3-frame video shape and an image shape.
    return write_synthetic_latents(tmp_path_factory.mktemp("latents"), [(3, 8, 8), (1, 8, 12)],
                                   per_shape=8, channels=4, text_dim=32, seed=0)


def overrides(latents: Path, out: Path, steps: int, **extra) -> list[str]:
    items = {"data.root": str(latents), "output_dir": str(out), "steps": steps,
             "checkpoint.every": 2, "ema.decay": 0.5, "optimizer.lr": 1e-3, "log_every": 1000,
             "optimizer.warmup_steps": 2, "cpu_threads": 1, **extra}
    return [f"{k}={v}" for k, v in items.items()]


def losses(out: Path, key: str = "loss") -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows}  # a resumed run rewrites steps after its restart


def ema_weights(out: Path) -> dict[str, torch.Tensor]:
    latest = (out / "checkpoints" / "latest").read_text().strip()
    return load_file(str(out / "checkpoints" / latest / EMA_DIR / WEIGHTS_NAME))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                        atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


def test_latent_dataset_buckets_and_caption_dropout(latents):
    dataset = LatentDataset(latents)
    assert len(dataset) == 16 and set(dataset.bucket_of) == {(3, 8, 8), (1, 8, 12)}
    batch = dataset.batch([0, 1], drop_caption=[False, True])
    assert batch["latents"].shape == (2, 4, *dataset.bucket_of[0])
    assert batch["text_mask"][1].sum() == 1  # the dropped caption is the 1-token empty prompt
    assert torch.all(batch["text_states"][1] == 0)


def train(args: list[str]) -> Path:
    cfg = load_config(TrainDiTConfig, CONFIG, args)
    DiTTrainer(cfg).fit()
    return Path(cfg.output_dir)


def test_resume_reproduces_uninterrupted_run(latents, tmp_path):
    straight = train(overrides(latents, tmp_path / "a", 4, sample_every=4, sample_steps=2))
    events = list((straight / "tensorboard").glob("events.out.tfevents.*"))
    tags = set()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for event_file in events:
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"]) | set(acc.Tags()["images"])
    assert {"train/loss", "train/grad_norm", "samples/frames"} <= tags
    train(overrides(latents, tmp_path / "b", 2))
    resumed = train(overrides(latents, tmp_path / "b", 4))
    state = json.loads((resumed / "checkpoints" / "step_00000004" / "train_state.json").read_text())
    assert state["step"] == 4 and state["sampler"]["step"] == 4
    # Saved and resumed by one process: DeepSpeed's own shards load, no universal conversion.
    assert saved_world_size(resumed / "checkpoints" / "step_00000002") == 1
    assert not (resumed / "checkpoints" / "step_00000002" / "universal").exists()
    assert losses(straight) == losses(resumed)
    # The learning-rate warm-up resumes where it stopped.
    assert losses(resumed, "lr") == {1: 5e-4, 2: 1e-3, 3: 1e-3, 4: 1e-3}
    assert_same_weights(ema_weights(straight), ema_weights(resumed), atol=0)
    # The EMA directory is a diffusers model directory, loadable for sampling.
    model = SkiparseDiT.from_pretrained(resumed / "checkpoints" / "step_00000004" / "ema")
    assert model.config.num_layers == 4
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir() if p.is_dir()) == [
        "step_00000002", "step_00000004"]


def test_training_without_data_fails_at_start_naming_the_keys(tmp_path, capsys):
    from soraplan.model.dit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(CONFIG), f"output_dir={tmp_path / 'run'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("soraplan-dit train:")]
    assert "no training data" in line and "data.root" in line and "data.shards" in line
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="data.vae, data.text_cache"):
        DiTTrainer(load_config(TrainDiTConfig, CONFIG, [f"output_dir={tmp_path / 'run'}",
                                                        "data.source=clips", "data.shards=s"]))


def run_training(args: list[str], processes: int = 1, wait: bool = True) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    script = [str(ROOT / "pipelines" / "train_dit.py"), "--config", str(CONFIG), *args]
    if processes > 1:
        with socket.socket() as s:  # torchrun hands --master_port=0 to workers as is: pick one
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
               "--master_addr=127.0.0.1", f"--master_port={port}", *script]
    else:
        cmd = [sys.executable, *script]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)
    if wait:
        assert proc.wait(timeout=900) == 0
    return proc


@pytest.mark.heavy
def test_two_processes_equal_one_process_at_same_global_batch(latents, tmp_path):
    run_training(overrides(latents, tmp_path / "one", 4))
    run_training(overrides(latents, tmp_path / "two", 4), processes=2)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert one.keys() == two.keys() == {1, 2, 3, 4}
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-6)
    # Adam normalises updates, so float-order differences in tiny gradients can move a weight by
    # up to ~lr per step; that bounds the difference.
    assert_same_weights(ema_weights(tmp_path / "one"), ema_weights(tmp_path / "two"), atol=5e-3)


@pytest.mark.heavy
def test_kill_and_resume_equals_uninterrupted(latents, tmp_path):
    run_training(overrides(latents, tmp_path / "straight", 8))
    killed = tmp_path / "killed"
    proc = run_training(overrides(latents, killed, 8), wait=False)
    deadline = time.time() + 900
    while time.time() < deadline and not (killed / "checkpoints" / "step_00000004").is_dir():
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoints" / "latest").is_file()
    run_training(overrides(latents, killed, 8))
    assert losses(tmp_path / "straight") == losses(killed)
    assert_same_weights(ema_weights(tmp_path / "straight"), ema_weights(killed), atol=0)


@pytest.mark.heavy
def test_zero2_checkpoint_of_two_processes_resumes_with_one(latents, tmp_path):
    """2 processes save a ZeRO-2 checkpoint (one optimizer shard each); 1 process resumes it
    through DeepSpeed's universal checkpoint with the weights and Adam state the two saved, and
    continues as an uninterrupted run would."""
    from deepspeed.utils import safe_get_full_optimizer_state

    run = tmp_path / "run"
    run_training(overrides(latents, run, 2, zero_stage=2), processes=2)
    saved = run / "checkpoints" / "step_00000002" / "model"
    trainer = DiTTrainer(load_config(TrainDiTConfig, CONFIG, overrides(latents, run, 4)))
    assert trainer.step == 2
    assert (run / "checkpoints" / "step_00000002" / "universal" / "model").is_dir()
    module = torch.load(saved / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert_same_weights(trainer.model.state_dict(), module, atol=0)
    # The shards hold the flat Adam state of the one parameter group, split between the ranks.
    shards = [torch.load(saved / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt",
                         weights_only=False)["optimizer_state_dict"] for rank in range(2)]
    for key in ("exp_avg", "exp_avg_sq"):
        loaded = torch.cat([safe_get_full_optimizer_state(p, key).flatten()
                            for p in trainer.model.parameters()])
        state = torch.cat([s["base_optimizer_state"]["state"][0][key] for s in shards])
        assert torch.equal(loaded, state[:loaded.numel()]), key
    trainer.fit()
    straight = train(overrides(latents, tmp_path / "straight", 4))
    one, resumed = losses(straight), losses(run)
    assert resumed.keys() == {1, 2, 3, 4} and losses(run, "lr")[3] == 1e-3  # the warm-up is over
    for step in one:  # tolerances of test_two_processes_equal_one_process_at_same_global_batch
        assert resumed[step] == pytest.approx(one[step], rel=1e-4, abs=1e-6)
    assert_same_weights(ema_weights(straight), ema_weights(run), atol=5e-3)


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_the_gradient_norm_is_logged_with_and_without_zero(latents, tmp_path, zero_stage):
    out = train(overrides(latents, tmp_path, 2, zero_stage=zero_stage))
    norms = losses(out, "grad_norm")
    assert len(norms) == 2 and all(math.isfinite(n) and n > 0 for n in norms.values())
