"""Train / test / depth-prior split of a run's frames.

RUN/split.json: {"protocol": str, "train": [i...], "test": [i...], "prior": [i...]} with indices into
the frame order of RUN/cameras.json. Test views are never used for training, depth alignment or
fusion; `prior` (the frames the depth prior is computed on) equals `train` unless the run asked for
`--prior-frames non-test` (every registered frame except the test views: what a video depth model sees
of a clip whose test frames are held out) or `--prior-frames all` / `--prior-from-all-frames`.
Whatever the prior set, alignment fits on its non-test frames only, and fusion and the depth loss
use the training views' depth only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from recon.atomic import write_json
from recon.errors import ReconError


@dataclass
class SplitConfig:
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


def make_split(
    num_frames: int,
    files: list[str],
    cfg: SplitConfig,
    registered: np.ndarray | None = None,
    aliases: list[list[str]] | None = None,
) -> dict[str, Any]:
    """Build the split dict for `num_frames` frames (unregistered frames are in neither set).

    A split file may name frames by index, by run file name (with or without folder / extension), or by
    any of `aliases[i]` (e.g. the source image name "r_12.png").
    """
    reg = np.ones(num_frames, bool) if registered is None else np.asarray(registered, bool)
    if cfg.split_file is not None:
        path = Path(cfg.split_file)
        if not path.exists():
            raise ReconError(f"split file {path} not found")
        try:
            d = json.loads(path.read_text())
            train_raw, test_raw = d["train"], d["test"]
        except (ValueError, KeyError, TypeError) as e:
            raise ReconError(f"split file {path} must be JSON with 'train' and 'test' lists ({e})") from e
        names = {Path(f).stem: i for i, f in enumerate(files)}
        names.update({Path(f).name: i for i, f in enumerate(files)})
        names.update({f: i for i, f in enumerate(files)})
        for i, al in enumerate(aliases or []):
            for a in al:
                names.setdefault(a, i)
                names.setdefault(Path(a).name, i)
                names.setdefault(Path(a).stem, i)

        def resolve(items: list) -> list[int]:
            out = []
            for it in items:
                if isinstance(it, int) and not isinstance(it, bool):
                    if not 0 <= it < num_frames:
                        raise ReconError(f"split file {path} names frame {it}, but the run has {num_frames} frames")
                    out.append(it)
                elif isinstance(it, str) and (it in names or Path(it).stem in names):
                    out.append(names.get(it, names.get(Path(it).stem)))
                else:
                    raise ReconError(f"split file {path} names frame {it!r}, which is not in this run")
            return out

        train, test = resolve(train_raw), resolve(test_raw)
        if set(train) & set(test):
            raise ReconError(f"split file {path}: frames {sorted(set(train) & set(test))} are in both train and test")
        protocol = f"file:{path.name}"
    else:
        test = [i for i in range(num_frames) if cfg.test_every > 0 and i % cfg.test_every == 0]
        rest = [i for i in range(num_frames) if i not in set(test)]
        train = evenly_spaced(rest, cfg.train_views) if cfg.train_views > 0 else rest
        protocol = f"test_every={cfg.test_every}" + (f",train_views={cfg.train_views}" if cfg.train_views else "")
    train = [i for i in train if reg[i]]
    test = [i for i in test if reg[i]]
    if not train:
        raise ReconError("the split leaves no registered training views")
    mode = "all" if cfg.prior_from_all_frames else cfg.prior_frames
    if mode not in ("train", "non-test", "all"):
        raise ReconError(f"prior_frames must be train, non-test or all, not {mode!r}")
    prior = set(train)
    if mode == "all":
        prior |= set(test)
    elif mode == "non-test":
        prior |= {i for i in range(num_frames) if reg[i]} - set(test)
    prior = sorted(prior)
    return {"protocol": protocol, "train": sorted(train), "test": sorted(test), "prior": prior}


def save_split(path: str | Path, split: dict[str, Any]) -> None:
    write_json(path, split)


def load_split(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ReconError(f"{path} not found: the run has no train/test split yet")
    return json.loads(path.read_text())
