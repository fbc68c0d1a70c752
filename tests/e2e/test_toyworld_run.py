"""`soraplan-toyworld run` for a few minutes: raw footage -> curation -> WF-VAE -> latents -> DiT ->
sampled videos checked against their prompts, every stage through its console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from soraplan.core.outputs import read_sample_index
from soraplan.core.schema import read_clip_table

BIN = Path(sys.executable).parent
STAGES = ["world", "curate", "vae", "latent_stats", "text_encoder", "encode", "dit", "sample", "vae_check"]


@pytest.mark.heavy
@pytest.mark.timeout(2400)  # nine jobs, two Ray starts; each job's start-up takes minutes on loaded cores
def test_short_toyworld_run_goes_from_footage_to_checked_samples(tmp_path: Path) -> None:
    config = {
        "out": str(tmp_path / "run"), "minutes": 6, "vae_steps": 40, "vae_minutes": 1.0, "reserve_minutes": 0,
        "min_dit_minutes": 1.0, "world": {"videos": 4, "min_shots": 3, "max_shots": 4},
        "seeds": [0], "sample_steps": 4, "vae_checks": 2,
        "dit": ["data.global_batch=8"],  # four videos give about a dozen clips
    }
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([str(BIN / "soraplan-toyworld"), "run", "--config", str(tmp_path / "toy.yaml")],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)
    run = tmp_path / "run"

    assert list(json.loads((run / "stages.json").read_text())) == STAGES
    assert set(printed["stage_seconds"]) == set(STAGES)
    # Curation accounted for every planted shot and kept good ones.
    rows = read_clip_table(run / "curated", columns=["status"]).to_pylist()
    assert printed["curation"]["good_kept"] > 0 and sum(c["rows"] for c in printed["curation"]["by_kind"].values()) == len(rows)
    # Both trainers ran and learnt something: the late loss is below the early loss.
    summary = json.loads((run / "summary.json").read_text())
    for name in ("vae", "dit"):
        training = summary["training"][name]
        assert training["steps"] > 5 and training["loss_last"] < training["loss_first"], (name, training)
    assert json.loads((run / "vae_model" / "config.json").read_text())["scaling_factor"] != 1.0
    assert any((run / "latents").rglob("*.parquet"))
    # Every caption was sampled and read by the checker; the report shows them.
    samples = read_sample_index(run / "samples")
    assert len(samples) == 32 and printed["figures"]["all"]["videos"] == 32
    assert 0.0 <= printed["figures"]["all"]["colour"] <= 1.0 and printed["figures"]["held_out"]["videos"] == 4
    assert printed["vae_reconstructions"]["videos"] == 2
    report = (run / "report.html").read_text()
    assert report.count("<img") >= 32 and "a red circle moving left" in report
