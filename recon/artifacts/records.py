"""The JSON records of a run: RUN/metrics.json, RUN/depth/alignment.json, RUN/depth/windows.json,
RUN/splat/train_log.jsonl. Each is read here only, with a clear error for a file that is not what it says.

metrics.json: the train stage's evaluation (psnr, ssim, [lpips], [depth_abs_rel, ...], num_gaussians, ...),
    `splat_per_view` (one entry per test view) and `splat_config`. A new evaluation replaces the old one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recon.atomic import write_json, write_text
from recon.errors import ReconError


def read_json_object(path: str | Path, what: str, rerun: str | None = None) -> dict[str, Any]:
    """A JSON file holding an object -> dict; ReconError (naming `what`) when missing or malformed."""
    path = Path(path)
    hint = f": run the {rerun} stage first (recon {rerun})" if rerun else ""
    if not path.exists():
        raise ReconError(f"{what} {path} not found{hint}")
    try:
        d = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ReconError(f"{what} {path} is not valid JSON ({e})") from e
    if not isinstance(d, dict):
        raise ReconError(f"{what} {path} must hold a JSON object")
    return d


@dataclass
class Metrics:
    """RUN/metrics.json: summary figures (flat keys), per-test-view figures and the config that made them."""

    summary: dict[str, Any] = field(default_factory=dict)
    per_view: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The file's layout: summary keys, `splat_per_view` and `splat_config`."""
        return {**self.summary, "splat_per_view": self.per_view, "splat_config": self.config}

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Metrics:
        d = read_json_object(path, "metrics", "train")
        per_view = d.pop("splat_per_view", [])
        config = d.pop("splat_config", {})
        if not isinstance(per_view, list) or not isinstance(config, dict):
            raise ReconError(f"metrics {path}: splat_per_view must be a list and splat_config an object")
        return cls(summary=d, per_view=per_view, config=config)


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: str | Path, what: str) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise ReconError(f"{what} {path} not found")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ReconError(f"{what} {path}: line {n} is not JSON ({e})") from e
        if not isinstance(row, dict):
            raise ReconError(f"{what} {path}: line {n} is not a JSON object")
        rows.append(row)
    return rows
