import csv
from pathlib import Path

import av
import numpy as np
import pytest

from soraplan.core.cli import run_command
from soraplan.core.ray_session import init_ray
from soraplan.curation.cli import COMMANDS, DESCRIPTION, PROG


@pytest.fixture
def curate():
    """`soraplan-curate ARGS...` run in this process; returns its exit code."""
    return lambda *argv: run_command(PROG, DESCRIPTION, COMMANDS, [str(a) for a in argv])


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for the module's tests; returns the ray module."""
    ray = init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def _save_tiny_clip(root: Path, name: str, text_cfg: dict) -> dict[str, str]:
    """A tiny open_clip config named `name` (registered with open_clip), its random weights and a
    random LAION head, all as files under `root`: the paths the aesthetic stage's config takes."""
    import json

    import open_clip
    import torch
    from safetensors.torch import save_file

    from soraplan.curation.aesthetic import laion_mlp

    config = root / f"{name}.json"
    config.write_text(json.dumps({
        "embed_dim": 768,  # the LAION head reads ViT-L/14's 768-d embeddings
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": text_cfg,
    }))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    save_file(open_clip.create_model(name, pretrained=None).state_dict(), str(root / "clip.safetensors"))
    save_file(laion_mlp().state_dict(), str(root / "mlp.safetensors"))
    return {"config": str(config), "clip": str(root / "clip.safetensors"), "mlp": str(root / "mlp.safetensors")}


@pytest.fixture(scope="session")
def save_tiny_clip():
    """`save_tiny_clip(root, name, text_cfg)`: tiny CLIP and LAION head files (`_save_tiny_clip`)."""
    return _save_tiny_clip


@pytest.fixture
def write_manifest():
    """`write_manifest(path, rows)`: a Panda-70M CSV, one row per (video id, spans literal[, caption])."""

    def write(path: Path, rows: list[tuple[str, ...]]) -> Path:
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["videoID", "url", "timestamp", "caption", "matching_score"])
            for video_id, spans, *caption in rows:
                n = spans.count("], [") + 1
                writer.writerow([video_id, "", spans, str([caption[0] if caption else "a caption"] * n),
                                 str([0.5] * n)])
        return path

    return write


class IndexedVideos:
    """Videos whose every frame shows its own index as 8 black/white bands (bit b = band b), so a
    frame read back from any cut or export says which source frame it is, through lossy encoding.
    H.264 with a keyframe every `gop` frames and B-frames, as real footage has."""

    bands = 8

    def write(self, path: Path, frames: int, fps: int = 24, size: tuple[int, int] = (128, 64), gop: int = 12,
              rotation: int = 0) -> Path:
        width, height = size
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.gop_size = gop
            stream.options = {"bf": "2", "sc_threshold": "0", "keyint_min": str(gop), "crf": "18"}
            if rotation:
                stream.set_display_rotation(rotation)
            band = width // self.bands
            for i in range(frames):
                image = np.zeros((height, width, 3), np.uint8)
                for b in range(self.bands):
                    if i >> b & 1:
                        image[:, b * band : (b + 1) * band] = 255
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return path

    def index(self, image: np.ndarray) -> int:
        """The source index shown by a frame (H x W x 3, stored bands vertical)."""
        band = image.shape[1] // self.bands
        return sum(1 << b for b in range(self.bands) if image[:, b * band + band // 2].mean() > 127)


@pytest.fixture(scope="session")
def indexed_videos() -> IndexedVideos:
    return IndexedVideos()
