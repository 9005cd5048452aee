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

    def save(self, path: str | Path, pad_to_degree: int | None = None) -> None:
        """Atomic write; pad_to_degree: splat.ply.write_gaussian_ply's (e.g. 3 = the full 3DGS SH layout)."""
        from splat.ply import write_gaussian_ply

        with atomic_path(path) as tmp:
            write_gaussian_ply(tmp, self.params, pad_to_degree)

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


@dataclass
class MeshFile:
    """A triangle mesh (RUN/mesh/mesh.ply): vertices [M, 3] (scene units), triangles [F, 3], colours [M, 3] uint8."""

    vertices: np.ndarray
    triangles: np.ndarray
    colors: np.ndarray

    def save(self, path: str | Path) -> None:
        from splat.mesh import write_mesh_ply

        with atomic_path(path) as tmp:
            write_mesh_ply(tmp, self.vertices, self.triangles, self.colors)


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

    `run_id` (`CameraSet.run_id()` of the cameras it was trained on) and `train_views` tie the checkpoint to
    its run: `load(expected_run_id=...)` refuses another run's, `load(expected_train_views=...)` one trained on
    other views. Both are stored in the state under those keys.
    """

    state: dict[str, Any]

    def save(self, path: str | Path, run_id: str | None = None, train_views: list[int] | None = None) -> None:
        import torch

        state = dict(self.state)
        if run_id is not None:
            state["run_id"] = str(run_id)
        if train_views is not None:
            state["train_views"] = [int(i) for i in train_views]
        _plain(state, "state")
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    @classmethod
    def load(
        cls, path: str | Path, expected_run_id: str | None = None, expected_train_views: list[int] | None = None
    ) -> Checkpoint:
        """Read with torch.load(weights_only=True) and validate (splat.trainer.check_state: parameters,
        optimizer and strategy state agree); with `expected_run_id` / `expected_train_views`, refuse a
        checkpoint of another run or of other training views. Every refusal is one ReconError line."""
        path = Path(path)
        if not path.exists():
            raise ReconError(f"{path} not found: nothing to resume (train without --resume)")
        state = _torch_load(path)
        from splat.trainer import check_state

        try:
            check_state(state)
        except SplatError as e:
            raise ReconError(
                f"{path} is not a usable training checkpoint: {e}; retrain without --resume to replace it"
            ) from e
        _check_run_id(path, state, expected_run_id)
        views = state.get("train_views")
        if expected_train_views is not None and views is not None and list(views) != list(expected_train_views):
            raise ReconError(
                f"{path} was trained on views {list(views)} but the split now trains on {list(expected_train_views)}; "
                "retrain without --resume to replace it"
            )
        return cls(state)


def _torch_load(path: Path) -> Any:
    """torch.load(weights_only=True): tensors and plain values only, so no code in the file runs."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ReconError(
            f"{path} holds more than tensors and plain values ({_refused_content(e)}); refusing to load it: "
            "a checkpoint is never unpickled, retrain without --resume to replace it"
        ) from e
    except Exception as e:  # torch raises zip / EOF / runtime errors for damaged files
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ReconError(f"{path} is not a readable checkpoint ({type(e).__name__}: {first})") from e


def _refused_content(e: Exception) -> str:
    """What torch's weights-only unpickler refused (e.g. "Unsupported global: GLOBAL io.open"), on one line."""
    for line in str(e).splitlines():
        if "WeightsUnpickler error:" in line:
            detail = line.split("WeightsUnpickler error:", 1)[1].split(" was not an allowed")[0].strip()[:100]
            return detail or "pickled Python objects"
    return "pickled Python objects"


def _check_run_id(path: Path, state: dict[str, Any], expected: str | None) -> None:
    if expected is None:
        return
    rid = state.get("run_id")
    if not isinstance(rid, str):
        raise ReconError(
            f"{path} has no run id (written by an older version or another tool); "
            "retrain without --resume to replace it"
        )
    if rid != expected:
        raise ReconError(
            f"{path} belongs to another run or to earlier poses (trained on cameras {rid}, this run's are {expected}); "
            "refusing it: retrain without --resume to replace it"
        )
