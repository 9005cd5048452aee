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

from splat.errors import SplatError

GAUSSIAN_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def sh_degree_from_bases(num_bases: int) -> int:
    """Number of SH coefficients per channel K = (d+1)^2 -> degree d."""
    d = int(round(np.sqrt(num_bases))) - 1
    if (d + 1) ** 2 != num_bases:
        raise SplatError(f"{num_bases} SH coefficients per channel is not a square number (d+1)^2")
    return d


def _check(gaussians: dict[str, np.ndarray]) -> int:
    missing = [k for k in GAUSSIAN_KEYS if k not in gaussians]
    if missing:
        raise SplatError(f"Gaussian set is missing {missing}")
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
            raise SplatError(f"Gaussian '{k}' has shape {np.shape(gaussians[k])}, expected {shape}")
    shN = np.asarray(gaussians["shN"])
    if shN.ndim != 3 or shN.shape[0] != n or shN.shape[2] != 3:
        raise SplatError(f"Gaussian 'shN' has shape {shN.shape}, expected ({n}, K-1, 3)")
    sh_degree_from_bases(shN.shape[1] + 1)
    return n


def property_names(num_rest_bases: int) -> list[str]:
    """PLY vertex property names for K-1 = `num_rest_bases` higher SH coefficients per channel."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * num_rest_bases)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def write_gaussian_ply(path: str | Path, gaussians: dict[str, np.ndarray], pad_to_degree: int | None = None) -> None:
    """Write a Gaussian set (dict of arrays, see module docstring) as a binary 3DGS PLY at `path`.

    pad_to_degree: write this many SH bands (e.g. 3: the 45 f_rest_* of the original 3DGS layout, which some
    viewers require), the bands that were not trained as zeros. None = the set's own degree.
    """
    n = _check(gaussians)
    g = {k: np.asarray(gaussians[k], dtype=np.float32) for k in GAUSSIAN_KEYS}
    if pad_to_degree is not None:
        have = g["shN"].shape[1]
        want = (int(pad_to_degree) + 1) ** 2 - 1
        if not 0 <= pad_to_degree <= 4 or want < have:
            degree = sh_degree_from_bases(have + 1)
            raise SplatError(f"pad_to_degree must be in [{degree}, 4] for SH degree {degree}, got {pad_to_degree}")
        g["shN"] = np.concatenate([g["shN"], np.zeros((n, want - have, 3), np.float32)], axis=1)
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
    PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(str(path))


def read_gaussian_ply(path: str | Path) -> dict[str, np.ndarray]:
    """Read a 3DGS PLY into the dict layout of `write_gaussian_ply` (float32 arrays, pre-activation).

    Raises SplatError for a missing or malformed file and for non-finite values.
    """
    path = Path(path)
    if not path.exists():
        raise SplatError(f"{path} not found")
    try:
        ply = PlyData.read(str(path))
        vertex = ply["vertex"].data
    except Exception as e:  # plyfile raises several unrelated types on a malformed file
        raise SplatError(f"{path} is not a readable PLY file ({e})") from e
    have = set(vertex.dtype.names or ())
    base = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2"]
    base += ["rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [p for p in base if p not in have]
    if missing:
        raise SplatError(f"{path} is not a 3D Gaussian Splatting PLY (missing properties {missing})")
    n_rest = sum(1 for p in have if p.startswith("f_rest_"))
    if n_rest % 3:
        raise SplatError(f"{path} has {n_rest} f_rest_* properties, not a multiple of 3")
    rest = n_rest // 3
    sh_degree_from_bases(rest + 1)

    def cols(names: list[str]) -> np.ndarray:
        return np.stack([np.asarray(vertex[p], dtype=np.float32) for p in names], axis=1)

    n = len(vertex)
    if rest:
        shN = cols([f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, rest).transpose(0, 2, 1)
    else:
        shN = np.zeros((n, 0, 3), np.float32)
    out = {
        "means": cols(["x", "y", "z"]),
        "scales": cols(["scale_0", "scale_1", "scale_2"]),
        "quats": cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
        "opacities": np.asarray(vertex["opacity"], dtype=np.float32),
        "sh0": cols(["f_dc_0", "f_dc_1", "f_dc_2"]).reshape(n, 1, 3),
        "shN": np.ascontiguousarray(shN, dtype=np.float32),
    }
    bad = [k for k, v in out.items() if not np.all(np.isfinite(v))]
    if bad:
        raise SplatError(f"{path} has NaN or infinite Gaussian parameters ({', '.join(bad)})")
    return out


def write_point_ply(
    path: str | Path, points: np.ndarray, colors: np.ndarray, normals: np.ndarray | None = None
) -> None:
    """Binary little-endian point-cloud PLY: x y z float32, [nx ny nz float32], red green blue uint8.

    points [N, 3] (scene units), colors [N, 3] uint8, normals [N, 3] or None. Readable by open3d, trimesh,
    plyfile and splat viewers.
    """
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    if normals is not None:
        fields += [("nx", "f4"), ("ny", "f4"), ("nz", "f4")]
    fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    v = np.empty(len(points), dtype=fields)
    v["x"], v["y"], v["z"] = (np.asarray(points, np.float32)[:, k] for k in range(3))
    if normals is not None:
        v["nx"], v["ny"], v["nz"] = (np.asarray(normals, np.float32)[:, k] for k in range(3))
    v["red"], v["green"], v["blue"] = (np.asarray(colors, np.uint8)[:, k] for k in range(3))
    PlyData([PlyElement.describe(v, "vertex")], text=False, byte_order="<").write(str(path))


def read_point_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(points [N, 3] float32, colors [N, 3] uint8 (grey 128 when absent), normals [N, 3] float32 or None).

    Raises SplatError for a missing or malformed file, a cloud without points, or non-finite coordinates.
    """
    path = Path(path)
    if not path.exists():
        raise SplatError(f"point cloud {path} not found")
    try:
        v = PlyData.read(str(path))["vertex"].data
    except Exception as e:  # plyfile raises several unrelated types on a malformed file
        raise SplatError(f"{path} is not a readable PLY point cloud ({e})") from e
    names = set(v.dtype.names or ())
    if not {"x", "y", "z"} <= names:
        raise SplatError(f"{path} has no x/y/z vertex properties")
    pts = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32)
    if len(pts) == 0:
        raise SplatError(f"{path} has no points")
    if not np.isfinite(pts).all():
        raise SplatError(f"{path} contains NaN or infinite point coordinates")
    if {"red", "green", "blue"} <= names:
        cols = np.stack([v["red"], v["green"], v["blue"]], axis=1)
        if cols.dtype.kind == "f":  # float colours in [0, 1] (some writers)
            cols = np.clip(np.round(cols * 255.0), 0, 255)
        cols = cols.astype(np.uint8)
    else:
        cols = np.full((len(pts), 3), 128, np.uint8)
    nrm = np.stack([v["nx"], v["ny"], v["nz"]], axis=1).astype(np.float32) if {"nx", "ny", "nz"} <= names else None
    return pts, cols, nrm
