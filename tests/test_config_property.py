"""Property: any value for any config field, through `--set` parsing or a YAML mapping, ends in a valid
RunConfig or ONE one-line ReconError / DepthError / SplatError -- never another exception."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from depth.errors import DepthError
from recon.config import apply_mapping, nest, parse_set, preset_config, validate_run_config
from recon.errors import ReconError
from splat.errors import SplatError

EXPECTED = (ReconError, DepthError, SplatError)


def _field_paths(cls: type, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf field of a config dataclass (Optional sections included)."""
    out = []
    for f in dataclasses.fields(cls):
        ann = typing.get_type_hints(cls)[f.name]
        inner = [a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and dataclasses.is_dataclass(a)]
        path = f"{prefix}{f.name}"
        out += _field_paths(inner[0], path + ".") if inner else [path]
    return out


@pytest.fixture(scope="module")
def base():
    cfg = preset_config("cpu")
    validate_run_config(cfg)  # the preset itself is valid
    return cfg


FIELDS = _field_paths(type(preset_config("cpu")))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2, 3, 8, 255, 2**31, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.5, 1.0, -1.5, 1e300, -1e-300, math.nan, math.inf, -math.inf]),
    st.text(max_size=12),
    st.sampled_from(["auto", "cpu", "cuda", "cuda:7", "banana", "~nouser/x", "a\x00b", "/", "x" * 5000, "null"]),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4), st.dictionaries(st.text(max_size=6), SCALARS, max_size=3))
PATHS = st.one_of(
    st.sampled_from(FIELDS),
    st.sampled_from(["frames", "depth", "depth.dvd", "depth.file", "train", "nosuch", "train.nosuch", "a..b", ""]),
)


def _outcome(build) -> str:
    """'ok' or 'refused'; fails the test on any other exception or a multi-line message."""
    try:
        validate_run_config(build())
    except EXPECTED as e:
        msg = str(e)
        assert msg and "\n" not in msg, repr(msg)
        return "refused"
    return "ok"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=PATHS, value=VALUES)
def test_any_value_in_a_yaml_mapping(base, path, value):
    _outcome(lambda: apply_mapping(base, nest(path.split("."), value)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=PATHS, value=VALUES, raw=st.one_of(st.none(), st.text(max_size=20)))
def test_any_set_override(base, path, value, raw):
    """`--set path=TEXT`, TEXT either the YAML of a value or arbitrary characters."""
    text = raw if raw is not None else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...")
    _outcome(lambda: apply_mapping(base, nest(*parse_set(f"{path}={text.strip()}"))))


def test_outcomes_are_both_seen(base):
    """The property is not vacuous: good values pass, bad ones are refused, each with its own message."""
    assert _outcome(lambda: apply_mapping(base, nest(*parse_set("train.iterations=5")))) == "ok"
    assert _outcome(lambda: apply_mapping(base, nest(*parse_set("depth.stereo.scale=1")))) == "ok"
    for item in ("train.iterations=-1", "depth.stereo.scale=.nan", "fuse.stride=[1]", "depth.file.path=3"):
        assert _outcome(lambda item=item: apply_mapping(base, nest(*parse_set(item)))) == "refused", item
