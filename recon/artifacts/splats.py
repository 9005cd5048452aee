"""The point and Gaussian files of a run: RUN/points/init.ply, RUN/splat/gaussians.ply, RUN/splat/checkpoint.pt.

The PLY layouts are splat.ply's (the 3DGS layout for Gaussians, x y z [n] rgb for points); these classes add
atomic writes and the run's validation. The checkpoint is read with torch.load(weights_only=True): it holds
tensors and plain Python values only, so loading a file someone sent runs no code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recon.atomic import atomic_path
from recon.errors import ReconError
from splat.errors import SplatError


@dataclass
class PointCloud:
    """Coloured points: xyz float32 [N, 3] (scene units), rgb uint8 [N, 3], normals float32 [N, 3] or None."""

    xyz: np.ndarray
    rgb: np.ndarray
    normals: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.xyz)

    def save(self, path: str | Path) -> None:
        from splat.ply import write_point_ply

        with atomic_path(path) as tmp:
            write_point_ply(tmp, self.xyz, self.rgb, self.normals)

    @classmethod
    def load(cls, path: str | Path) -> PointCloud:
        from splat.ply import read_point_ply

        try:
            xyz, rgb, normals = read_point_ply(path)
        except SplatError as e:
            raise ReconError(str(e)) from e
        return cls(xyz, rgb, normals)


@dataclass
class GaussiansFile:
    """A trained Gaussian set in splat.ply's dict layout (means, scales, quats, opacities, sh0, shN)."""

    params: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.params["means"])

    def save(self, path: str | Path) -> None:
        from splat.ply import write_gaussian_ply

        with atomic_path(path) as tmp:
            write_gaussian_ply(tmp, self.params)

    @classmethod
    def load(cls, path: str | Path) -> GaussiansFile:
        from splat.ply import read_gaussian_ply

        path = Path(path)
        if not path.exists():
            raise ReconError(f"{path} not found: run the train stage first (recon train)")
        try:
            return cls(read_gaussian_ply(path))
        except SplatError as e:
            raise ReconError(str(e)) from e


def _plain(obj: Any, where: str) -> None:
    """Raise unless `obj` is made of tensors, numbers, strings, None, lists, tuples and dicts only."""
    import torch

    if isinstance(obj, dict):
        for k, v in obj.items():
            _plain(k, where)
            _plain(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _plain(v, where)
    elif not (obj is None or isinstance(obj, (torch.Tensor, bool, int, float, str))):
        raise ReconError(f"checkpoint entry {where} is a {type(obj).__name__}, not a tensor or plain value")


@dataclass
class Checkpoint:
    """A training state (splat.trainer's `state_dict()`): tensors and plain values only.

    `run_id` ties the checkpoint to the run that wrote it; `load(expected_run_id=...)` refuses another run's.
    """

    state: dict[str, Any]

    REQUIRED = ("step", "params", "optimizers", "strategy_state", "extent")

    def save(self, path: str | Path) -> None:
        import torch

        _plain(self.state, "state")
        with atomic_path(path) as tmp:
            torch.save(self.state, tmp)

    @classmethod
    def load(cls, path: str | Path, expected_run_id: str | None = None) -> Checkpoint:
        import pickle

        import torch

        path = Path(path)
        if not path.exists():
            raise ReconError(f"{path} not found: nothing to resume (train without --resume)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported content"
            raise ReconError(f"{path} holds more than tensors and plain values; refusing to load it ({first})") from e
        except Exception as e:  # torch raises zip / EOF / runtime errors for damaged files
            raise ReconError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from e
        if not isinstance(state, dict):
            raise ReconError(f"{path} is not a training checkpoint (not a mapping)")
        missing = [k for k in cls.REQUIRED if k not in state]
        if missing:
            raise ReconError(f"{path} is not a training checkpoint (missing {', '.join(missing)})")
        if not isinstance(state["params"], dict) or not all(
            isinstance(v, torch.Tensor) for v in state["params"].values()
        ):
            raise ReconError(f"{path}: 'params' must map names to tensors")
        rid = state.get("run_id")
        if expected_run_id is not None and rid is not None and rid != expected_run_id:
            raise ReconError(f"{path} was written by another run ({rid}); refusing to resume from it")
        return cls(state)
