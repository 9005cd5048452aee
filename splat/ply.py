"""3D Gaussian Splatting PLY files (the layout of the original 3DGS code, read by common splat viewers).

Vertex properties, all float32, in this order:
    x y z  nx ny nz  f_dc_0..2  f_rest_0..f_rest_{3*(K-1)-1}  opacity  scale_0..2  rot_0..3
with the parameters stored *before* activation, as the original 3DGS does:
    opacity = logit(alpha), scale_i = log(sigma_i) (scene units), rot = quaternion (w, x, y, z), not
    necessarily normalised, f_dc = degree-0 SH coefficient per RGB channel, f_rest = the higher SH
    bands stored channel-major (all R coefficients of bands 1..degree, then all G, then all B).
Normals are written as zeros (3DGS writes them for compatibility only).

In memory a Gaussian set is a dict of numpy float32 arrays (the trainer's parameter names):
    means [N,3], scales [N,3] (log), quats [N,4] (wxyz), opacities [N] (logit),
    sh0 [N,1,3], shN [N,K-1,3] with K = (sh_degree+1)^2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from recon.atomic import atomic_path
from recon.errors import ReconError

GAUSSIAN_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def sh_degree_from_bases(num_bases: int) -> int:
    """Number of SH coefficients per channel K = (d+1)^2 -> degree d."""
    d = int(round(np.sqrt(num_bases))) - 1
    if (d + 1) ** 2 != num_bases:
        raise ReconError(f"{num_bases} SH coefficients per channel is not a square number (d+1)^2")
    return d


def _check(gaussians: dict[str, np.ndarray]) -> int:
    missing = [k for k in GAUSSIAN_KEYS if k not in gaussians]
    if missing:
        raise ReconError(f"Gaussian set is missing {missing}")
    n = len(gaussians["means"])
    shapes = {
        "means": (n, 3),
        "scales": (n, 3),
        "quats": (n, 4),
        "opacities": (n,),
        "sh0": (n, 1, 3),
    }
    for k, shape in shapes.items():
        if tuple(np.shape(gaussians[k])) != shape:
            raise ReconError(f"Gaussian '{k}' has shape {np.shape(gaussians[k])}, expected {shape}")
    shN = np.asarray(gaussians["shN"])
    if shN.ndim != 3 or shN.shape[0] != n or shN.shape[2] != 3:
        raise ReconError(f"Gaussian 'shN' has shape {shN.shape}, expected ({n}, K-1, 3)")
    sh_degree_from_bases(shN.shape[1] + 1)
    return n


def property_names(num_rest_bases: int) -> list[str]:
    """PLY vertex property names for K-1 = `num_rest_bases` higher SH coefficients per channel."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * num_rest_bases)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def write_gaussian_ply(path: str | Path, gaussians: dict[str, np.ndarray]) -> None:
    """Write a Gaussian set (dict of arrays, see module docstring) as a binary 3DGS PLY, atomically."""
    n = _check(gaussians)
    g = {k: np.asarray(gaussians[k], dtype=np.float32) for k in GAUSSIAN_KEYS}
    rest = g["shN"].shape[1]
    # [N, K-1, 3] -> [N, 3, K-1] -> [N, 3*(K-1)]: channel-major, as 3DGS stores features_rest.
    f_rest = g["shN"].transpose(0, 2, 1).reshape(n, 3 * rest)
    columns = np.concatenate(
        [
            g["means"],
            np.zeros((n, 3), np.float32),
            g["sh0"].reshape(n, 3),
            f_rest,
            g["opacities"].reshape(n, 1),
            g["scales"],
            g["quats"],
        ],
        axis=1,
    )
    names = property_names(rest)
    vertex = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = columns[:, i]
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(str(tmp))


def read_gaussian_ply(path: str | Path) -> dict[str, np.ndarray]:
    """Read a 3DGS PLY into the dict layout of `write_gaussian_ply` (float32 arrays, pre-activation)."""
    path = Path(path)
    if not path.exists():
        raise ReconError(f"{path} not found")
    try:
        ply = PlyData.read(str(path))
        vertex = ply["vertex"].data
    except Exception as e:  # plyfile raises several unrelated types on a malformed file
        raise ReconError(f"{path} is not a readable PLY file ({e})") from e
    have = set(vertex.dtype.names or ())
    base = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2"]
    base += ["rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [p for p in base if p not in have]
    if missing:
        raise ReconError(f"{path} is not a 3D Gaussian Splatting PLY (missing properties {missing})")
    n_rest = sum(1 for p in have if p.startswith("f_rest_"))
    if n_rest % 3:
        raise ReconError(f"{path} has {n_rest} f_rest_* properties, not a multiple of 3")
    rest = n_rest // 3
    sh_degree_from_bases(rest + 1)

    def cols(names: list[str]) -> np.ndarray:
        return np.stack([np.asarray(vertex[p], dtype=np.float32) for p in names], axis=1) if names else None

    n = len(vertex)
    f_rest = cols([f"f_rest_{i}" for i in range(n_rest)])
    shN = f_rest.reshape(n, 3, rest).transpose(0, 2, 1) if rest else np.zeros((n, 0, 3), np.float32)
    return {
        "means": cols(["x", "y", "z"]),
        "scales": cols(["scale_0", "scale_1", "scale_2"]),
        "quats": cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
        "opacities": np.asarray(vertex["opacity"], dtype=np.float32),
        "sh0": cols(["f_dc_0", "f_dc_1", "f_dc_2"]).reshape(n, 1, 3),
        "shN": np.ascontiguousarray(shN, dtype=np.float32),
    }
