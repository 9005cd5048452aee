"""RUN/manifest.json: what ran in a run directory, with which config, on which inputs, how long.

{"version": 1, "input": str|null,
 "stages": {name: {"status": "running"|"done"|"failed"|"interrupted", "fingerprint": str, "config": {...},
                    "versions": {...}, "started": iso, "finished": iso, "seconds": float, "summary": {...}}}}

A stage is skipped on a re-run when its status is "done" and its fingerprint (its own config, the
input, and the fingerprints + finish times of the stages it depends on) is unchanged.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

from recon.artifacts import RunPaths, read_json_object
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


class Manifest:
    def __init__(self, paths: RunPaths):
        self.paths = paths
        self.data: dict[str, Any] = {"version": 1, "input": None, "stages": {}}
        if paths.manifest.exists():
            try:
                self.data = read_json_object(paths.manifest, "manifest")
                self.data.setdefault("stages", {})
            except ReconError:
                pass  # a manifest that does not parse is treated as a fresh run

    def save(self) -> None:
        write_json(self.paths.manifest, self.data)

    @property
    def input(self) -> str | None:
        return self.data.get("input")

    def set_input(self, value: str | os.PathLike | None) -> None:
        self.data["input"] = None if value is None else str(value)

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name, {})

    def is_done(self, name: str, fp: str | None = None) -> bool:
        st = self.stage(name)
        return st.get("status") == "done" and (fp is None or st.get("fingerprint") == fp)

    def start(self, name: str, fp: str, config: Any) -> None:
        self.data["stages"][name] = {
            "status": "running",
            "fingerprint": fp,
            "config": to_jsonable(config),
            "versions": library_versions(),
            "started": _now(),
        }
        self.save()

    def finish(
        self, name: str, status: str, seconds: float, summary: dict | None = None, error: str | None = None
    ) -> None:
        st = self.data["stages"].setdefault(name, {})
        st.update({"status": status, "finished": _now(), "seconds": round(float(seconds), 3)})
        if summary is not None:
            st["summary"] = to_jsonable(summary)
        if error is not None:
            st["error"] = error
        self.save()

    def invalidate(self, name: str) -> None:
        if name in self.data["stages"]:
            self.data["stages"][name]["status"] = "stale"
            self.save()
