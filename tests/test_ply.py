"""3DGS PLY export: exact round trip, readable by plyfile and open3d, loads back into the trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splat.errors import SplatError
from splat.gaussians import gaussians_from_points, knn_scales, to_numpy, to_parameters
from splat.ply import property_names, read_gaussian_ply, write_gaussian_ply


def _random_gaussians(n: int, sh_degree: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    k = (sh_degree + 1) ** 2
    return {
        "means": rng.normal(size=(n, 3)).astype(np.float32),
        "scales": rng.normal(-3, 1, size=(n, 3)).astype(np.float32),
        "quats": rng.normal(size=(n, 4)).astype(np.float32),
        "opacities": rng.normal(size=n).astype(np.float32),
        "sh0": rng.normal(size=(n, 1, 3)).astype(np.float32),
        "shN": rng.normal(size=(n, k - 1, 3)).astype(np.float32),
    }


@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_round_trip_is_exact(tmp_path, sh_degree):
    g = _random_gaussians(257, sh_degree)
    path = tmp_path / "gaussians.ply"
    write_gaussian_ply(path, g)
    back = read_gaussian_ply(path)
    assert set(back) == set(g)
    for key in g:
        assert back[key].shape == g[key].shape, key
        np.testing.assert_array_equal(back[key], g[key], err_msg=key)
    assert not list(tmp_path.glob(".*tmp*")), "atomic write left a temporary file"


def test_standard_3dgs_layout_plyfile_and_open3d(tmp_path):
    import open3d as o3d
    from plyfile import PlyData

    g = _random_gaussians(100, 3, seed=1)
    path = tmp_path / "g.ply"
    write_gaussian_ply(path, g)
    ply = PlyData.read(str(path))
    assert not ply.text and ply.byte_order == "<"
    names = [p.name for p in ply["vertex"].properties]
    assert names == property_names(15)
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[-8:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert len([n for n in names if n.startswith("f_rest_")]) == 45
    v = ply["vertex"].data
    # f_rest is channel-major as in 3DGS: f_rest_0..14 are the red coefficients of bands 1..3.
    np.testing.assert_array_equal(v["f_rest_0"], g["shN"][:, 0, 0])
    np.testing.assert_array_equal(v["f_rest_15"], g["shN"][:, 0, 1])
    np.testing.assert_array_equal(v["f_rest_14"], g["shN"][:, 14, 0])
    # Stored pre-activation: opacity is a logit, scales are log sigma.
    np.testing.assert_array_equal(v["opacity"], g["opacities"])
    np.testing.assert_array_equal(v["scale_2"], g["scales"][:, 2])
    pcd = o3d.io.read_point_cloud(str(path))
    np.testing.assert_allclose(np.asarray(pcd.points), g["means"], rtol=0, atol=1e-6)


def test_loads_back_into_trainer_parameters(tmp_path):
    rng = np.random.default_rng(2)
    xyz = rng.uniform(-1, 1, size=(300, 3)).astype(np.float32)
    rgb = rng.integers(0, 255, size=(300, 3), dtype=np.uint8)
    g = gaussians_from_points(xyz, rgb, sh_degree=2, init_opacity=0.1)
    params = to_parameters(g, "cpu")
    with torch.no_grad():
        params["means"].add_(0.01)
    write_gaussian_ply(tmp_path / "g.ply", to_numpy(params))
    params2 = to_parameters(read_gaussian_ply(tmp_path / "g.ply"), "cpu")
    for k in params:
        assert torch.equal(params[k].detach(), params2[k].detach()), k
        assert params2[k].requires_grad
    # The initial parameters are the documented ones: logit(0.1) opacity, log kNN scale, colour via SH0.
    np.testing.assert_allclose(1 / (1 + np.exp(-g["opacities"])), 0.1, rtol=1e-5)
    np.testing.assert_allclose(np.exp(g["scales"][:, 0]), knn_scales(xyz), rtol=1e-5)
    np.testing.assert_allclose(g["sh0"][:, 0, :] * 0.28209479177387814 + 0.5, rgb / 255.0, atol=1e-5)


def test_knn_scales_match_brute_force():
    rng = np.random.default_rng(3)
    xyz = rng.normal(size=(60, 3))
    d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    want = np.sort(d, axis=1)[:, :3].mean(1)
    np.testing.assert_allclose(knn_scales(xyz), want, rtol=1e-5)


def test_bad_ply_raises_recon_error(tmp_path):
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.random.rand(10, 3)))
    o3d.io.write_point_cloud(str(tmp_path / "plain.ply"), pcd)
    with pytest.raises(SplatError, match="not a 3D Gaussian Splatting PLY"):
        read_gaussian_ply(tmp_path / "plain.ply")
    (tmp_path / "junk.ply").write_bytes(b"not a ply at all")
    with pytest.raises(SplatError, match="not a readable PLY"):
        read_gaussian_ply(tmp_path / "junk.ply")
    with pytest.raises(SplatError, match="not found"):
        read_gaussian_ply(tmp_path / "missing.ply")
    bad = _random_gaussians(5, 1)
    bad["quats"] = bad["quats"][:, :3]
    with pytest.raises(SplatError, match="quats"):
        write_gaussian_ply(tmp_path / "x.ply", bad)
