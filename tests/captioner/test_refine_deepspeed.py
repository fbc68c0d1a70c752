"""DeepSpeed ZeRO-2 refiner training with 2 CPU processes (gloo): slow, so marked heavy."""

import json
import os
import socket
import subprocess
import sys

import pytest

from .conftest import REFINE_PROMPTS, REPO


@pytest.mark.heavy
def test_zero2_training_on_two_processes(tiny_llama_dir, refine_pairs, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"short": s, "dense": d}) + "\n" for s, d in refine_pairs[:80]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(port), "-m", "soraplan.captioner.refine.cli", "train",
        "--config", str(REPO / "pipelines/configs/refine_tiny.yaml"),
        f"base_model={tiny_llama_dir}", f"data.path={data}", f"output_dir={tmp_path / 'run'}",
        f"prompt.file={REFINE_PROMPTS}", "deepspeed.enabled=true", "deepspeed.zero_stage=2", "epochs=2",
        "global_batch_size=8", "micro_batch_size=2", "lr=0.01",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["grad_accumulation"] == 2
    assert metrics["steps"] == 2 * 9  # 72 train pairs / (2 ranks x 2 micro x 2 accumulation), 2 epochs
    assert metrics["eval_loss_after"] < 0.5 * metrics["eval_loss_before"]
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()
