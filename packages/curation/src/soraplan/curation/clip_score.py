"""Text-video matching: cosine similarity, in CLIP space, between a segment's caption and its
frames. The image embeddings are the aesthetic stage's (one image pass serves both); the
caption goes through the same CLIP model's text tower, once per input clip. Open-Sora-Plan and
Open-Sora score their clips' captions against the frames this way; the column is the raw
cosine (-1 to 1; matching pairs of ViT-L/14 land around 0.2-0.35)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
import pyarrow as pa

from soraplan.core.config import Range
from soraplan.curation.aesthetic import CLIP_IMAGE_EMBEDDINGS, CLIP_TEXT_ENCODER
from soraplan.curation.resources import Resources
from soraplan.curation.stages import ClipContext, Score, Segment, Stage, StageConfig

REASON_LOW_CLIP_SCORE = "low_clip_score"


@dataclass
class ClipScoreConfig(StageConfig):
    enabled: bool = False  # needs the aesthetic stage (its CLIP): the full profile only
    min_score: Annotated[float, Range(ge=-1, le=1)] | None = None  # optionally reject below this cosine

    def stage_class(self) -> type[ClipScorer]:
        return ClipScorer


class ClipScorer(Stage):
    """Reads the aesthetic stage's image embeddings; one text embedding per input clip."""

    name = "clip_score"
    reasons = (REASON_LOW_CLIP_SCORE,)
    resources = Resources(cpus=1.0, gpus=0.5)  # the aesthetic stage's CLIP, text side
    extra_columns = (pa.field("clip_score", pa.float64()),)
    # Every segment the aesthetic stage embedded, a low_aesthetic one included: it costs a dot product.
    scores_rejected = True

    def __init__(self, cfg: ClipScoreConfig) -> None:
        self.cfg = cfg

    def start(self, clip: ClipContext) -> None:
        self.clip = clip
        self.text: np.ndarray | None = None

    def score(self, segment: Segment) -> Score:
        images = self.clip.signal(CLIP_IMAGE_EMBEDDINGS).get(segment.index)
        caption = self.clip.clip.caption
        if images is None or len(images) == 0 or not caption:
            return {}, []
        if self.text is None:
            self.text = self.clip.signal(CLIP_TEXT_ENCODER)([caption])[0]
        score = float((images @ self.text).mean())
        low = self.cfg.min_score is not None and score < self.cfg.min_score
        return {"clip_score": score}, [REASON_LOW_CLIP_SCORE] if low else []
