"""Building a RunConfig: preset YAML -> user YAML (--config) -> flat CLI flags -> --set overrides.

YAML files have one section per stage, named like the RunConfig fields:

    frames: {max_frames: 60, max_size: 320}
    depth: {backend: stereo, stereo: {num_planes: 64}}
    train: {iterations: 2000, depth_loss: pearson}

`--set section.field=value` reaches any field (values parsed as YAML scalars, e.g. `--set train.iterations=500`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, cast

import yaml

from recon.errors import ReconError

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


def preset_path(name: str) -> Path:
    p = PRESET_DIR / f"{name}.yaml"
    if not p.exists():
        avail = ", ".join(sorted(q.stem for q in PRESET_DIR.glob("*.yaml")))
        raise ReconError(f"unknown preset {name!r}; presets: {avail}")
    return p


def resolve_preset(name: str) -> str:
    """ "auto" -> "cuda" when torch sees a CUDA GPU, else "cpu"; other names unchanged."""
    if name != "auto":
        return name
    from depth.device import cuda_available

    return "cuda" if cuda_available() else "cpu"


def preset_config(name: str) -> Any:
    """The RunConfig of device preset `name` ("auto", "cpu", "cuda"): TrainConfig.preset, then configs/NAME.yaml."""
    from recon.pipeline import RunConfig
    from recon.stages.train import Config as TrainConfig

    name = resolve_preset(name)
    path = preset_path(name)  # raises for a name without a configs/NAME.yaml: "cpu" and "cuda" are left
    cfg = dataclasses.replace(RunConfig(), train=TrainConfig.preset(cast(Literal["cpu", "cuda"], name)))
    return apply_mapping(cfg, load_yaml(path))


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ReconError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ReconError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]})") from e
    except (ValueError, TypeError, RecursionError, OSError) as e:  # e.g. a date like 2001-13-01, an unreadable file
        raise ReconError(f"config file {path} cannot be read ({type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(data, dict):
        raise ReconError(f"config file {path} must hold a mapping of stage sections (frames:, poses:, depth:, ...)")
    return data


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML value to the field's annotated type (Path, tuples, Optional, Literal...)."""
    if value is None:
        return None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for a in non_none:
            try:
                return _coerce(value, a, where)
            except (ReconError, TypeError, ValueError) as e:
                errors.append(str(e))
        raise ReconError(f"{where}: cannot use {value!r} ({'; '.join(errors)})")
    if origin is typing.Literal:
        if value not in args:
            raise ReconError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        seq = value if isinstance(value, (list, tuple)) else [value]
        inner = args[0] if args else Any
        out = [_coerce(v, inner, where) for v in seq]
        return tuple(out) if origin is tuple else out
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        raise ReconError(f"{where}: expected a mapping of fields, got {value!r}")
    if annotation is Path:
        return _path(value, where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ReconError(f"{where}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _is_integral(value):
            raise ReconError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ReconError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except OverflowError:
            raise ReconError(f"{where}: {value!r} is too large") from None
    if annotation is str:
        return str(value)
    return value


def _is_integral(value: int | float) -> bool:
    return isinstance(value, int) or (math.isfinite(value) and value == int(value))


def _path(value: Any, where: str) -> Path:
    """A YAML value as a Path (a leading ~ expanded); ReconError for what no file system accepts."""
    text = str(value)
    if not isinstance(value, (str, Path)) or not text or any(ord(c) < 32 for c in text):
        raise ReconError(f"{where}: expected a file or folder path, got {value!r}")
    try:
        return Path(text).expanduser()
    except RuntimeError as e:  # ~user of an unknown user
        raise ReconError(f"{where}: {e}") from None


def apply_mapping(obj: Any, data: dict[str, Any], where: str = "", strict: bool = True) -> Any:
    """Return a copy of dataclass `obj` with fields from `data` (nested dataclasses merged).

    With strict=False unknown keys are ignored (used for configs saved by an older version of a run).
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise ReconError(f"{where or 'config'}: not a config section")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    updates = {}
    for key, value in data.items():
        k = str(key).replace("-", "_")
        loc = f"{where}.{k}" if where else k
        if k not in names:
            if not strict:
                continue
            raise ReconError(f"unknown config key {loc!r}; known keys here: {', '.join(sorted(names))}")
        current = getattr(obj, k)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            updates[k] = apply_mapping(current, value, loc, strict)
        elif dataclasses.is_dataclass(current) and not (value is None and _optional(hints.get(k))):
            raise ReconError(
                f"{loc}: expected a mapping of fields ({', '.join(sorted(_names(current)))}), got {value!r}"
            )
        elif isinstance(value, dict) and current is None:
            ann = hints.get(k)
            cls = next((a for a in typing.get_args(ann) if isinstance(a, type) and dataclasses.is_dataclass(a)), None)
            if cls is None:
                raise ReconError(f"{loc}: a mapping is not valid here")
            updates[k] = apply_mapping(cls(**{}) if _all_defaults(cls) else _build(cls, value, loc), value, loc)
        else:
            updates[k] = _coerce(value, hints.get(k, Any), loc)
    return dataclasses.replace(obj, **updates)


def _optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def _names(obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(obj)]


def _all_defaults(cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )


def _build(cls: type, value: dict, where: str) -> Any:
    """A section with required fields (e.g. depth.file needs `path`) built from a mapping."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in value.items():
        name = str(k).replace("-", "_")
        if name not in fields:
            raise ReconError(f"unknown config key {f'{where}.{k}'!r}; known keys here: {', '.join(sorted(fields))}")
        kwargs[name] = _coerce(v, hints.get(name, Any), f"{where}.{name}")
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ReconError(f"{where}: missing {', '.join(missing)}")
    return cls(**kwargs)


def parse_set(item: str) -> tuple[list[str], Any]:
    """'train.iterations=500' -> (['train', 'iterations'], 500)."""
    if "=" not in item:
        raise ReconError(f"--set {item!r}: expected section.field=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except (yaml.YAMLError, ValueError, TypeError, RecursionError):  # not YAML (or e.g. the date 2001-13-01)
        value = raw
    return key.strip().split("."), value


def nest(keys: list[str], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {keys[-1]: value}
    for k in reversed(keys[:-1]):
        out = {k: out}
    return out


def validate_run_config(cfg: Any) -> Any:
    """Range-check every section of a RunConfig (each section's own `validate()`) before any work starts.

    Returns `cfg`; raises ReconError with the section's one-line message (library errors converted).
    """
    from depth.errors import DepthError
    from splat.errors import SplatError

    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if not dataclasses.is_dataclass(section) or not hasattr(section, "validate"):
            raise ReconError(f"config section {f.name!r} is not a mapping of fields")
        try:
            section.validate()
        except (DepthError, SplatError) as e:
            raise ReconError(str(e)) from e
    return cfg
