import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from soraplan.captioner.hub import ModelSourceError
from soraplan.captioner.prompts import PromptConfig
from soraplan.captioner.refine.data import (
    IGNORE_INDEX,
    DenseTargetConfig,
    PairSourceConfig,
    encode_pair,
    load_pairs,
    split_pairs,
)
from soraplan.captioner.refine.train import RefinerTrainer, RefineTrainConfig, prepare_pairs
from soraplan.core.config import load_config

from .conftest import REFINE_PROMPTS, REPO


def write_jsonl(path, pairs):
    path.write_text("".join(json.dumps({"short": s, "dense": d}) + "\n" for s, d in pairs))
    return path


def train_config(base_model, output_dir, data, **items) -> RefineTrainConfig:
    """A refiner config loaded (and checked) like the CLI's; one thread: tiny models gain nothing
    from more on a shared CPU."""
    items = {"base_model": base_model, "output_dir": output_dir, "data.path": data, "prompt.file": REFINE_PROMPTS,
             "dtype": "float32", "cpu_threads": 1, **items}
    return load_config(RefineTrainConfig, None, [f"{k}={v}" for k, v in items.items()])


def train_losses(output_dir) -> list[float]:
    """The loss of every step from metrics.jsonl (a resumed step's later line wins)."""
    lines = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    by_step = {row["step"]: row["loss"] for row in lines}
    return [by_step[s] for s in sorted(by_step)]


def test_pair_formats(tmp_path, refine_pairs):
    pairs = refine_pairs[:5]
    (tmp_path / "short.txt").write_text("\n".join(s for s, _ in pairs) + "\n")
    (tmp_path / "dense.txt").write_text("\n".join(d for _, d in pairs) + "\n")
    (tmp_path / "osp.json").write_text(json.dumps([{"instruction": "Refine", "input": s, "output": d} for s, d in pairs]))
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    expected = [(s, d) for s, d in pairs]
    for cfg in [
        PairSourceConfig(path=str(tmp_path / "short.txt"), dense_path=str(tmp_path / "dense.txt")),
        PairSourceConfig(path=str(tmp_path / "osp.json")),
        PairSourceConfig(path=str(tmp_path / "pairs.jsonl")),
    ]:
        assert [(p.short, p.dense) for p in load_pairs(cfg)] == expected
    assert len(load_pairs(PairSourceConfig(path=str(tmp_path / "osp.json"), limit=2))) == 2
    (tmp_path / "dense_short.txt").write_text("one line\n")
    with pytest.raises(ValueError, match="lines"):
        load_pairs(PairSourceConfig(path=str(tmp_path / "short.txt"), dense_path=str(tmp_path / "dense_short.txt")))
    with pytest.raises(ValueError, match="dense_path"):
        load_pairs(PairSourceConfig(path=str(tmp_path / "short.txt")))
    train, held = split_pairs(load_pairs(PairSourceConfig(path=str(tmp_path / "pairs.jsonl"))), 0.4, seed=3)
    assert len(held) == 2 and len(train) == 3 and not set(train) & set(held)


def test_encode_pair_puts_loss_on_answer_only(tokenizer, refine_pairs):
    template = PromptConfig(file=str(REFINE_PROMPTS), id="osp_refine").build()
    from soraplan.captioner.refine.data import RefinePair

    pair = RefinePair(*refine_pairs[0])
    ex = encode_pair(tokenizer, template, pair, max_length=512)
    answer = [t for t in ex["labels"] if t != IGNORE_INDEX]
    n_prompt = len(ex["labels"]) - len(answer)
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert tokenizer.decode(answer, skip_special_tokens=True) == pair.dense
    assert answer[-1] == tokenizer.eos_token_id
    prompt_text = tokenizer.decode(ex["input_ids"][:n_prompt])
    assert prompt_text.startswith("<|user|>Refine the sentence") and pair.short in prompt_text
    assert prompt_text.endswith("<|assistant|>")
    assert len(encode_pair(tokenizer, template, pair, max_length=20)["input_ids"]) == 20


