"""RUN/manifest.json: what ran in a run directory, with which config, on which inputs, how long.

{"version": 1, "input": str|null,
 "stages": {name: {"status": "running"|"done"|"failed"|"interrupted"|"stale", "started": iso, "finished": iso,
                    "seconds": float, "error": str (failed/interrupted),
                    "fingerprint": str, "config": {...}, "versions": {...} (last success), "summary": {...} (if done),
                    "attempt": {"fingerprint", "config", "versions"}  (the attempt not (yet) finished)}}}

A stage is skipped on a re-run when its status is "done" and its fingerprint (its own config, the
input, and the fingerprints + finish times of the stages it depends on) is unchanged. `config` is always
the config of the last successful run of the stage (later commands build on it); the config of a running,
failed or interrupted attempt is kept under `attempt` for diagnosis only.

Writers hold recon.lock on RUN; every update re-reads the file and writes it atomically (read-modify-write),
so updates made by an earlier holder are never overwritten.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from recon.artifacts import RunPaths
from recon.atomic import write_json
from recon.errors import ReconError

_VERSIONED = ("dvd-splat", "torch", "numpy", "pycolmap", "gsplat", "diffusers", "open3d", "nerfstudio", "av")


def library_versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def to_jsonable(obj: Any) -> Any:
    """Dataclass configs (nested) -> JSON-compatible dicts; Paths -> str."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def fingerprint(*parts: Any) -> str:
    blob = json.dumps([to_jsonable(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def input_fingerprint(path: Path | None) -> Any:
    """Identity of the input: path, size and mtime of the file, or of every file in the folder."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        return [str(p.resolve())] + sorted(
            (q.name, q.stat().st_size, q.stat().st_mtime_ns) for q in p.iterdir() if q.is_file()
        )
    if p.exists():
        st = p.stat()
        return [str(p.resolve()), st.st_size, st.st_mtime_ns]
    return [str(p)]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _invalid(paths: RunPaths, why: str) -> ReconError:
    return ReconError(f"{paths.manifest} is not a valid run manifest ({why}); remove it or use a new --out")


def _checked(paths: RunPaths, data: Any) -> dict[str, Any]:
    """`data` if it has the manifest's structure, else the one-line ReconError saying what to do."""
    if not isinstance(data, dict):
        raise _invalid(paths, f"a JSON {type(data).__name__}, not an object")
    if not isinstance(data.get("input"), (str, type(None))):
        raise _invalid(paths, "input is not a path")
    stages = data.setdefault("stages", {})
    if not isinstance(stages, dict):
        raise _invalid(paths, "stages is not an object")
    for name, st in stages.items():
        if not isinstance(st, dict):
            raise _invalid(paths, f"stage {name!r} is not an object")
        for key in ("status", "fingerprint", "started", "finished", "error"):
            if not isinstance(st.get(key, ""), str):
                raise _invalid(paths, f"stages.{name}.{key} is not a string")
        for key in ("config", "summary", "versions", "attempt"):  # config is null for stages without options
            if not isinstance(st.get(key, {}), (dict, type(None) if key == "config" else dict)):
                raise _invalid(paths, f"stages.{name}.{key} is not an object")
        if isinstance(st.get("seconds", 0), bool) or not isinstance(st.get("seconds", 0), (int, float)):
            raise _invalid(paths, f"stages.{name}.seconds is not a number")
    return data


def read_manifest(paths: RunPaths) -> dict[str, Any]:
    """RUN/manifest.json as a dict (an empty manifest when there is none); ReconError when it is damaged."""
    if not paths.manifest.exists():
        return {"version": 1, "input": None, "stages": {}}
    try:
        data = json.loads(paths.manifest.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise _invalid(paths, f"not JSON: {e}") from e
    except OSError as e:
        e.action = "cannot read"  # type: ignore[attr-defined]
        raise
    return _checked(paths, data)


class Manifest:
    """The run's manifest. `data` is the last state read or written; every update re-reads the file first."""

    def __init__(self, paths: RunPaths):
        self.paths = paths
        self.data: dict[str, Any] = read_manifest(paths)

    def reload(self) -> dict[str, Any]:
        self.data = read_manifest(self.paths)
        return self.data

    def _update(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Read-modify-write: re-read manifest.json, apply `change`, write it atomically."""
        data = read_manifest(self.paths)
        change(data)
        write_json(self.paths.manifest, data)
        self.data = data

    def save(self) -> None:
        write_json(self.paths.manifest, self.data)

    @property
    def input(self) -> str | None:
        return self.data.get("input")

    def set_input(self, value: str | os.PathLike | None) -> None:
        """Record the run's input (written at once)."""
        self._update(lambda d: d.__setitem__("input", None if value is None else str(value)))

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name, {})

    def is_done(self, name: str, fp: str | None = None) -> bool:
        st = self.stage(name)
        return st.get("status") == "done" and (fp is None or st.get("fingerprint") == fp)

    def start(self, name: str, fp: str, config: Any, requested: Any = None) -> None:
        """Mark `name` running with this attempt's fingerprint and config (not the saved config yet).

        `requested`: the config as asked when it differs from `config` by one-off requests (e.g. train's
        --resume); kept with the attempt for diagnosis, never saved as the stage's config."""
        attempt = {"fingerprint": fp, "config": to_jsonable(config), "versions": library_versions()}
        if requested is not None:
            attempt["requested"] = to_jsonable(requested)

        def change(d: dict[str, Any]) -> None:
            old = d["stages"].get(name, {})
            st = {k: old[k] for k in ("fingerprint", "config", "versions") if k in old}
            st.update({"status": "running", "started": _now(), "attempt": attempt})
            d["stages"][name] = st

        self._update(change)

    def finish(
        self, name: str, status: str, seconds: float, summary: dict | None = None, error: str | None = None
    ) -> None:
        """Record the end of the attempt; only a "done" one makes its config and fingerprint the stage's."""

        def change(d: dict[str, Any]) -> None:
            st = d["stages"].setdefault(name, {})
            st.update({"status": status, "finished": _now(), "seconds": round(float(seconds), 3)})
            st.pop("error", None)
            if status == "done":
                attempt = st.pop("attempt", {})
                attempt.pop("requested", None)
                st.update(attempt)
                st["summary"] = to_jsonable(summary or {})
            if error is not None:
                st["error"] = error

        self._update(change)

    def recover(self) -> list[str]:
        """Stages left "running" by a writer that died (the caller holds the lock) -> "interrupted"."""
        dead = [n for n, st in self.data["stages"].items() if st.get("status") == "running"]
        if dead:

            def change(d: dict[str, Any]) -> None:
                for n in dead:
                    if d["stages"].get(n, {}).get("status") == "running":
                        d["stages"][n].update(status="interrupted", error="the process running it ended")

            self._update(change)
        return dead

    def invalidate(self, name: str) -> None:
        if name in self.data["stages"]:
            self._update(lambda d: d["stages"].get(name, {}).__setitem__("status", "stale"))
