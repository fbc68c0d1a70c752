"""DeepSpeed ZeRO-2 refiner training, 2 CPU processes (gloo) under the deepspeed launcher: heavy."""

import json
import math
import os
import socket
import subprocess
import sys

import pytest

from .conftest import REFINE_PROMPTS, REPO


@pytest.mark.heavy
def test_zero2_training_under_deepspeed_launcher(tiny_llama_dir, refine_pairs, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"short": s, "dense": d}) + "\n" for s, d in refine_pairs[:80]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run, logs = tmp_path / "run", tmp_path / "rank_logs"
    # `deepspeed --num_accelerators 2 pipelines/refine.py train ...`, the command in docs/captioner.md.
    cmd = [
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_accelerators", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(port), f"--enable_each_rank_log={logs}", str(REPO / "pipelines/refine.py"), "train",
        "--config", str(REPO / "pipelines/configs/refine_tiny.yaml"),
        f"base_model={tiny_llama_dir}", f"data.path={data}", f"output_dir={run}",
        f"prompt.file={REFINE_PROMPTS}", "zero_stage=2", "epochs=2",
        "global_batch_size=8", "micro_batch_size=2", "optimizer.lr=0.01", "log_every=1", "checkpoint.every=9",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["grad_accumulation"] == 2
    assert metrics["steps"] == 2 * 9  # 72 train pairs / (2 ranks x 2 micro x 2 accumulation), 2 epochs
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 19)) and all(math.isfinite(s["loss"]) for s in steps)
    assert metrics["eval_loss_after"] < 0.5 * metrics["eval_loss_before"]
    # Both ranks wrote their ZeRO-2 shards into each checkpoint of the shared layout.
    assert (run / "checkpoints" / "latest").read_text() == "step_00000018"
    for tag in ["step_00000009", "step_00000018"]:
        shards = sorted(p.name for p in (run / "checkpoints" / tag / "model").glob("*optim_states.pt"))
        assert len(shards) == 2, shards
        assert (run / "checkpoints" / tag / "adapter" / "adapter_model.safetensors").exists()
    # Each rank ran the command (the launcher keeps one log a rank) and printed its own summary of
    # the same 18 steps; after ZeRO-2's gathers both hold the same weights, so the same held-out loss.
    rank_logs = {p.name.rsplit("_", 1)[1]: p.read_text() for p in logs.iterdir()}  # <time>_rank<N>.log
    assert sorted(rank_logs) == ["rank0.log", "rank1.log"]
    # Progress lines (step / total) come from rank 0 only, one a step with log_every=1.
    assert sum("refine: " in line and "/18 (" in line for line in rank_logs["rank0.log"].splitlines()) == 18
    assert "/18 (" not in rank_logs["rank1.log"]
    for text in rank_logs.values():
        summary = json.loads(text[text.index("\n{\n") : text.rindex("}") + 1])
        assert summary["world_size"] == 2 and summary["steps"] == 18
        assert summary["eval_loss_after"] == pytest.approx(metrics["eval_loss_after"], rel=1e-6)

    # The saved adapter loads back onto the base model and gives the run's held-out loss.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from soraplan.captioner.prompts import PromptConfig
    from soraplan.captioner.refine.data import PairSourceConfig, encode_pair, load_pairs
    from soraplan.captioner.refine.train import answer_loss

    assert (run / "adapter" / "adapter_model.safetensors").exists()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), run / "adapter").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "adapter")
    template = PromptConfig(file=str(REFINE_PROMPTS), id="osp_refine").build()
    heldout = [encode_pair(tokenizer, template, p, 256) for p in load_pairs(PairSourceConfig(path=str(run / "heldout.jsonl")))]
    assert len(heldout) == 8
    total, count = answer_loss(model, heldout, tokenizer.pad_token_id, 2, "cpu")
    assert total / count == pytest.approx(metrics["eval_loss_after"], rel=1e-4)
