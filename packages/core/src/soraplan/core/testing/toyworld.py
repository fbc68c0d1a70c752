"""The toy world: a fixed video world small enough to train on 2 CPU cores, whose every caption
can be checked by looking at the pixels.

Shots are 17 frames of 64x64 at 8 fps on black: one circle or square, about 16 px across, in one
of four colours, moving left, right, up or down at 2 px per frame and staying in frame. The
caption of a shot is exactly `a {colour} {shape} moving {direction}`, so there are 32 captions.
Shots that curation must remove are planted among them: a still shape (`... standing still`,
rejected `static`) and moving shapes under a burned-in two-line subtitle (rejected `subtitles`).

`judge_video` is the checker: it reads colour, direction, shape and blob count off the frames,
the same way for ground-truth clips and for a model's samples.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from soraplan.core.config import ConfigError, NonNegativeInt, PositiveInt, UnitFloat, to_dict
from soraplan.core.outputs import read_sample_index, write_sample_index
from soraplan.core.video import iter_frames, write_video

SIZE = 64  # frame width and height
FPS = 8.0
SHOT_FRAMES = 17
SHAPE_SIZE = 16  # circle diameter and square side, in pixels
SPEED = 2  # pixels per frame
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 210, 40),
}
SHAPES = ("circle", "square")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
STILL = "still"
# Held out of training by default: every colour, shape and direction still occurs in training,
# only these four combinations do not.
DEFAULT_HOLDOUT = (
    "a red square moving up",
    "a green circle moving down",
    "a blue square moving left",
    "a yellow circle moving right",
)
SUBTITLE_WORDS = ("the", "cat", "sat", "on", "a", "mat", "we", "will", "go", "now", "see", "you",
                  "soon", "here", "it", "is", "not", "far", "come", "back")

FOREGROUND_LEVEL = 80  # a pixel is foreground when its brightest channel exceeds this
MIN_BLOB_PIXELS = 4  # smaller specks are codec noise, not blobs
_CAPTION = re.compile(r"^a (\w+) (\w+) (?:moving (\w+)|standing still)$")


def caption_of(colour: str, shape: str, direction: str) -> str:
    if direction == STILL:
        return f"a {colour} {shape} standing still"
    return f"a {colour} {shape} moving {direction}"


def parse_caption(text: str) -> tuple[str, str, str] | None:
    """(colour, shape, direction) of a world caption ("still" for a still shape), else None."""
    match = _CAPTION.match(text.strip())
    if not match:
        return None
    colour, shape, direction = match.group(1), match.group(2), match.group(3) or STILL
    if colour not in COLOURS or shape not in SHAPES or direction not in (*DIRECTIONS, STILL):
        return None
    return colour, shape, direction


def all_captions() -> list[str]:
    """The 32 captions of moving shapes, in a fixed order."""
    return [caption_of(c, s, d) for c, s, d in itertools.product(COLOURS, SHAPES, DIRECTIONS)]


def draw_shape(frame: np.ndarray, shape: str, centre: tuple[int, int], colour: tuple[int, int, int]) -> None:
    x, y = centre
    half = SHAPE_SIZE // 2
    if shape == "circle":
        cv2.circle(frame, (x, y), half, colour, -1, lineType=cv2.LINE_AA)
    else:
        cv2.rectangle(frame, (x - half, y - half), (x + half - 1, y + half - 1), colour, -1)


def draw_subtitle(frame: np.ndarray, lines: tuple[str, str]) -> None:
    """Two centred white lines in the bottom band, as burned-in subtitles sit."""
    for row, text in enumerate(lines):
        (width, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.3, 1)
        origin = ((SIZE - width) // 2, round(SIZE * (0.82 + 0.13 * row)))
        cv2.putText(frame, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.3, (255, 255, 255), 1, cv2.LINE_AA)


@dataclass(frozen=True)
class Shot:
    colour: str
    shape: str
    direction: str  # a key of DIRECTIONS, or STILL
    start: tuple[int, int]  # centre at the first frame
    subtitles: tuple[tuple[str, str], ...] = ()  # one pair of lines per second, when burned in

    @property
    def caption(self) -> str:
        return caption_of(self.colour, self.shape, self.direction)

    @property
    def kind(self) -> str:
        """good, still (curation must reject it static) or subtitled (rejected subtitles)."""
        return "still" if self.direction == STILL else "subtitled" if self.subtitles else "good"

    def frames(self) -> np.ndarray:
        """(SHOT_FRAMES, SIZE, SIZE, 3) uint8 RGB."""
        dx, dy = DIRECTIONS.get(self.direction, (0, 0))
        out = np.zeros((SHOT_FRAMES, SIZE, SIZE, 3), np.uint8)
        for i, frame in enumerate(out):
            centre = (self.start[0] + dx * SPEED * i, self.start[1] + dy * SPEED * i)
            draw_shape(frame, self.shape, centre, COLOURS[self.colour])
            if self.subtitles:
                draw_subtitle(frame, self.subtitles[min(int(i / FPS), len(self.subtitles) - 1)])
        return out


def random_shot(rng: np.random.Generator, caption: str, subtitled: bool = False) -> Shot:
    """A shot of `caption` at a random place where the shape stays in frame throughout."""
    colour, shape, direction = parse_caption(caption) or (None, None, None)
    if colour is None:
        raise ValueError(f"not a toy-world caption: {caption!r}")
    half, travel = SHAPE_SIZE // 2, SPEED * (SHOT_FRAMES - 1)
    lo, hi = half + 1, SIZE - half - 1  # centres whose shape stays clear of the frame's edges
    dx, dy = DIRECTIONS.get(direction, (0, 0))

    def start(d: int) -> int:
        if d > 0:
            return int(rng.integers(lo, hi - travel))
        if d < 0:
            return int(rng.integers(lo + travel, hi))
        return int(rng.integers(lo, hi))

    def line() -> str:
        return " ".join(rng.choice(SUBTITLE_WORDS, 3))

    subtitles: tuple[tuple[str, str], ...] = ()
    if subtitled:  # the lines change every second, as subtitles do
        subtitles = tuple((line(), line()) for _ in range(int(np.ceil(SHOT_FRAMES / FPS))))
    return Shot(colour, shape, direction, (start(dx), start(dy)), subtitles)


# --- the checker -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reading:
    """What the checker reads off a video."""

    colour: str | None  # nearest world colour of the foreground's mean colour
    direction: str | None  # sign of the centroid's larger displacement, first -> last frame
    shape: str | None  # circle (box fill ~0.79) or square (~1.0)
    fill_ratio: float | None
    one_blob: bool  # every frame holds exactly one shape-sized blob


def judge_video(frames: np.ndarray) -> Reading:
    """Read colour, direction, shape and blob count off T x H x W x 3 uint8 RGB frames."""
    frames = np.asarray(frames)
    masks = frames.max(axis=-1) > FOREGROUND_LEVEL
    if not masks.any():
        return Reading(None, None, None, None, False)
    pixels = frames[masks].astype(np.float64)
    mean = pixels.mean(axis=0)
    colour = min(COLOURS, key=lambda name: float(np.sum((mean - COLOURS[name]) ** 2)))
    direction = None
    if masks[0].any() and masks[-1].any():
        (y0, x0), (y1, x1) = (np.argwhere(m).mean(axis=0) for m in (masks[0], masks[-1]))
        dx, dy = x1 - x0, y1 - y0
        direction = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
    fills = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        if len(ys):
            fills.append(len(ys) / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)))
    fill = float(np.median(fills))
    shape = "square" if fill > 0.9 else "circle"
    return Reading(colour, direction, shape, fill, all(_one_shape_blob(m) for m in masks))


def _one_shape_blob(mask: np.ndarray) -> bool:
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    areas = [a for a in stats[1:count, cv2.CC_STAT_AREA] if a >= MIN_BLOB_PIXELS]
    shape_area = SHAPE_SIZE * SHAPE_SIZE
    # A blob of a shape's size, not a frame full of noise that happens to be connected.
    return len(areas) == 1 and 0.4 * shape_area <= areas[0] <= 1.6 * shape_area


def score_readings(items: list[tuple[str, Reading]]) -> dict[str, float | int]:
    """Accuracy of colour, direction and shape against each prompt, and the one-blob share."""
    if not items:
        return {"videos": 0}
    hits = {"colour": 0, "direction": 0, "shape": 0, "one_blob": 0}
    for prompt, reading in items:
        colour, shape, direction = parse_caption(prompt) or (None, None, None)
        hits["colour"] += reading.colour == colour
        hits["direction"] += reading.direction == direction
        hits["shape"] += reading.shape == shape
        hits["one_blob"] += reading.one_blob
    return {"videos": len(items), **{k: v / len(items) for k, v in hits.items()}}


# --- the world on disk: source videos and a Panda-70M-style manifest ------------------------------

@dataclass
class WorldConfig:
    videos: PositiveInt = 40
    min_shots: PositiveInt = 4  # shots per source video, joined by hard cuts
    max_shots: PositiveInt = 8
    still_share: UnitFloat = 0.08  # planted still shapes (curation must reject them `static`)
    subtitle_share: UnitFloat = 0.08  # planted subtitled shots (rejected `subtitles`)
    holdout: list[str] = field(default_factory=lambda: list(DEFAULT_HOLDOUT))  # never generated
    seed: NonNegativeInt = 0

    def validate(self) -> None:
        if self.min_shots > self.max_shots:
            raise ConfigError(f"min_shots ({self.min_shots}) must not exceed max_shots ({self.max_shots})")
        unknown = [c for c in self.holdout if c not in all_captions()]
        if unknown:
            raise ConfigError(f"holdout captions not in the world: {unknown}")
        if len(set(self.holdout)) >= len(all_captions()):
            raise ConfigError("holdout leaves no caption to train on")
        if self.still_share + self.subtitle_share > 1:
            raise ConfigError("still_share + subtitle_share must not exceed 1")

    def training_captions(self) -> list[str]:
        return [c for c in all_captions() if c not in self.holdout]


def _timestamp(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes // 60)}:{int(minutes % 60):02d}:{secs:06.3f}"


def make_world(out: str | Path, cfg: WorldConfig) -> dict[str, Any]:
    """Write `<out>/videos/*.mp4`, `<out>/manifest.csv` (Panda-70M columns) and `<out>/world.json`
    (every shot with its span and kind); returns the counts."""
    out = Path(out)
    rng = np.random.default_rng(cfg.seed)
    captions = cfg.training_captions()
    pool: list[str] = []  # good shots cycle through shuffled captions, so every caption is used evenly
    shots_out, rows = [], []
    for v in range(cfg.videos):
        video_id = f"toy{v:04d}"
        shots = []
        for _ in range(int(rng.integers(cfg.min_shots, cfg.max_shots + 1))):
            draw = rng.random()
            if draw < cfg.still_share:
                colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
                shots.append(random_shot(rng, caption_of(str(colour), str(shape), STILL)))
                continue
            if not pool:
                pool = list(rng.permutation(captions))
            shots.append(random_shot(rng, str(pool.pop()), subtitled=draw < cfg.still_share + cfg.subtitle_share))
        write_video(out / "videos" / f"{video_id}.mp4", np.concatenate([s.frames() for s in shots]), FPS)
        spans = [(i * SHOT_FRAMES / FPS, (i + 1) * SHOT_FRAMES / FPS) for i in range(len(shots))]
        rows.append([video_id, "", repr([[_timestamp(a), _timestamp(b)] for a, b in spans]),
                     repr([s.caption for s in shots]), repr([1.0] * len(shots))])
        shots_out += [{"video": video_id, "start_s": a, "end_s": b, "caption": s.caption, "kind": s.kind}
                      for s, (a, b) in zip(shots, spans)]
    with open(out / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["videoID", "url", "timestamp", "caption", "matching_score"])
        writer.writerows(rows)
    kinds = Counter(s["kind"] for s in shots_out)
    summary = {"videos": cfg.videos, "shots": len(shots_out), **{k: kinds[k] for k in ("good", "still", "subtitled")},
               "training_captions": len(captions), "holdout": list(cfg.holdout)}
    (out / "world.json").write_text(json.dumps({"config": to_dict(cfg), "summary": summary, "shots": shots_out},
                                               indent=1))
    return summary


# --- sampled videos and their prompts -----------------------------------------------------------

def write_samples(folder: str | Path, items: list[tuple[np.ndarray, str, int]]) -> Path:
    """Store videos (T x H x W x 3 uint8) with their prompts and seeds as the checker reads them."""
    folder = Path(folder)
    entries = []
    for i, (frames, prompt, seed) in enumerate(items):
        name = f"{i:04d}_{prompt.replace(' ', '_')}_s{seed}.mp4"
        write_video(folder / name, frames, FPS)
        entries.append({"video": name, "prompt": prompt, "seed": seed})
    write_sample_index(folder, entries)
    return folder


def check_samples(folder: str | Path, holdout: Iterable[str] = ()) -> dict[str, Any]:
    """The checker's figures over every sample listed in `<folder>/samples.jsonl`: all prompts, and
    separately the `holdout` prompts and the others."""
    folder = Path(folder)
    holdout = set(holdout)
    items, per_video = [], []
    for entry in read_sample_index(folder):
        if "error" in entry:  # a listed video its job could not make (e.g. an unreadable source)
            continue
        frames = np.stack([f.image for f in iter_frames(folder / entry["video"])])
        reading = judge_video(frames)
        items.append((entry["prompt"], reading))
        per_video.append({**entry, **asdict(reading)})
    figures = {"all": score_readings(items),
               "held_out": score_readings([i for i in items if i[0] in holdout]),
               "trained": score_readings([i for i in items if i[0] not in holdout])}
    return {**figures, "videos": per_video}
