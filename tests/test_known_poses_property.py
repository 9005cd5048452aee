"""Property: any transforms.json given to --poses is either usable cameras or ONE ReconError line.

Random files (hypothesis) of random structure: missing keys, wrong types, NaN / inf / huge / negative numbers,
matrices of wrong shapes, rotations valid and invalid, random frame counts, and bytes that are not JSON, fed
to `load_pose_source` (what the pose stage calls before anything else; no SfM here). The outcome must be a
PoseSource whose every camera and pose passes the checks the stage relies on, or a one-line ReconError;
never another exception.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from recon.errors import ReconError
from recon.known_poses import MAX_IMAGE_SIZE, ROTATION_TOL, PoseSource, load_pose_source

NASTY_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, -1.0, 1e-300, 1e300, -1e300, math.pi, 2 * math.pi, 0.5, 400.0, 1e6]),
    st.floats(min_value=-2000, max_value=2000),
)
NUMBERS = st.one_of(NASTY_FLOATS, st.integers(min_value=-(10**400), max_value=10**400), st.integers(-5, 5000))
JUNK = st.one_of(st.none(), st.booleans(), st.text(max_size=8), st.lists(st.integers(), max_size=3), st.just({}))
VALUES = st.one_of(NUMBERS, NUMBERS, JUNK)


@st.composite
def rotations(draw) -> np.ndarray:
    """A proper rotation (from a random quaternion), sometimes spoiled: scaled, reflected, sheared or zero."""
    q = np.array(draw(st.lists(st.floats(-1, 1), min_size=4, max_size=4)), dtype=np.float64)
    n = np.linalg.norm(q)
    q = np.array([1.0, 0, 0, 0]) if n < 1e-3 else q / n
    w, x, y, z = q
    R = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    spoil = draw(st.sampled_from(["none", "none", "none", "scale", "reflect", "shear", "zero", "tiny"]))
    if spoil == "scale":
        R = R * draw(st.floats(0.5, 2.0))
    elif spoil == "reflect":
        R = R @ np.diag([1.0, 1.0, -1.0])
    elif spoil == "shear":
        R = R + draw(st.floats(-0.1, 0.1)) * np.eye(3)[[1, 2, 0]]
    elif spoil == "zero":
        R = np.zeros((3, 3))
    elif spoil == "tiny":  # within tolerance: must be accepted
        R = R + 1e-5 * np.eye(3)[[1, 2, 0]]
    return R


@st.composite
def matrices(draw):
    kind = draw(st.sampled_from(["rigid", "rigid", "rigid", "rigid34", "random", "shape", "junk", "nan"]))
    if kind in ("rigid", "rigid34", "nan"):
        M = np.eye(4)
        M[:3, :3] = draw(rotations())
        M[:3, 3] = draw(st.lists(st.floats(-100, 100), min_size=3, max_size=3))
        if kind == "nan":
            M[draw(st.integers(0, 3)), draw(st.integers(0, 3))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        return (M[:3] if kind == "rigid34" else M).tolist()
    if kind == "random":
        return [[draw(NUMBERS) for _ in range(4)] for _ in range(4)]
    if kind == "shape":
        r, c = draw(st.integers(0, 5)), draw(st.integers(0, 5))
        return [[draw(NASTY_FLOATS) for _ in range(c)] for _ in range(r)]
    return draw(st.one_of(JUNK, st.lists(st.lists(VALUES, max_size=4), max_size=4)))


INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y", "k1", "k2", "p1", "k3")


@st.composite
def intrinsics(draw, sane: bool) -> dict:
    """Intrinsic keys: sane ones (a consistent camera) or any subset with nasty values."""
    if sane:
        w, h = draw(st.integers(8, 2000)), draw(st.integers(8, 2000))
        d = {"w": w, "h": h, "fl_x": draw(st.floats(1, 5000)), "cx": w / 2, "cy": h / 2}
        if draw(st.booleans()):
            d["k1"] = draw(st.floats(-0.3, 0.3))
        return d
    keys = draw(st.lists(st.sampled_from(INTRINSIC_KEYS + ("camera_model",)), max_size=5, unique=True))
    return {
        k: draw(VALUES) if k != "camera_model" else draw(st.one_of(JUNK, st.sampled_from(["OPENCV_FISHEYE"])))
        for k in keys
    }


@st.composite
def good_frame(draw, i: int) -> dict:
    """A frame a real file could hold: a unique name and a rigid pose (rotation exact or within tolerance)."""
    M = np.eye(4)
    M[:3, :3] = draw(rotations())
    M[:3, 3] = draw(st.lists(st.floats(-100, 100), min_size=3, max_size=3))
    return {"file_path": f"images/{i:04d}.png", "transform_matrix": M.tolist()}


@st.composite
def frames(draw, n: int, good: bool) -> list:
    if good:
        return [draw(good_frame(i)) for i in range(n)]
    out = []
    for i in range(n):
        if draw(st.integers(0, 20)) == 0:
            out.append(draw(JUNK))
            continue
        fr: dict = {}
        if draw(st.integers(0, 10)):
            fr["file_path"] = draw(st.one_of(st.just(f"images/{i:04d}.png"), st.just(f"images/{i:04d}.png"), JUNK))
        if draw(st.integers(0, 10)):
            fr["transform_matrix"] = draw(matrices())
        if draw(st.integers(0, 3)) == 0:
            fr.update(draw(intrinsics(sane=False)))
        if draw(st.integers(0, 5)) == 0:
            fr["source_index"] = draw(VALUES)
        out.append(fr)
    return out


@st.composite
def transforms_files(draw) -> bytes:
    shape = draw(st.sampled_from(["good", "good", "good", "nasty", "nasty", "not_object", "bytes"]))
    if shape == "bytes":
        return draw(
            st.one_of(st.binary(max_size=40), st.just(b'{"frames": [{"file_path": "a", '), st.just(b"[" * 5000))
        )
    if shape == "not_object":
        return json.dumps(draw(st.one_of(JUNK, NUMBERS, st.lists(JUNK, max_size=3)))).encode()
    d: dict = draw(intrinsics(sane=shape == "good"))
    if draw(st.integers(0, 10)):
        n = draw(st.integers(0, 6))
        d["frames"] = draw(frames(n, good=shape == "good")) if draw(st.integers(0, 10)) else draw(JUNK)
    return json.dumps(d, allow_nan=True).encode()


def assert_usable(src: PoseSource) -> None:
    """What the pose stage relies on: finite rigid poses, cameras with positive focals and centred principal points."""
    assert len(src.names) == len(src.c2w) == len(src.cameras) >= 1
    assert len(set(src.names)) == len(src.names)
    assert np.isfinite(src.c2w).all()
    for c2w, cam in zip(src.c2w, src.cameras):
        R = c2w[:3, :3]
        assert np.abs(R.T @ R - np.eye(3)).max() < ROTATION_TOL and abs(np.linalg.det(R) - 1) < ROTATION_TOL
        np.testing.assert_allclose(c2w[3], [0, 0, 0, 1], atol=1e-6)
        assert np.isfinite(np.asarray(cam.params)).all()
        assert 0 < cam.width <= MAX_IMAGE_SIZE and 0 < cam.height <= MAX_IMAGE_SIZE
        assert cam.focal_length_x > 0 and cam.focal_length_y > 0
        assert 0 <= cam.principal_point_x <= cam.width and 0 <= cam.principal_point_y <= cam.height


@pytest.fixture(scope="module")
def pose_file(tmp_path_factory):
    return tmp_path_factory.mktemp("poses_property") / "transforms.json"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=transforms_files(), size=st.tuples(st.integers(1, 4000), st.integers(1, 4000)))
def test_any_transforms_json_is_cameras_or_one_error_line(pose_file, content, size):
    pose_file.write_bytes(content)
    try:
        src = load_pose_source(pose_file, size)
    except ReconError as e:
        msg = str(e)
        assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
        assert str(pose_file) in msg
        event("refused")
        return
    event("loaded")
    assert_usable(src)


def test_the_generator_reaches_both_outcomes(pose_file):
    """The property is not vacuous: sane files load, spoiled ones are refused (fixed examples of each)."""
    good = {
        "fl_x": 500.0,
        "w": 640,
        "h": 480,
        "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}],
    }
    pose_file.write_text(json.dumps(good))
    assert_usable(load_pose_source(pose_file, (640, 480)))
    good["frames"][0]["transform_matrix"] = (2 * np.eye(4)).tolist()
    pose_file.write_text(json.dumps(good))
    with pytest.raises(ReconError):
        load_pose_source(pose_file, (640, 480))
