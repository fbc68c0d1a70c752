"""Progress of long jobs: done / total, rate and time left.

In a terminal it is a tqdm bar; when output goes to a file or a log collector (Ray job logs,
`deepspeed` launcher output, CI) it is one plain log line every `every` updates or `every_s`
seconds, whichever comes first, plus one at the end.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("soraplan.progress")


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0,
                 every: int | None = None, every_s: float = 30.0, enabled: bool = True,
                 terminal: bool | None = None, budget_s: float | None = None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.done = self.start_done = initial
        self.every, self.every_s = every, every_s
        self.enabled = enabled
        self.fields: dict[str, Any] = {}
        self.started = self.last_line = time.monotonic()
        # A job that stops at a time budget ends then, whatever `total` says.
        self.deadline = None if budget_s is None else self.started + budget_s
        self.last_done = initial
        self.bar = None
        if enabled and (sys.stderr.isatty() if terminal is None else terminal):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True)

    def update(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update(fields)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if fields:
                self.bar.set_postfix({k: _short(v) for k, v in self.fields.items()}, refresh=False)
            return
        now = time.monotonic()
        due_count = self.every is not None and self.done - self.last_done >= self.every
        due_time = self.every is None and now - self.last_line >= self.every_s
        if due_count or due_time:
            self._line(now)

    def rate(self) -> float:
        """Updates per second since the start."""
        elapsed = time.monotonic() - self.started
        return (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate()
        parts = [f"{self.desc}: {self.done}" + (f"/{self.total}" if self.total else "")]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {self.unit}/s")
        left = [(self.total - self.done) / rate] if self.total and rate > 0 else []
        if self.deadline is not None:
            left.append(self.deadline - time.monotonic())
        if left:
            parts.append(f"{format_seconds(min(left))} left")
        parts.extend(f"{k}={_short(v)}" for k, v in self.fields.items())
        return ", ".join(parts)

    def _line(self, now: float) -> None:
        log.info(self.line())
        self.last_line, self.last_done = now, self.done

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        elif self.done != self.last_done:
            self._line(time.monotonic())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
