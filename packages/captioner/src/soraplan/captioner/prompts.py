"""Prompt templates with ids, kept in YAML files (pipelines/configs/prompts/*.yaml).

A caption template may hold `{camera_motion}`: each clip's prompt then carries what curation
measured of its camera (the `camera_motion` column) as one sentence, or nothing when the clip
has no label, so the VLM is told the camera move it would otherwise have to guess from a few
frames.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from soraplan.core.config import ConfigError
from soraplan.core.schema import CAMERA_LABELS

CAMERA_SENTENCES = {
    "static": "The camera is static.",
    "pan_left": "The camera pans left.",
    "pan_right": "The camera pans right.",
    "tilt_up": "The camera tilts up.",
    "tilt_down": "The camera tilts down.",
    "zoom_in": "The camera zooms in.",
    "zoom_out": "The camera zooms out.",
    "mixed": "The camera moves irregularly (handheld, or several moves at once).",
}
assert set(CAMERA_SENTENCES) == set(CAMERA_LABELS)


@dataclass(frozen=True)
class PromptTemplate:
    id: str
    text: str  # user turn; may contain {caption}
    system: str | None = None

    def user_text(self, **values: str) -> str:
        # str.replace, not str.format: captions may contain braces.
        text = self.text
        for key, value in values.items():
            text = text.replace("{" + key + "}", value)
        return text

    def clip_text(self, camera_motion: str | None = None) -> str:
        """The user turn for one clip, with its measured camera motion where the template asks."""
        sentence = CAMERA_SENTENCES.get(camera_motion or "", "")
        return re.sub(r" {2,}", " ", self.user_text(camera_motion=sentence)).strip()


@dataclass
class PromptConfig:
    file: str = "pipelines/configs/prompts/caption.yaml"  # relative paths: from the cwd
    id: str = "video_describe"

    def build(self) -> PromptTemplate:
        path = Path(self.file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"prompt file not found: {path} (set prompt.file)")
        templates = yaml.safe_load(path.read_text()) or {}
        if self.id not in templates:
            raise ConfigError(f"prompt.id: {self.id!r} is not in {path}; ids there: {sorted(templates)}")
        entry = templates[self.id]
        return PromptTemplate(id=self.id, text=str(entry["text"]).strip(), system=entry.get("system"))
