"""LAION aesthetic score: CLIP ViT-L/14 image embeddings (L2-normalised) -> LAION's MLP head.

The head is "sac+logos+ava1-l14-linearMSE" from christophschuhmann/improved-aesthetic-predictor
(768-1024-128-64-16-1). A segment's score is the mean over frames at 10%, 50% and 90% of its
span, as Open-Sora-Plan v1.3 scores clips; it keeps segments scoring at least 4.75.

`dtype: auto` runs CLIP and the head in bf16 where the hardware multiplies bf16 matrices
natively (GPUs with bf16, fp16 on older ones; CPUs with AMX or Arm's BF16 extension) and in
fp32 elsewhere: on CPUs without such units bf16 is emulated and slower than fp32.
`bench/aesthetic_dtype.py` measures the speed-up and the score drift against fp32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from soraplan.core.config import ConfigError, PositiveFloat, PositiveInt, UnitFloat
from soraplan.core.schema import REASON_LOW_AESTHETIC
from soraplan.curation.resources import Resources
from soraplan.curation.stages import ClipContext, PerSecond, Score, Segment, Stage, StageConfig
from soraplan.curation.weights import offline, weights_dir

# Where the LAION head is published (a GitHub file, not on a model hub).
LAION_MLP_URL = ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
                 "sac+logos+ava1-l14-linearMSE.pth")
LAION_MLP_FILE = "sac+logos+ava1-l14-linearMSE.pth"
# Signals published per clip for the clip_score stage: {segment index: L2-normalised CLIP image
# embeddings (k, D) of its scored frames}, and a function from texts to normalised text embeddings.
CLIP_IMAGE_EMBEDDINGS = "aesthetic.image_embeddings"
CLIP_TEXT_ENCODER = "aesthetic.text_encoder"


@dataclass
class AestheticConfig(StageConfig):
    enabled: bool = False  # off in the offline profile: the CLIP weights need a model hub
    clip_model: str = "ViT-L-14"  # open_clip model name (or the name in clip_model_config)
    clip_model_config: str | None = None  # optional JSON of a custom open_clip model config
    clip_pretrained: str = "openai"  # open_clip pretrained tag, or a local checkpoint file
    mlp_path: str | None = None  # the LAION head (.pth or .safetensors); default: <weights dir>/LAION_MLP_FILE
    weights_dir: str | None = None  # open_clip's download cache (default: $SORAPLAN_WEIGHTS_DIR)
    min_score: float = 4.75  # keep segments scoring at least this (Open-Sora-Plan v1.3); any real number
    positions: tuple[UnitFloat, ...] = (0.1, 0.5, 0.9)  # frames scored, as fractions of the segment
    sample_fps: PositiveFloat = 2.0  # frames buffered per second during decoding to pick those from
    short_side: PositiveInt = 224  # buffered frames are kept at this short side
    batch_size: PositiveInt = 8  # frames per forward pass, across the clip's segments
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # see the module docstring

    def validate(self) -> None:
        if not self.positions:
            raise ConfigError("positions is empty: list at least one fraction of the segment, e.g. [0.5]")

    def resolved_mlp_path(self) -> Path:
        return Path(self.mlp_path) if self.mlp_path else weights_dir(self.weights_dir) / LAION_MLP_FILE

    def stage_class(self) -> type[AestheticScorer]:
        return AestheticScorer


def cpu_has_bf16_matrix_units(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 matrices natively: Intel AMX (`amx_bf16`) or Arm's BF16
    extension (`bf16`), from the flags of /proc/cpuinfo (False where it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return "amx_bf16" in flags or "bf16" in flags


def resolve_dtype(dtype: str, on_gpu: bool, gpu_has_bf16: bool = True) -> str:
    """The torch dtype name the stage computes in, for `AestheticConfig.dtype`."""
    if dtype != "auto":
        return dtype
    if on_gpu:
        return "bfloat16" if gpu_has_bf16 else "float16"
    return "bfloat16" if cpu_has_bf16_matrix_units() else "float32"


def laion_mlp() -> Any:
    """LAION's head; module indices match its checkpoint keys (layers.0, .2, .4, .6, .7)."""
    from torch import nn

    class AestheticMlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(768, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
            )

        def forward(self, x: Any) -> Any:
            return self.layers(x)

    return AestheticMlp()