class _ChatServer(BaseHTTPRequestHandler):
    """A loopback stand-in for an OpenAI-compatible server (an API or `vllm serve`)."""

    requests: list[dict] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        user = body["messages"][-1]["content"]
        short = user.split('"')[1]
        text = "Sure! " + ("" if "FAIL" in short else f"The video shows {short} in warm light, the camera pans.")
        payload = {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_dense_targets_from_openai_compatible_server(tmp_path, monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _ChatServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        (tmp_path / "short.txt").write_text("a dog runs\na cat FAIL\na red car waits\n")
        monkeypatch.setenv("TEST_KEY", "sk-test")
        cfg = RefineTrainConfig(data=PairSourceConfig(path=str(tmp_path / "short.txt")))
        cfg.dense_targets = DenseTargetConfig(
            enabled=True, base_url=f"http://127.0.0.1:{server.server_port}/v1", model="teacher",
            api_key_env="TEST_KEY", prompt=PromptConfig(file=str(REFINE_PROMPTS), id="dense_target"), concurrency=2,
        )
        pairs = prepare_pairs(cfg)
    finally:
        server.shutdown()
    # The empty answer is dropped; boilerplate openings are stripped from the others.
    assert [(p.short, p.dense) for p in pairs] == [
        ("a dog runs", "A dog runs in warm light, the camera pans."),
        ("a red car waits", "A red car waits in warm light, the camera pans."),
    ]
    reqs = _ChatServer.requests
    assert len(reqs) == 3 and {r["path"] for r in reqs} == {"/v1/chat/completions"}
    assert {r["auth"] for r in reqs} == {"Bearer sk-test"}
    assert reqs[0]["body"]["model"] == "teacher" and reqs[0]["body"]["messages"][0]["role"] == "system"
    assert "camera language" in reqs[0]["body"]["messages"][1]["content"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama_dir, refine_pairs):
    root = tmp_path_factory.mktemp("refiner")
    data = write_jsonl(root / "pairs.jsonl", refine_pairs)
    cfg = train_config(tiny_llama_dir, root / "run", data, epochs=2, global_batch_size=8, micro_batch_size=4,
                       eval_fraction=0.15, log_every=1000, **{"optimizer.lr": 1e-2})
    trainer = RefinerTrainer(cfg)
    return cfg, trainer, trainer.run()


def test_lora_training_lowers_heldout_loss(trained):
    cfg, _, m = trained
    assert m["eval_pairs"] == 24 and m["train_pairs"] == 136 and m["grad_accumulation"] == 2
    assert m["steps"] == m["planned_steps"] == 2 * 17
    assert m["eval_loss_after"] < 0.3 * m["eval_loss_before"]
    losses = train_losses(cfg.output_dir)
    assert len(losses) == 34 and sum(losses[-5:]) < sum(losses[:5])
    adapter = f"{cfg.output_dir}/adapter"
    import os

    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= set(os.listdir(adapter))
    config = json.load(open(f"{adapter}/adapter_config.json"))
    assert config["r"] == 64 and config["lora_alpha"] == 64 and config["lora_dropout"] == 0.1
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_run_writes_the_shared_trainer_layout(trained):
    cfg, _, m = trained
    out = Path(cfg.output_dir)
    assert json.loads((out / "metrics.json").read_text()) == m
    assert len((out / "heldout.jsonl").read_text().splitlines()) == 24
    assert load_config(RefineTrainConfig, out / "config.yaml") == cfg  # as given: `steps` is the bound
    assert (out / "checkpoints" / "latest").read_text() == "step_00000034"
    last = out / "checkpoints" / "step_00000034"
    contents = {p.name for p in last.iterdir()}  # DeepSpeed adds its zero_to_fp32 scripts
    assert {"model", "adapter", "train_state.json"} <= contents and "ema" not in contents  # no EMA for a LoRA
    state = json.loads((last / "train_state.json").read_text())
    assert state == {"step": 34, "eval_loss_before": m["eval_loss_before"]}
    # The final adapter is the last checkpoint's, in <output_dir>/adapter for `merge`.
    name = "adapter_model.safetensors"
    assert (last / "adapter" / name).read_bytes() == (out / "adapter" / name).read_bytes()
    assert (out / "tensorboard").is_dir()


def test_adapter_round_trip_is_exact(trained, tiny_llama_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg, trainer, _ = trained
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), f"{cfg.output_dir}/adapter")
    trained_sd = {k: v for k, v in trainer.model.state_dict().items() if "lora_" in k}
    loaded_sd = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert trained_sd.keys() == loaded_sd.keys() and len(trained_sd) == 2 * 7 * 2
    assert all(torch.equal(trained_sd[k], loaded_sd[k]) for k in trained_sd)
    ids = torch.randint(3, 500, (2, 12))
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(trainer.model(input_ids=ids).logits, loaded.eval()(input_ids=ids).logits)


def test_resume_repeats_the_uninterrupted_run(tiny_llama_dir, refine_pairs, tmp_path):
    """A run killed after step 3 resumes from its step-2 checkpoint and ends where an uninterrupted
    run ends: same losses, same adapter, bit for bit."""
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "pairs.jsonl", refine_pairs[:44])  # 40 to train: 5 steps of 8
    items = {"global_batch_size": 8, "micro_batch_size": 4, "eval_fraction": 0.1, "checkpoint.every": 2,
             "optimizer.lr": 1e-2}
    straight = RefinerTrainer(train_config(tiny_llama_dir, tmp_path / "straight", data, **items)).run()

    class KilledAfterStep3(RefinerTrainer):
        def after_step(self, stats):
            if self.step == 3:
                raise RuntimeError("killed")

    cfg = train_config(tiny_llama_dir, tmp_path / "resumed", data, **items)
    with pytest.raises(RuntimeError, match="killed"):
        KilledAfterStep3(cfg).run()
    assert (tmp_path / "resumed" / "checkpoints" / "latest").read_text() == "step_00000002"
    trainer = RefinerTrainer(cfg)
    assert trainer.step == 2
    resumed = trainer.run()

    assert straight["steps"] == resumed["steps"] == 5
    assert resumed["eval_loss_before"] == straight["eval_loss_before"]  # kept from the killed run
    assert resumed["eval_loss_after"] == straight["eval_loss_after"]
    assert train_losses(tmp_path / "resumed") == train_losses(tmp_path / "straight")
    a, b = (load_file(tmp_path / run / "adapter" / "adapter_model.safetensors") for run in ["straight", "resumed"])
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_merged_model_matches_adapter(trained, tiny_llama_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from soraplan.captioner.refine.cli import main

    cfg, _, _ = trained
    main(["merge", f"base_model={tiny_llama_dir}", f"adapter={cfg.output_dir}/adapter",
          f"output_dir={tmp_path / 'merged'}", "dtype=float32"])
    # Compared in float64: float32 summation-order noise alone reaches 1e-5 on logits near 10.
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").double().eval()  # plain transformers
    assert (tmp_path / "merged" / "model.safetensors").exists()
    assert not any("lora" in k for k in merged.state_dict())
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), f"{cfg.output_dir}/adapter")
    adapter = adapter.double().eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    ids = tok(["a dog runs on the beach", "a cat rests in the snow"], return_tensors="pt", padding=True)
    with torch.no_grad():
        a, b = merged(**ids).logits, adapter(**ids).logits
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).double().eval()
    with torch.no_grad():
        assert not torch.allclose(base(**ids).logits, b, atol=1e-3)  # the adapter does change the model


