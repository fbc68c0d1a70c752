from dataclasses import dataclass, field

import pytest

from soraplan.curation.config import ConfigError, dump_yaml, load_config
from soraplan.curation.pipeline import CurateConfig


@dataclass
class Inner:
    rate: float = 1.0
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    path: str | None = None
    inner: Inner = field(default_factory=Inner)
    flag: bool = False


def test_yaml_then_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("path: a\ninner:\n  rate: 2\n")
    cfg = load_config(Outer, cfg_file, ["inner.names=[x, y]", "flag=true"])
    assert cfg == Outer(path="a", inner=Inner(rate=2.0, names=["x", "y"]), flag=True)
    assert load_config(Outer, None, ["inner.rate=1e-2"]).inner.rate == 0.01  # YAML 1.1 gives a string


def test_unknown_key_names_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"inner.speed.*known keys here: \['names', 'rate'\]"):
        load_config(Outer, None, ["inner.speed=3"])


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="inner.rate"):
        load_config(Outer, None, ["inner.rate=fast"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(Outer, None, ["flag"])


def test_shipped_curate_config_round_trips(tmp_path):
    cfg = load_config(CurateConfig, "pipelines/configs/curate.yaml", ["analyze.motion.backend=lpips"])
    assert cfg.analyze.motion.backend == "lpips"
    dumped = tmp_path / "run.yaml"
    dump_yaml(cfg, dumped)
    assert load_config(CurateConfig, dumped) == cfg
