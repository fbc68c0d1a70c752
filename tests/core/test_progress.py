import logging

from soraplan.core.progress import Progress, format_seconds


def test_plain_lines_at_a_fixed_cadence(caplog):
    caplog.set_level(logging.INFO, logger="soraplan.progress")
    with Progress(10, "encode", "clip", every=4, terminal=False) as progress:
        for i in range(10):
            progress.update(1, loss=1.0 / (i + 1))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # after 4, 8 and at the end (10)
    assert lines[0].startswith("encode: 4/10 (40%)") and "clip/s" in lines[0] and "left" in lines[0]
    assert lines[-1].startswith("encode: 10/10 (100%)") and "loss=0.1" in lines[-1]


def test_disabled_progress_says_nothing(caplog):
    caplog.set_level(logging.INFO, logger="soraplan.progress")
    with Progress(3, "rank 1", every=1, enabled=False, terminal=False) as progress:
        progress.update(3)
    assert progress.done == 3 and not caplog.records


def test_format_seconds():
    assert format_seconds(65) == "1m05s" and format_seconds(7300) == "2h01m"


def test_a_time_budget_bounds_the_time_left(caplog):
    caplog.set_level(logging.INFO, logger="soraplan.progress")
    with Progress(10**15, "train", "step", every=1, terminal=False, budget_s=120) as progress:
        progress.update(1)
    assert "left" in caplog.records[0].getMessage()
    left = caplog.records[0].getMessage().split(", ")[2]
    assert left in ("2m00s left", "1m59s left"), left
