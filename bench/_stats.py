"""Summaries of repeated benchmark runs, shared by the bench scripts."""

from __future__ import annotations

import statistics


def spread(values: list[float], digits: int = 4) -> dict[str, float]:
    """Median of repeated runs with their range."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}