def load_tensors(path: Path) -> dict[str, Any]:
    """A state dict from safetensors or a `torch.load(weights_only=True)`-safe checkpoint."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


class AestheticScorer(Stage):
    """CLIP + LAION MLP on RGB frames, batched across a clip's segments; runs last, on survivors."""

    name = "aesthetic"
    reasons = (REASON_LOW_AESTHETIC,)
    # bf16 (or fp16) on a GPU when the cluster has one: ViT-L/14 then holds about 0.9 GB and
    # scores a few frames per segment, so two actors share a GPU.
    resources = Resources(cpus=1.0, gpus=0.5)

    def __init__(self, cfg: AestheticConfig) -> None:
        self.cfg = cfg
        self.sampling = PerSecond(cfg.sample_fps)

    def setup(self) -> None:
        """Load CLIP and the head once; a missing weight fails here, naming its config key."""
        import open_clip
        import torch

        cfg = self.cfg
        mlp_path = cfg.resolved_mlp_path()
        if not mlp_path.is_file():
            raise FileNotFoundError(
                f"aesthetic scoring needs the LAION head {LAION_MLP_FILE}: {mlp_path} is missing. Set "
                f"analyze.aesthetic.mlp_path, run `soraplan-curate weights download`, or set "
                f"analyze.aesthetic.enabled=false.")
        if cfg.clip_model_config:
            open_clip.add_model_config(cfg.clip_model_config)
        model = self.load_clip()
        on_gpu = torch.cuda.is_available()
        self.device = "cuda" if on_gpu else "cpu"
        self.dtype = getattr(torch, resolve_dtype(cfg.dtype, on_gpu, on_gpu and torch.cuda.is_bf16_supported()))
        self.visual = model.visual.eval().to(self.device, self.dtype)
        pp = model.visual.preprocess_cfg
        size = pp["size"]
        self.image_size = size if isinstance(size, int) else size[0]
        self.mean = torch.tensor(pp["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(pp["std"]).view(1, 3, 1, 1)
        mlp = laion_mlp()
        mlp.load_state_dict(load_tensors(mlp_path))
        self.mlp = mlp.eval().to(self.device, self.dtype)
        self.torch = torch

    def load_clip(self) -> Any:
        """The open_clip model with `clip_pretrained` weights (a tag through its hub cache, or a file)."""
        import open_clip

        cfg = self.cfg
        cache_dir = str(weights_dir(cfg.weights_dir) / "open_clip")
        try:
            return open_clip.create_model(cfg.clip_model, pretrained=cfg.clip_pretrained, cache_dir=cache_dir)
        except Exception as exc:  # noqa: BLE001 - hub, file and config errors all mean "no weights"
            state = "HF_HUB_OFFLINE is set; " if offline() else ""
            raise FileNotFoundError(
                f"aesthetic scoring cannot load open_clip {cfg.clip_model!r} weights "
                f"analyze.aesthetic.clip_pretrained={cfg.clip_pretrained!r} ({state}cache {cache_dir}): "
                f"{type(exc).__name__}: {exc}") from None

    def start(self, clip: ClipContext) -> None:
        # A small buffer of frames to pick each segment's 10/50/90% frames from after the split.
        self.times: list[float] = []
        self.images: list[np.ndarray] = []
        self.clip = clip
        clip.signals[CLIP_IMAGE_EMBEDDINGS] = {}
        clip.signals[CLIP_TEXT_ENCODER] = self.encode_text

    def observe(self, frame: np.ndarray, time_s: float) -> None:
        self.times.append(time_s)
        self.images.append(self.prepare(frame))

    def score_segments(self, segments: list[Segment]) -> list[Score]:
        """One batched pass over the picked frames of every segment given."""
        picks = [pick_frames(self.times, s.start_s, s.end_s, self.cfg.positions) for s in segments]
        scores, embeddings = self.process([self.images[k] for p in picks for k in p], with_embeddings=True)
        published = self.clip.signals[CLIP_IMAGE_EMBEDDINGS]
        out: list[Score] = []
        offset = 0
        for segment, p in zip(segments, picks):
            if not p:
                out.append(({}, []))
                continue
            score = float(scores[offset : offset + len(p)].mean())
            published[segment.index] = embeddings[offset : offset + len(p)]
            offset += len(p)
            out.append(({"aesthetic_score": score}, [REASON_LOW_AESTHETIC] if score < self.cfg.min_score else []))
        return out

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """A decoded frame as buffered during the decoding pass: short side `cfg.short_side`."""
        h, w = rgb.shape[:2]
        scale = self.cfg.short_side / min(h, w)
        if scale >= 1:
            return rgb.copy()
        return cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)

    def _pixels(self, frame: np.ndarray) -> Any:
        """Resize the short side to the model's input and centre-crop, as CLIP's preprocessing."""
        h, w = frame.shape[:2]
        s = self.image_size
        scale = s / min(h, w)
        nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
        resized = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
        y0, x0 = (nh - s) // 2, (nw - s) // 2
        return self.torch.from_numpy(np.ascontiguousarray(resized[y0 : y0 + s, x0 : x0 + s]))

    def process(self, frames: list[np.ndarray], with_embeddings: bool = False) -> Any:
        """Aesthetic score per frame, `cfg.batch_size` frames per forward pass; with
        `with_embeddings`, also the frames' L2-normalised CLIP embeddings (N, D)."""
        torch = self.torch
        scores, embeddings = [], []
        with torch.inference_mode():
            for i in range(0, len(frames), self.cfg.batch_size):
                pixels = torch.stack([self._pixels(f) for f in frames[i : i + self.cfg.batch_size]])
                x = (pixels.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
                embedding = self.visual(x.to(self.device, self.dtype))
                embedding = embedding / embedding.norm(dim=-1, keepdim=True)
                scores.append(self.mlp(embedding).float().flatten().cpu().numpy())
                embeddings.append(embedding.float().cpu().numpy())
        scores = np.concatenate(scores).astype(np.float64) if scores else np.zeros(0)
        if not with_embeddings:
            return scores
        return scores, (np.concatenate(embeddings).astype(np.float64) if embeddings else np.zeros((0, 0)))

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """L2-normalised CLIP text embeddings (N, D) of the same CLIP model. The text tower is
        loaded on first use (from the weights setup() already found), so that only a job that
        asks for text-frame scores holds it."""
        torch = self.torch
        if not hasattr(self, "text_model"):
            import open_clip

            model = self.load_clip()
            del model.visual  # the image side is self.visual already
            self.text_model = model.eval().to(self.device, self.dtype)
            self.tokenizer = open_clip.get_tokenizer(self.cfg.clip_model)
        with torch.inference_mode():
            tokens = self.tokenizer(texts).to(self.device)
            embedding = self.text_model.encode_text(tokens)
            embedding = embedding / embedding.norm(dim=-1, keepdim=True)
        return embedding.float().cpu().numpy().astype(np.float64)


def pick_frames(times: list[float], start: float, end: float, positions: tuple[float, ...]) -> list[int]:
    """Indices of the buffered frames nearest to each position of [start, end), inside it."""
    inside = [i for i, t in enumerate(times) if start - 1e-6 <= t < end - 1e-6]
    if not inside:
        return []
    inside_times = np.asarray([times[i] for i in inside])
    return [inside[int(np.argmin(np.abs(inside_times - (start + p * (end - start)))))] for p in positions]


def download_laion_mlp(directory: Path) -> Path:
    """Fetch LAION's head into `directory` (a connected machine; GitHub must be reachable)."""
    import urllib.request

    path = directory / LAION_MLP_FILE
    if path.is_file():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{LAION_MLP_FILE}.{os.getpid()}.tmp"
    with urllib.request.urlopen(LAION_MLP_URL, timeout=300) as response, open(tmp, "wb") as fh:
        while chunk := response.read(1 << 20):
            fh.write(chunk)
    load_tensors(tmp)  # refuse anything torch's weights-only loader would not accept
    os.replace(tmp, path)
    return path

