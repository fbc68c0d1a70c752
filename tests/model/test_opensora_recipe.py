"""Open-Sora v1's three-stage recipe with tiny models, through `soraplan-dit train`."""

import json
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file
from soraplan.core.config import ConfigError, load_config
from soraplan.core.schema import empty_clip_row, rows_to_table, write_table_atomic
from soraplan.core.train.ema import WEIGHTS_NAME
from soraplan.model.dit.cli import main
from soraplan.model.dit.data import ClipSelection, LatentDataset, TrainingSamples
from soraplan.model.dit.sampler import JointBatchSampler
from soraplan.model.dit.train import TrainDiTConfig
from soraplan.model.testing import write_synthetic_latents

CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "configs"
TINY = ["data.global_batch=4", "precision=fp32", "cpu_threads=1", "log_every=1000",
        "model.gradient_checkpointing=false", "checkpoint.every=0", "optimizer.lr=1e-3",
        "sample_every=0"]


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    # 8 clips of 3 latent frames (a video bucket) and 4 images.
    return write_synthetic_latents(tmp_path_factory.mktemp("latents"), [(3, 8, 8), (1, 8, 8)],
                                   per_shape=8, channels=4, text_dim=32, seed=0)


@pytest.fixture(scope="module")
def curated(tmp_path_factory, latents):
    """Curated rows of the synthetic clips: aesthetic 4..7.5, motion 0..7, captions of 1..8 words."""
    rows = []
    for i, clip_id in enumerate(sorted(r["clip_id"] for r in LatentDataset(latents).rows)):
        rows.append(empty_clip_row(clip_id=clip_id, source_id=clip_id, status="kept",
                                   aesthetic_score=4.0 + i * 0.25, motion_score=float(i % 8),
                                   caption=" ".join(["word"] * (1 + i % 8))))
    root = tmp_path_factory.mktemp("curated")
    write_table_atomic(rows_to_table(rows), root / "clips" / "part-0.parquet")
    return root


def ema(run: Path) -> dict[str, torch.Tensor]:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run / "checkpoints" / latest / "ema" / WEIGHTS_NAME))


def train(config: str, out: Path, *overrides: str) -> Path:
    main(["train", "--config", str(CONFIGS / config), f"output_dir={out}", *TINY, *overrides])
    return out


def test_three_stages_end_to_end(latents, curated, tmp_path, torch_one_thread):
    stage1 = train("opensora_stage1_image.yaml", tmp_path / "s1", "model.name=pixart-tiny",
                   f"data.root={latents}", "steps=3")
    stage2 = train("opensora_stage2_video.yaml", tmp_path / "s2", "model.name=stdit-tiny",
                   f"data.root={latents}", f"model.init_from={stage1}", "steps=6",
                   "data.image_share=0.5")
    # The model stage 2 started from (its effective config, built again): stage 1's EMA
    # weights, temporal attention with a zero output projection.
    start = load_config(TrainDiTConfig, stage2 / "config.yaml").model.build().state_dict()
    image = ema(stage1)
    assert set(image) == {k for k in start if ".attn_temp." not in k}
    for key, value in image.items():
        torch.testing.assert_close(start[key], value, rtol=0, atol=0, msg=key)
    assert all(start[k].abs().sum() == 0 for k in start if ".attn_temp.to_out." in k)
    metrics = [json.loads(line) for line in (stage2 / "metrics.jsonl").read_text().splitlines()]
    assert {m["image_step"] for m in metrics} == {0.0, 1.0}  # joint image+video batches
    moved = ema(stage2)
    assert any(moved[k].abs().sum() > 0 for k in moved if ".attn_temp.to_out." in k)

    stage3 = train("opensora_stage3_hq.yaml", tmp_path / "s3", "model.name=stdit-tiny",
                   "model.overrides.space_scale=0.5", f"data.root={latents}",
                   f"data.shards={curated}", f"model.init_from={stage2}", "steps=2",
                   "data.samples=clips", "data.select.min_aesthetic_score=5.0",
                   "data.select.min_motion_score=0.5", "data.select.max_motion_score=20",
                   "data.select.min_caption_words=2")
    assert (stage3 / "checkpoints" / "latest").is_file()


def test_selection_leaving_nothing_stops_with_one_line(latents, curated, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train("opensora_stage3_hq.yaml", tmp_path / "s3", "model.name=stdit-tiny",
              f"data.root={latents}", f"data.shards={curated}", "model.init_from=null",
              "data.select.min_aesthetic_score=99")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.select" in err[0]


def test_selection_by_curation_columns(latents, curated):
    from soraplan.core.schema import read_clip_table

    table = read_clip_table(curated)
    select = ClipSelection(min_aesthetic_score=5.0, min_motion_score=1.0, min_caption_words=3)
    kept = select.clip_ids(table, "caption")
    expected = {r["clip_id"] for r in table.to_pylist() if r["aesthetic_score"] >= 5.0
                and r["motion_score"] >= 1.0 and len(r["caption"].split()) >= 3}
    assert kept == expected and 0 < len(kept) < table.num_rows
    samples = TrainingSamples(LatentDataset(latents), "clips", kept)
    assert len(samples) == len(kept)

    camera = pa.table({"clip_id": ["a", "b", "c"], "camera_motion": ["static", "pan_left", None]})
    assert ClipSelection(camera_motion=["static"]).clip_ids(camera, "caption") == {"a"}
    with pytest.raises(ConfigError, match="camera_motion_column"):
        ClipSelection(camera_motion=["static"]).clip_ids(table, "caption")


def test_image_views_and_joint_sampler_resume(latents):
    dataset = LatentDataset(latents)
    joint = TrainingSamples(dataset, "joint")
    # 8 videos, their 8 first frames, 8 images (images are not doubled).
    assert len(joint) == 24 and sum(b[0] == 1 for b in joint.bucket_of) == 16
    batch = joint.batch([i for i, b in enumerate(joint.bucket_of) if b[0] == 1][:4], [False] * 4)
    assert batch["latents"].shape == (4, 4, 1, 8, 8)
    first = next(i for i, (row, frame) in enumerate(joint.items) if frame)
    row = joint.items[first][0]
    torch.testing.assert_close(joint.batch([first], [False])["latents"][0],
                               dataset.batch([row], [False])["latents"][0, :, :1])

    sampler = JointBatchSampler(joint.bucket_of, 4, image_share=0.3, seed=5)
    stream = iter(sampler)
    straight = [next(stream) for _ in range(12)]
    shapes = {joint.bucket_of[i][0] for batch in straight for i in batch}
    assert shapes == {1, 3}
    assert all(len({joint.bucket_of[i] for i in batch}) == 1 for batch in straight)
    partial = JointBatchSampler(joint.bucket_of, 4, image_share=0.3, seed=5)
    partial_stream = iter(partial)
    for _ in range(5):
        next(partial_stream)
    resumed = JointBatchSampler(joint.bucket_of, 4, image_share=0.3, seed=5)
    resumed.load_state_dict(json.loads(json.dumps(partial.state_dict())))
    resumed_stream = iter(resumed)
    assert [next(resumed_stream) for _ in range(7)] == straight[5:]
