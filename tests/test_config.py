"""Strict YAML -> dataclass configs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from fourm.config import ConfigError, apply_overrides, from_dict, load_config, save_json_atomic, to_dict


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    name: Literal["adamw", "sgd"] = "adamw"


@dataclass(frozen=True)
class Run:
    steps: int
    optim: Optim = field(default_factory=Optim)
    tags: list[str] = field(default_factory=list)
    out: str | None = None


def test_nested_build_and_round_trip():
    cfg = from_dict(Run, {"steps": 3, "optim": {"lr": 1, "betas": [0.8, 0.9]}, "tags": ["a"]})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.8, 0.9)
    assert from_dict(Run, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"steps": 1, "optim": {"lrr": 1}}, "Run.optim: unknown key(s) ['lrr']"),
        ({"steps": "x"}, "Run.steps: expected an integer"),
        ({"steps": 1, "optim": {"name": "adam"}}, "Run.optim.name: 'adam' is not allowed"),
        ({"steps": 1, "optim": {"betas": [0.9]}}, "Run.optim.betas: expected 2 items"),
        ({}, "missing required key(s) ['steps']"),
        ({"steps": True}, "Run.steps: expected an integer"),
    ],
)
def test_errors_name_the_field(data, needle):
    with pytest.raises(ConfigError) as e:
        from_dict(Run, data)
    assert needle in str(e.value)


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("steps: 5\noptim:\n  lr: 0.1\n")
    cfg = load_config(Run, p, overrides=["optim.lr=3e-4", "tags=[x, y]", "out=null"])
    assert cfg.steps == 5 and cfg.optim.lr == pytest.approx(3e-4) and cfg.tags == ["x", "y"] and cfg.out is None
    with pytest.raises(ConfigError, match="must look like"):
        apply_overrides({}, ["nokey"])


def test_atomic_json(tmp_path):
    p = tmp_path / "sub" / "a.json"
    save_json_atomic({"b": 1}, p)
    assert p.read_text().strip().startswith("{") and list(p.parent.iterdir()) == [p]
    with pytest.raises(TypeError):
        save_json_atomic({"b": object()}, p)
    assert p.read_text().count('"b": 1') == 1 and list(p.parent.iterdir()) == [p]


@dataclass(frozen=True)
class _Inner:
    size: int = 1


@dataclass(frozen=True)
class _Outer:
    inner: _Inner | None = None
    either: int | _Inner = 0


def test_optional_field_reports_the_inner_error():
    with pytest.raises(ConfigError) as e:
        from_dict(_Outer, {"inner": {"size": "big"}})
    assert "inner.size" in str(e.value) and "fits none" not in str(e.value)
    assert from_dict(_Outer, {"inner": None}).inner is None
    with pytest.raises(ConfigError) as e:  # two real alternatives: both reasons are given
        from_dict(_Outer, {"either": {"size": "big"}})
    msg = str(e.value)
    assert "fits none of int | _Inner" in msg and "as int:" in msg and "as _Inner:" in msg and "either.size" in msg
