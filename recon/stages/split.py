"""Stage `split`: train / test / depth-prior frames -> RUN/split.json (recon.artifacts.Split).

Test views are never used for training, depth alignment or fusion; `prior` (the frames the depth prior is
computed on) equals `train` unless the run asked for `--prior-frames non-test` (every registered frame except
the test views: what a video depth model sees of a clip whose test frames are held out) or `--prior-frames all`
/ `--prior-from-all-frames`. Whatever the prior set, alignment fits on its non-test frames only, and fusion and
the depth loss use the training views' depth only.

`protocol: llff` (`--split-protocol llff`) is the sparse-view benchmark protocol of LLFF papers (RegNeRF, FSGS,
DNGaussian): test views are every 8th view (0, 8, 16, ...); the `train_views` N training views are
np.round(np.linspace(0, len(rest) - 1, N)) over the remaining views (all of them when N = 0); the depth prior sees
the training views only. Views are the input images in sorted order, all of them posed and at the input size:
the stage refuses frames that were resized, sampled or de-duplicated (`LLFF_FRAMES` says how the frames stage
must run; the CLI sets it), and the train stage trains and evaluates at the frame size.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from depth.checks import choice, flag, number, path_exists
from recon.artifacts import CameraSet, FramesIndex, RunPaths, Split
from recon.errors import ReconError
from recon.stages import StageContext

PRIOR_MODES = ("train", "non-test", "all")
PROTOCOLS = ("default", "llff")
LLFF_TEST_EVERY = 8
"""The LLFF protocol holds out views 0, 8, 16, ..."""
LLFF_FRAMES: dict[str, Any] = {"max_size": 0, "max_frames": 0, "stride": 1, "target_fps": 0.0, "dedup": False}
"""frames-stage settings of the llff protocol: every input image, at its own size."""
LLFF_TRAIN: dict[str, Any] = {"max_size": 0, "downscale": 1.0}
"""train-stage settings of the llff protocol: train and evaluate at the frame (input) size."""


def protocol_settings(cfg: Any) -> Any:
    """The RunConfig `cfg` with the settings split.protocol llff needs (every input image at its size, LLFF_FRAMES;
    training and evaluation at that size, LLFF_TRAIN; SfM points from the training views only); other protocols
    unchanged. The CLI and recon.api both apply it."""
    if cfg.split.protocol != "llff":
        return cfg
    return dataclasses.replace(
        cfg,
        frames=dataclasses.replace(cfg.frames, **LLFF_FRAMES),
        poses=dataclasses.replace(cfg.poses, points_llff_train_views=cfg.split.train_views),
        train=dataclasses.replace(cfg.train, **LLFF_TRAIN),
    )


SPARSE_VIEWS = 9
"""A run asking for at most this many training views (split.train_views 1..9: the papers' 3, 6 and 9) is a
sparse-view run and starts from SPARSE_FUSE / SPARSE_TRAIN instead of the preset's values."""
SPARSE_FUSE: dict[str, Any] = {"stride": 1, "voxel_divisions": 1024}
"""fuse-stage settings of a sparse-view run: every pixel of the few training views back-projected, voxels half the
default edge, so the initial Gaussians hold the prior at the image's resolution (benchmarks/README.md, "sparse-view
settings")."""
SPARSE_TRAIN: dict[str, Any] = {"max_init_points": 0, "opacity_decay": 0.995, "binocular_weight": 1.0}
"""train-stage settings of a sparse-view run: every fused point kept, and Binocular3DGS's two regularisers."""
SPARSE_TRAIN_BY_PROTOCOL: dict[str, dict[str, Any]] = {"llff": {"opacity_decay": 0.985}}
"""train-stage settings a sparse-view run of a split protocol takes over SPARSE_TRAIN, as the papers set theirs
per dataset. LLFF: a stronger opacity decay prunes more of the Gaussians a single view made; on fern (the one LLFF
scene here; 3 views, 600 iterations, 3 seeds) 0.985 gives 22.59 dB against 0.995's 22.28 (seed 0), while on
7-Scenes (the default protocol) 0.99 already loses 0.25-0.95 dB (benchmarks/README.md, "sparse-view settings")."""
SPARSE_MIN_GAUSSIANS = 200_000
"""A sparse-view run's train.max_gaussians is at least this (the CPU preset's 40k would stop densification of a
dense init before it starts)."""


def sparse_view(cfg: Any) -> bool:
    """Whether RunConfig `cfg` asks for a sparse-view run (split.train_views in 1..SPARSE_VIEWS)."""
    return 0 < cfg.split.train_views <= SPARSE_VIEWS


def sparse_train_settings(max_gaussians: int, protocol: str = "default") -> dict[str, Any]:
    """The train fields a sparse-view run of split protocol `protocol` starts from, given the preset's
    max_gaussians: SPARSE_TRAIN with the protocol's SPARSE_TRAIN_BY_PROTOCOL over it, and max_gaussians raised to
    SPARSE_MIN_GAUSSIANS."""
    train = dict(SPARSE_TRAIN, **SPARSE_TRAIN_BY_PROTOCOL.get(protocol, {}))
    return dict(train, max_gaussians=max(max_gaussians, SPARSE_MIN_GAUSSIANS))


def sparse_settings(cfg: Any, protocol: str = "default") -> Any:
    """RunConfig `cfg` (a preset) with the sparse-view settings of split protocol `protocol` (SPARSE_FUSE,
    sparse_train_settings). The CLI and recon.api put them between the preset and the user's config, flags and
    --set, so each of those still overrides them."""
    train = sparse_train_settings(cfg.train.max_gaussians, protocol)
    return dataclasses.replace(
        cfg, fuse=dataclasses.replace(cfg.fuse, **SPARSE_FUSE), train=dataclasses.replace(cfg.train, **train)
    )


@dataclass
class Config:
    test_every: int = 8
    """Hold out every N-th frame as a test view (frame index % N == 0); 0 = no test views."""
    train_views: int = 0
    """Sparse view: keep only N training views, spread evenly over the non-test frames (0 = all)."""
    split_file: Path | None = None
    """JSON with "train" and "test" lists of frame indices or frame file names (overrides the above)."""
    prior_from_all_frames: bool = False
    """Compute the depth prior on every frame (test views included): shorthand for prior_frames="all"."""
    prior_frames: Literal["train", "non-test", "all"] = "train"
    """Frames the depth prior is computed on: the training views, every frame but the test views, or all."""
    protocol: Literal["default", "llff"] = "default"
    """default: test_every / train_views as above; llff: the LLFF sparse-view benchmark protocol (module doc)."""

    def validate(self) -> Config:
        """ReconError unless every field is in range (see the field docs)."""
        number(self.test_every, "split.test_every", ReconError, lo=0, integer=True, note="0 = no test views")
        if self.test_every == 1:
            raise ReconError("split.test_every must be 0 (no test views) or >= 2; 1 would hold out every frame")
        number(self.train_views, "split.train_views", ReconError, lo=0, integer=True, note="0 = all")
        if self.split_file is not None and not path_exists(self.split_file, is_file=True):
            raise ReconError(f"split file {self.split_file} not found")
        flag(self.prior_from_all_frames, "split.prior_from_all_frames", ReconError)
        choice(self.prior_frames, "split.prior_frames", ReconError, PRIOR_MODES)
        choice(self.protocol, "split.protocol", ReconError, PROTOCOLS)
        if self.protocol == "llff":
            self._validate_llff()
        return self

    def _validate_llff(self) -> None:
        """The llff protocol fixes the test views and the prior frames: settings that contradict it are errors."""
        if self.split_file is not None:
            raise ReconError("split.protocol llff chooses the views itself; it cannot be combined with a split file")
        if self.test_every != LLFF_TEST_EVERY:
            raise ReconError(
                f"split.protocol llff holds out every {LLFF_TEST_EVERY}th view; split.test_every must be "
                f"{LLFF_TEST_EVERY}, got {self.test_every}"
            )
        if self.prior_frames != "train" or self.prior_from_all_frames:
            raise ReconError(
                "split.protocol llff computes the depth prior on the training views only; prior_frames must be train"
            )


def evenly_spaced(candidates: list[int], n: int) -> list[int]:
    """Pick n items of `candidates` spread evenly (first and last included when n >= 2)."""
    if n >= len(candidates):
        return list(candidates)
    if n <= 0:
        return []
    if n == 1:
        return [candidates[len(candidates) // 2]]
    pos = np.round(np.linspace(0, len(candidates) - 1, n)).astype(int)
    return [candidates[p] for p in pos]


def llff_split(num_frames: int, train_views: int) -> tuple[list[int], list[int]]:
    """(train, test) of the LLFF protocol for `num_frames` views: test = every 8th view; train = `train_views`
    views at np.round(np.linspace(0, len(rest) - 1, N)) of the rest (the rest when N = 0)."""
    test = list(range(0, num_frames, LLFF_TEST_EVERY))
    rest = [i for i in range(num_frames) if i % LLFF_TEST_EVERY]
    if train_views > len(rest):
        raise ReconError(
            f"--train-views {train_views}: the llff protocol leaves {len(rest)} of {num_frames} views for training"
        )
    if train_views == 0:
        return rest, test
    pos = np.round(np.linspace(0, len(rest) - 1, train_views)).astype(int)
    return [rest[p] for p in pos], test


def _frame_names(files: list[str], aliases: list[list[str]] | None) -> dict[str, int]:
    """Every name a split file may use for frame i: run file path, name, stem, and its aliases' name and stem."""
    names = {Path(f).stem: i for i, f in enumerate(files)}
    names.update({Path(f).name: i for i, f in enumerate(files)})
    names.update({f: i for i, f in enumerate(files)})
    for i, al in enumerate(aliases or []):
        for a in al:
            names.setdefault(a, i)
            names.setdefault(Path(a).name, i)
            names.setdefault(Path(a).stem, i)
    return names


def read_split_file(
    path: Path, num_frames: int, files: list[str], aliases: list[list[str]] | None = None
) -> tuple[list[int], list[int]]:
    """A user's split file (JSON with "train" and "test" lists of frame indices or names) -> (train, test)."""
    if not path.exists():
        raise ReconError(f"split file {path} not found")
    try:
        d = json.loads(path.read_text())
        train_raw, test_raw = d["train"], d["test"]
    except (ValueError, KeyError, TypeError) as e:
        raise ReconError(f"split file {path} must be JSON with 'train' and 'test' lists ({e})") from e
    names = _frame_names(files, aliases)

    def resolve(items: Any, key: str) -> list[int]:
        if not isinstance(items, list):
            raise ReconError(f"split file {path}: {key!r} must be a list of frame indices or names")
        out: dict[int, Any] = {}
        for it in items:
            if isinstance(it, int) and not isinstance(it, bool):
                if not 0 <= it < num_frames:
                    raise ReconError(f"split file {path} names frame {it}, but the run has {num_frames} frames")
                i = it
            elif isinstance(it, str) and (it in names or Path(it).stem in names):
                i = names[it] if it in names else names[Path(it).stem]
            else:
                raise ReconError(f"split file {path} names frame {it!r}, which is not in this run")
            if i in out:
                same = "" if out[i] == it else f" (as {out[i]!r} and {it!r})"
                raise ReconError(f"split file {path}: frame {it!r} is listed twice in {key!r}{same}")
            out[i] = it
        return list(out)

    train, test = resolve(train_raw, "train"), resolve(test_raw, "test")
    if set(train) & set(test):
        raise ReconError(f"split file {path}: frames {sorted(set(train) & set(test))} are in both train and test")
    return train, test


def _prior_frames(train: list[int], test: list[int], reg: np.ndarray, cfg: Config) -> list[int]:
    mode = "all" if cfg.prior_from_all_frames else cfg.prior_frames
    if mode not in PRIOR_MODES:
        raise ReconError(f"prior_frames must be train, non-test or all, not {mode!r}")
    prior = set(train)
    if mode == "all":
        prior |= set(test)
    elif mode == "non-test":
        prior |= {i for i in range(len(reg)) if reg[i]} - set(test)
    return sorted(prior)


def make_split(
    num_frames: int,
    files: list[str],
    cfg: Config,
    registered: np.ndarray | None = None,
    aliases: list[list[str]] | None = None,
) -> Split:
    """The split of `num_frames` frames (unregistered frames are in neither set).

    A split file may name frames by index, by run file name (with or without folder / extension), or by
    any of `aliases[i]` (e.g. the source image name "r_12.png").
    """
    reg = np.ones(num_frames, bool) if registered is None else np.asarray(registered, bool)
    if cfg.protocol == "llff":
        train, test = llff_split(num_frames, cfg.train_views)
        unposed = [i for i in train + test if not reg[i]]
        if unposed:
            raise ReconError(
                f"split.protocol llff: views {sorted(unposed)} have no pose; the protocol needs them (pass --poses)"
            )
        return Split(train=train, test=test, prior=list(train), protocol=f"llff,train_views={cfg.train_views}")
    if cfg.split_file is not None:
        path = Path(cfg.split_file)
        train, test = read_split_file(path, num_frames, files, aliases)
        protocol = f"file:{path.name}"
    else:
        test = [i for i in range(num_frames) if cfg.test_every > 0 and i % cfg.test_every == 0]
        rest = [i for i in range(num_frames) if i not in set(test) and reg[i]]
        if cfg.train_views > len(rest):
            raise ReconError(
                f"--train-views {cfg.train_views}: only {len(rest)} registered frames are left for training "
                f"(of {num_frames}, test views held out); ask for at most {len(rest)}"
            )
        train = evenly_spaced(rest, cfg.train_views) if cfg.train_views > 0 else rest
        protocol = f"test_every={cfg.test_every}" + (f",train_views={len(train)}" if cfg.train_views else "")
    train = [i for i in train if reg[i]]
    test = [i for i in test if reg[i]]
    if not train:
        raise ReconError("the split leaves no registered training views")
    prior = _prior_frames(train, test, reg, cfg)
    return Split(train=sorted(train), test=sorted(test), prior=prior, protocol=protocol)


def _source_names(paths: RunPaths, cams: CameraSet) -> list[list[str]]:
    """Other names a split file may use for each frame: the source image name and the frames/ file."""
    out: list[list[str]] = [[] for _ in range(len(cams))]
    if paths.frames_json.exists():
        by_src = FramesIndex.load(paths.frames_json).by_source_index()
        for i, s in enumerate(cams.source_index):
            f = by_src.get(int(s))
            if f:
                out[i] = [n for n in (f.get("source_name"), f.get("file")) if n]
    return out


def check_llff_frames(paths: RunPaths, cams: CameraSet) -> None:
    """ReconError unless the run's frames are the input images one to one (sorted order) at their own size."""
    from recon.known_poses import source_frame_count

    frames = FramesIndex.load(paths.frames_json)
    count = source_frame_count(frames.source, frames.source_type)
    fix = (
        "the protocol needs every input image as a frame at its size (frames.max_size=0, max_frames=0, stride=1, "
        "dedup=false, as the CLI's --split-protocol llff sets them)"
    )
    if frames.source_type != "images":
        raise ReconError(f"split.protocol llff needs an image folder as input, not a {frames.source_type}")
    if count is not None and (len(cams) != count or [int(i) for i in cams.source_index] != list(range(count))):
        raise ReconError(f"split.protocol llff: the run has {len(cams)} frames of the {count} input images; {fix}")
    if frames.original_size is not None and tuple(frames.size) != tuple(frames.original_size):
        (w, h), (W, H) = frames.size, frames.original_size
        raise ReconError(f"split.protocol llff: frames are {w}x{h} but the input images are {W}x{H}; {fix}")


def check_llff_points(cams: CameraSet, train: list[int], train_views: int) -> None:
    """With known poses, the llff protocol's SfM points must come from the training views only (the SfM init and
    the depth alignment use them): ReconError when the poses stage triangulated them from other views."""
    if not str(cams.sfm.get("mapper", "")).startswith("known"):
        return
    used = cams.sfm.get("points_from")
    if used is None or sorted(used) != sorted(train):
        raise ReconError(
            f"split.protocol llff: the SfM points were triangulated from views {used}, not the training views "
            f"{train}; re-run the poses stage with poses.points_llff_train_views={train_views} "
            "(--split-protocol llff sets it)"
        )


def run(ctx: StageContext, cfg: Config) -> dict[str, Any]:
    cams = CameraSet.load(ctx.paths.cameras_json)
    if cfg.protocol == "llff":
        check_llff_frames(ctx.paths, cams)
    split = make_split(len(cams), cams.files, cfg, cams.registered, aliases=_source_names(ctx.paths, cams))
    if cfg.protocol == "llff":
        check_llff_points(cams, split.train, cfg.train_views)
    split.validate(len(cams), cams.registered).save(ctx.paths.split_json)
    return {
        "train views": len(split.train),
        "test views": len(split.test),
        "prior frames": len(split.prior),
        "protocol": split.protocol,
    }
