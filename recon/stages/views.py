"""Which frames a stage trains on: the one rule the fuse and train stages share."""

from __future__ import annotations

from recon.artifacts import CameraSet, RunPaths, Split
from recon.errors import ReconError


def training_views(paths: RunPaths, cams: CameraSet, split: Split) -> tuple[list[int], list[int]]:
    """(train, test) frame indices of a run, checked against its cameras and frame files.

    Every view of split.json (`Split.validate`): in range, registered (has a pose), train and test disjoint, at
    least one training view; and its frame image exists. Test views are never training views.

    Raises:
        ReconError: a split the run cannot train on.
    """
    split.validate(len(cams), cams.registered)
    for key in ("train", "test"):
        for i in getattr(split, key):
            image = paths.root / cams.files[i]
            if not image.exists():
                raise ReconError(f"split.json names {key} frame {i}, but its image {image} is missing")
    test = set(split.test)
    return [i for i in split.train if i not in test], list(split.test)
