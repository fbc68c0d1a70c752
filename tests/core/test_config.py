from dataclasses import dataclass, field
from typing import Annotated

import pytest

from soraplan.core.config import (
    ConfigError,
    PositiveInt,
    Range,
    UnitFloat,
    dump_yaml,
    load_config,
)


@dataclass
class Inner:
    rate: float = 1.0
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    path: str | None = None
    inner: Inner = field(default_factory=Inner)
    flag: bool = False


@dataclass
class Bounded:
    skip: PositiveInt = 4
    share: UnitFloat = 0.5
    low: Annotated[float, Range(ge=0)] = 0.1
    high: float = 1.0
    limit: PositiveInt | None = None

    def validate(self) -> None:
        if self.low > self.high:
            raise ConfigError(f"low ({self.low}) must not exceed high ({self.high})")


@dataclass
class Job:
    bounded: Bounded = field(default_factory=Bounded)


def test_yaml_then_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("path: a\ninner:\n  rate: 2\n")
    cfg = load_config(Outer, cfg_file, ["inner.names=[x, y]", "flag=true"])
    assert cfg == Outer(path="a", inner=Inner(rate=2.0, names=["x", "y"]), flag=True)
    assert load_config(Outer, None, ["inner.rate=1e-2"]).inner.rate == 0.01  # YAML 1.1 gives a string


def test_unknown_key_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"inner.speed.*known keys here: \['names', 'rate'\]"):
        load_config(Outer, None, ["inner.speed=3"])


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="inner.rate"):
        load_config(Outer, None, ["inner.rate=fast"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(Outer, None, ["flag"])


@pytest.mark.parametrize("override, message", [
    ("bounded.skip=0", r"bounded.skip: 0 is out of range \(allowed: 1 <= value\)"),
    ("bounded.share=1.5", r"bounded.share: 1.5 is out of range \(allowed: 0 <= value <= 1\)"),
    ("bounded.low=-10", r"bounded.low: -10.0 is out of range"),
    ("bounded.limit=-2", r"bounded.limit: -2 is out of range"),
    ("bounded.share=.nan", r"bounded.share: NaN"),
    ("bounded.low=2", r"bounded: low \(2.0\) must not exceed high \(1.0\)"),
])
def test_ranges_and_rules_are_checked_when_the_config_loads(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Job, None, [override])
    assert load_config(Job, None, ["bounded.limit=null"]).bounded.limit is None


def test_bad_yaml_and_missing_files_are_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner:\n  rate: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML: .* at line 3"):
        load_config(Outer, bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Outer, listing)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, None, ["path=[unclosed"])


def test_dump_round_trips(tmp_path):
    cfg = load_config(Job, None, ["bounded.skip=8"])
    dumped = tmp_path / "run.yaml"
    dump_yaml(cfg, dumped)
    assert load_config(Job, dumped) == cfg
