"""Prompt templates with ids, kept in YAML files (pipelines/configs/prompts/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from soraplan.core.config import ConfigError


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
