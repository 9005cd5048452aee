"""RUN/split.json: train / test / depth-prior frames of a run.

{"protocol": str, "train": [i...], "test": [i...], "prior": [i...]} with indices into the frame order of
RUN/cameras.json. Test views are never used for training, depth alignment or fusion; `prior` (the frames the
depth prior is computed on) equals `train` unless the run asked for `--prior-frames non-test|all`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recon.atomic import write_json
from recon.errors import ReconError


def _indices(d: dict[str, Any], key: str, where: Path | str) -> list[int]:
    items = d.get(key, [])
    if not isinstance(items, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise ReconError(f"{where}: '{key}' must be a list of frame indices")
    if len(set(items)) != len(items):
        raise ReconError(f"{where}: '{key}' names a frame more than once")
    return sorted(items)


@dataclass
class Split:
    """Frame indices (into cameras.json order) of the training views, test views and depth-prior frames."""

    train: list[int]
    test: list[int]
    prior: list[int]
    protocol: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "train": self.train, "test": self.test, "prior": self.prior}

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Split:
        path = Path(path)
        if not path.exists():
            raise ReconError(f"{path} not found: the run has no train/test split yet")
        try:
            d = json.loads(path.read_text())
        except ValueError as e:
            raise ReconError(f"{path} is not valid JSON ({e})") from e
        if not isinstance(d, dict):
            raise ReconError(f"{path} must hold a JSON object with train/test/prior lists")
        train, test = _indices(d, "train", path), _indices(d, "test", path)
        prior = _indices(d, "prior", path) if "prior" in d else list(train)
        return cls(train=train, test=test, prior=prior, protocol=str(d.get("protocol", "")))

    def validate(self, num_frames: int, registered: Any = None, where: str = "split.json") -> Split:
        """Indices in range, train and test disjoint, at least one training view, every view registered."""
        for key in ("train", "test", "prior"):
            for i in getattr(self, key):
                if not 0 <= i < num_frames:
                    raise ReconError(f"{where} names {key} frame {i}, but the run has {num_frames} frames")
                if key != "prior" and registered is not None and not registered[i]:
                    raise ReconError(f"{where} names {key} frame {i}, which has no camera pose (unregistered)")
        if not self.train:
            raise ReconError(f"{where} has no training views")
        both = sorted(set(self.train) & set(self.test))
        if both:
            raise ReconError(f"{where}: frames {both} are both train and test views")
        return self
