"""Session fixtures: a tokenizer trained here, tiny LLaMA, LLaVA, LLaVA-NeXT-Video and Qwen2-VL
saved to disk, a local Ray, synthetic clips. Nothing is downloaded."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from soraplan.core.schema import STATUS_KEPT, STATUS_REJECTED, empty_clip_row, rows_to_table, write_table_atomic
from soraplan.core.video import write_video

# Tiny models gain nothing from threads, and on a shared, oversubscribed CPU OpenMP's spinning
# threads made them 10x slower.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
CAPTION_PROMPTS = REPO / "pipelines" / "configs" / "prompts" / "caption.yaml"
REFINE_PROMPTS = REPO / "pipelines" / "configs" / "prompts" / "refine.yaml"

SUBJECTS = ["a dog", "a cat", "a red car", "an old man", "a young woman", "a horse", "a small boat", "a child"]
ACTIONS = ["runs", "walks", "jumps", "rests", "turns", "waits", "plays", "moves"]
PLACES = ["on the beach", "in a park", "on a city street", "in a forest", "by a lake", "in the snow"]
DETAILS = [
    "The camera pans slowly to follow it.",
    "Warm golden light falls across the scene.",
    "Soft shadows stretch over the ground.",
    "The camera holds a steady wide shot.",
]


def make_pair(rng: random.Random) -> tuple[str, str]:
    """A short caption and its dense rewrite, with a learnable mapping between the two."""
    subject, action, place = rng.choice(SUBJECTS), rng.choice(ACTIONS), rng.choice(PLACES)
    short = f"{subject} {action} {place}"
    detail = DETAILS[SUBJECTS.index(subject) % len(DETAILS)]
    dense = f"{subject.capitalize()} {action} slowly {place}, seen in clear detail. {detail}"
    return short, dense


@pytest.fixture(scope="session")
def refine_pairs() -> list[tuple[str, str]]:
    rng = random.Random(0)
    return [make_pair(rng) for _ in range(160)]


@pytest.fixture(scope="session")
def tokenizer(refine_pairs):
    from soraplan.captioner.testing import train_tokenizer

    corpus = [s + " " + d for s, d in refine_pairs] + [CAPTION_PROMPTS.read_text(), REFINE_PROMPTS.read_text()]
    return train_tokenizer(corpus * 4, vocab_size=600)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tokenizer) -> Path:
    from soraplan.captioner.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), tokenizer)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory, tokenizer) -> Path:
    from soraplan.captioner.testing import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"), tokenizer)


@pytest.fixture(scope="session")
def tiny_llava_next_video_dir(tmp_path_factory, tokenizer) -> Path:
    from soraplan.captioner.testing import build_tiny_llava_next_video

    return build_tiny_llava_next_video(tmp_path_factory.mktemp("tiny_llava_next_video"), tokenizer)


@pytest.fixture(scope="session")
def tiny_qwen2_vl_dir(tmp_path_factory, tokenizer) -> Path:
    from soraplan.captioner.testing import build_tiny_qwen2_vl

    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny_qwen2_vl"), tokenizer)


@pytest.fixture(scope="session")
def ray_session():
    from soraplan.core.ray_session import init_ray

    # Loopback only, no dashboard. Workers' output stays in Ray's log files: streamed to this
    # process's stderr at any moment, it would land in the stderr that CLI tests count lines of.
    init_ray(None, num_cpus=2, log_to_driver=False)
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def moving_square(num_frames: int, width: int, height: int, color: tuple[int, int, int]) -> np.ndarray:
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    frames[...] = 30
    for t in range(num_frames):
        x = (t * 4) % (width - 16)
        frames[t, 8:24, x : x + 16] = color
    return frames


@pytest.fixture(scope="session")
def clip_shards(tmp_path_factory) -> Path:
    """A curated-shard dir: 3 good clips (one cropped), 1 corrupt file, 1 rejected row, in 2 shards,
    with curation's camera labels on two of the good clips."""
    root = tmp_path_factory.mktemp("curated")
    videos = root / "videos"
    paths = []
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        paths.append(write_video(videos / f"clip{i}.mp4", moving_square(16, 64, 48, color), fps=8))
    corrupt = videos / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(4096))

    def row(clip_id: str, path: Path, status: str = STATUS_KEPT, **kw):
        values = dict(start_s=0.0, end_s=2.0, num_frames=16, fps=8.0, width=64, height=48) | kw
        return empty_clip_row(clip_id=clip_id, source_id=clip_id, path=str(path), status=status, **values)

    shard_a = [row("c0", paths[0]), row("c1", paths[1], crop=[8, 56, 0, 48]), row("bad", corrupt)]
    shard_b = [row("c2", paths[2], start_s=0.5, end_s=1.5), row("rej", paths[0], status=STATUS_REJECTED, reject_reasons=["static"])]
    for name, rows, camera in [("shard-000", shard_a, ["pan_left", None, None]), ("shard-001", shard_b, ["zoom_in", "static"])]:
        table = rows_to_table(rows).append_column("camera_motion", pa.array(camera, pa.string()))
        write_table_atomic(table, root / "clips" / f"{name}.parquet")
    return root