def test_missing_base_model_fails_fast(tmp_path):
    cfg = RefineTrainConfig(base_model=str(tmp_path / "nope"), output_dir=str(tmp_path / "o"))
    with pytest.raises(ModelSourceError, match="base_model"):
        RefinerTrainer(cfg)
    assert not (tmp_path / "o").exists()


def test_train_cli_with_shipped_config(tiny_llama_dir, refine_pairs, tmp_path):
    from soraplan.captioner.refine.cli import main

    data = write_jsonl(tmp_path / "pairs.jsonl", refine_pairs[:40])
    main(["train", "--config", str(REPO / "pipelines/configs/refine_tiny.yaml"), f"base_model={tiny_llama_dir}",
          f"data.path={data}", f"output_dir={tmp_path / 'run'}", f"prompt.file={REFINE_PROMPTS}", "steps=2",
          "cpu_threads=1"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == metrics["planned_steps"] == 2 and metrics["train_pairs"] == 36
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "base_model="], "soraplan-refine train: no model configured: set base_model="),
    (["train", "base_model={base}", "data.path=no_pairs.jsonl"], "training pairs not found: no_pairs.jsonl"),
    (["train", "global_batch_size=6", "micro_batch_size=4"], "global_batch_size 6 is not a multiple of micro_batch_size 4"),
    (["train", "lora.dropout=1.0"], "lora.dropout: 1.0 is out of range"),
    (["train", "lr=0.01"], "unknown config key(s) ['lr']"),
    (["train", "dense_targets.enabled=true"], "dense targets need dense_targets.base_url and dense_targets.model"),
    (["merge", "base_model=/no/model", "adapter=a", "output_dir=m"], "model path does not exist: /no/model; set base_model"),
    (["merge", "base_model={base}", "adapter={base}", "output_dir=m"], "has no adapter_config.json; set adapter"),
    (["rewrite", "--input", "prompts.txt"], "soraplan-refine rewrite: set both --input (or input=) and --out"),
    (["rewrite", "ray.concurrency=0"], "ray.concurrency: 0 is out of range"),
    (["rewrite", "--input", "shards", "--out", "o", "refiner.model={base}", "ray.address=auto",
      f"refiner.prompt.file={REFINE_PROMPTS}"], "--input shards is a relative path, and this job joins the Ray cluster"),
    (["rewrite", "--input", "p.txt", "--out", "o.txt", "refiner.model={base}", "refiner.prompt.id=nope",
      f"refiner.prompt.file={REFINE_PROMPTS}"], "prompt.id: 'nope' is not in"),
])
def test_cli_user_errors_are_one_line_and_exit_2(argv, message, tiny_llama_dir, tmp_path, monkeypatch, capsys):
    from soraplan.captioner.refine.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.txt").write_text("a dog runs\n")
    with pytest.raises(SystemExit) as exc:
        main([a.replace("{base}", str(tiny_llama_dir)) for a in argv] + [f"prompt.file={REFINE_PROMPTS}"] * (argv[0] == "train"))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.txt"]  # nothing written


