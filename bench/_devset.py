"""Where the shared development set is, for the benchmark scripts (tests never need it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEVSET = Path(__file__).resolve().parents[1].parent / "shared" / "devset"


def devset_dir() -> Path:
    if not (DEVSET / "labels.json").exists():
        sys.exit(f"devset not found at {DEVSET}; these figures need ../shared/devset")
    return DEVSET


def labels() -> dict:
    return json.loads((devset_dir() / "labels.json").read_text())