def test_rewrite_text_file_and_shards(trained, tiny_llama_dir, ray_session, tmp_path):
    from soraplan.captioner.refine.cli import main
    from soraplan.captioner.refine.rewrite import RefinerConfig, RewriteJobConfig, run_rewrite
    from soraplan.core.schema import STATUS_KEPT, STATUS_REJECTED, empty_clip_row, read_clip_table, rows_to_table, schema_with, CAPTION_FIELDS, write_table_atomic

    cfg, _, _ = trained
    shorts = ["a dog runs on the beach", "an old man walks in a park", "a horse waits by a lake"]
    (tmp_path / "prompts.txt").write_text("\n".join(shorts) + "\n")
    refiner = RefinerConfig(
        model=str(tiny_llama_dir), adapter=f"{cfg.output_dir}/adapter", dtype="float32", device="cpu",
        prompt=PromptConfig(file=str(REFINE_PROMPTS), id="osp_refine"),
    )
    refiner.generation.max_new_tokens = 40
    summary = run_rewrite(RewriteJobConfig(input=str(tmp_path / "prompts.txt"), out=str(tmp_path / "dense.txt"), refiner=refiner))
    dense = (tmp_path / "dense.txt").read_text().splitlines()
    assert summary["prompts"] == 3 and summary["errors"] == 0 and len(dense) == 3
    # The trained refiner writes in the learnt dense style: longer, with the template's phrases.
    for short, long in zip(shorts, dense):
        assert len(long.split()) > len(short.split()) + 4, long
        assert "slowly" in long or "clear detail" in long, long

    rows = [
        empty_clip_row(clip_id="a", source_id="a", status=STATUS_KEPT, caption="ignored"),
        empty_clip_row(clip_id="b", source_id="b", status=STATUS_KEPT, caption=shorts[1]),
        empty_clip_row(clip_id="c", source_id="c", status=STATUS_KEPT),
        empty_clip_row(clip_id="d", source_id="d", status=STATUS_REJECTED, caption=shorts[2]),
    ]
    rows[0]["vlm_caption"] = shorts[0]  # vlm_caption wins over the shipped caption
    table = rows_to_table(rows, schema_with(CAPTION_FIELDS))
    write_table_atomic(table, tmp_path / "captioned" / "clips" / "s0.parquet")
    (tmp_path / "rewrite.yaml").write_text(
        "refiner: {dtype: float32, device: cpu, generation: {max_new_tokens: 40}}\n"
        "ray: {batch_size: 2, concurrency: 1, num_cpus: 0.5}\n"
    )
    main(["rewrite", "--config", str(tmp_path / "rewrite.yaml"), "--input", str(tmp_path / "captioned"),
          "--out", str(tmp_path / "refined"), f"refiner.model={tiny_llama_dir}",
          f"refiner.adapter={cfg.output_dir}/adapter", f"refiner.prompt.file={REFINE_PROMPTS}"])
    out = {r["clip_id"]: r for r in read_clip_table(tmp_path / "refined").to_pylist()}
    assert sorted(out) == ["a", "b", "c", "d"]
    assert out["a"]["refined_caption"] == dense[0] and out["b"]["refined_caption"] == dense[1]
    assert out["c"]["refined_caption"] is None and out["c"]["refine_error"] == "no caption to refine"
    assert out["d"]["refined_caption"] is None and out["d"]["refine_error"] is None
    assert out["a"]["vlm_caption"] == shorts[0]  # existing columns kept
    summary = json.loads((tmp_path / "refined" / "summary.json").read_text())
    assert summary["rows_out"] == 4 and summary["refined"] == 2 and summary["errors"] == 1


def test_rewrite_fails_fast_on_missing_adapter(tiny_llama_dir, tmp_path):
    from soraplan.captioner.refine.rewrite import RefinerConfig, RewriteJobConfig, run_rewrite

    job = RewriteJobConfig(input=str(tmp_path / "x.txt"), out=str(tmp_path / "y.txt"),
                           refiner=RefinerConfig(model=str(tiny_llama_dir), adapter=str(tmp_path / "no_adapter")))
    with pytest.raises(ModelSourceError, match="refiner.adapter"):
        run_rewrite(job)


def test_pairs_whose_prompt_fills_max_length_fail_in_one_line(tiny_llama_dir, refine_pairs, tmp_path, capsys):
    from soraplan.captioner.refine.cli import main

    write_jsonl(tmp_path / "pairs.jsonl", refine_pairs[:8])
    with pytest.raises(SystemExit) as exc:
        main(["train", f"base_model={tiny_llama_dir}", f"data.path={tmp_path / 'pairs.jsonl'}",
              f"output_dir={tmp_path / 'run'}", f"prompt.file={REFINE_PROMPTS}", "max_length=8"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("soraplan-refine train: max_length: every one of the 8 training pairs")
