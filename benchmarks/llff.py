"""LLFF sparse-view benchmark on fern: {SfM, random, depth-fused} init x {depth loss off, on} x N views x seeds.

The published protocol (RegNeRF / FSGS / DNGaussian / CoR-GS / DropGaussian): the 20 fern views at 504x378
(`images_8`), the dataset's poses (poses_bounds.npy, `--poses`), test views 0, 8, 16 (every 8th), N training views
by np.linspace over the other 17, training and evaluation at 504x378, PSNR / SSIM (LPIPS when its weights are on
disk). The method sees the N training views only: the SfM points are triangulated from their features with the
given poses (`poses.points_llff_train_views`), the weights-free stereo prior is computed on them
(`depth.backend stereo`, the only prior without downloadable weights here), alignment and fusion use them.

Each N is prepared once with the project's stages (recon.api.run up to fuse, `split.protocol llff`), then every
(init, depth loss, seed) trains on a copy of that run with the train stage (recon.stages.train.run): the same code
path as `recon run ... --split-protocol llff --train-views N`. Rows give mean +- std over the seeds.

    .venv/bin/python benchmarks/llff.py                                  # N = 3 6 9, 3 seeds, 600 iterations
    .venv/bin/python benchmarks/llff.py --views 3 --seeds 0 --iterations 300 --inits depth sfm
    .venv/bin/python benchmarks/llff.py --views 3 --inits depth --set co_reg_weight=1.0 co_prune_every=100  # CoR-GS
    .venv/bin/python benchmarks/llff.py --views 3 --inits sfm --set unpool_every=50  # FSGS's unpooling
    .venv/bin/python benchmarks/llff.py --views 6 --inits depth --json /tmp/n6.json   # resumes from the ledger
    .venv/bin/python benchmarks/llff.py --merge /tmp/n6.json /tmp/n6b.json           # one table of two streams
    .venv/bin/python benchmarks/llff.py --merge benchmarks/results/llff_fern.json   # the measured table

With `--json` every finished row is written to the ledger at once, and the cells it already holds (measured with
the same iterations, backend and `--set`) are skipped: a killed run resumes, and the whole table (18 cells x 3 seeds
= 54 runs, about 8 h on 2 CPU cores at two runs at a time) can be split into streams and sessions, then printed
as one table with `--merge`.

The published figures beside the table average the 8 LLFF scenes at 3 views; fern alone is one of them, so they
are a reference point, not a like-for-like comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from recon import api
from recon.artifacts import RunPaths
from recon.console import set_verbosity
from recon.errors import ReconError
from recon.stages import StageContext

FERN = Path(__file__).resolve().parents[2] / "shared" / "data" / "llff_fern_504x378"
PUBLISHED_3VIEW = {  # PSNR dB, 3 training views, mean of the 8 LLFF scenes (papers' tables)
    "3DGS": 15.52,
    "DNGaussian": 19.12,
    "FSGS": 20.31,
    "CoR-GS": 20.45,
    "DropGaussian": 20.76,
}


def sections(scene: Path, n: int, backend: str) -> dict[str, Any]:
    """The stage overrides of the protocol run (recon.api.run / make_config keyword sections)."""
    return dict(
        poses={"poses": str(scene / "poses_bounds.npy")},
        split={"protocol": "llff", "train_views": n},
        depth={"backend": backend},
    )


def prepare(scene: Path, n: int, out: Path, backend: str) -> tuple[RunPaths, float, str | None]:
    """frames -> poses (given, points from the training views) -> split (llff, N) -> depth -> align -> fuse, once.

    Returns (run, seconds, why the depth prior is missing or None)."""
    run_dir = out / f"n{n}" / "base"
    sections_ = sections(scene, n, backend)
    t0 = time.perf_counter()
    api.run(scene / "images_8", run_dir, until="split", preset="cpu", **sections_)
    why = None
    try:
        api.run(scene / "images_8", run_dir, until="fuse", preset="cpu", **sections_)
    except ReconError as e:  # no depth prior: the depth-init and depth-loss rows are skipped
        why = str(e)
    return RunPaths(run_dir), time.perf_counter() - t0, why


def copy_run(base: RunPaths, dst: Path) -> RunPaths:
    """A copy of the prepared run without any training output."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(base.root, dst, ignore=shutil.ignore_patterns("splat", "metrics.json", "report.html", "sfm_work"))
    return RunPaths(dst)


def train_config(args: argparse.Namespace, init: str, depth_loss: str, seed: int, n: int):
    """The train config `recon run --preset cpu --split-protocol llff --train-views N` uses (504x378, the
    sparse-view settings for N <= 9: recon.stages.split.SPARSE_TRAIN with SPARSE_TRAIN_BY_PROTOCOL["llff"]), with the
    benchmark's settings."""
    over: dict[str, Any] = dict(
        init=init,
        depth_loss=depth_loss,
        iterations=args.iterations,
        seed=seed,
        video_frames=0,
        cpu_threads=args.threads,
    )
    for item in args.set:
        key, _, value = item.partition("=")
        over[key] = json.loads(value)
    return api.make_config("cpu", split={"protocol": "llff", "train_views": n}, train=over).train


def fingerprint(base: RunPaths) -> str:
    """8 hex digits naming a prepared run: the split, the SfM model's points, the aligned depth and the fused init.
    Rows with one fingerprint share their prepare; the ± std over seeds is over training alone only among them
    (COLMAP's triangulation from the training views differs a little between two prepares)."""
    h = hashlib.sha256()
    for path in (base.split_json, base.sfm_dir / "points3D.bin", base.aligned_npz, base.init_ply):
        h.update(path.read_bytes() if path.exists() else b"-")
    return h.hexdigest()[:8]


def train_one(base: RunPaths, args: argparse.Namespace, init: str, dl: str, seed: int, n: int) -> dict | None:
    """Train and evaluate one variant on a copy of `base`; the metrics row, or None when it cannot run."""
    from recon.stages.train import run as run_train

    paths = copy_run(base, base.root.parent / f"{init}_{dl}_s{seed}")
    t0 = time.perf_counter()
    try:
        s = run_train(StageContext(paths), train_config(args, init, dl, seed, n))
    except ReconError as e:
        print(f"  {init}/{dl}/seed {seed}: {e}", flush=True)
        return None
    row = {"init": init, "depth_loss": dl, "seed": seed, "psnr": s["psnr"], "ssim": s["ssim"]}
    row.update(lpips=s.get("lpips"), gaussians=s["num_gaussians"], wall_s=time.perf_counter() - t0)
    row.update(prepare=fingerprint(base), date=time.strftime("%Y-%m-%d"))
    if not args.keep:
        shutil.rmtree(paths.root, ignore_errors=True)
    return row


def cells(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """Every (init, depth loss, seed) asked for, in the order they train."""
    return [(init, dl, seed) for init in args.inits for dl in args.depth_losses for seed in args.seeds]


def bench_views(args: argparse.Namespace, n: int, done: set[tuple], on_row: Callable[[dict], None]) -> None:
    """Prepare N views once, then every (init, depth loss, seed) not in `done` ((views, init, depth loss, seed)
    keys); each finished row goes to `on_row`."""
    todo = [c for c in cells(args) if (n, *c) not in done]
    if not todo:
        print(f"[N={n}] every cell is in {args.json}", flush=True)
        return
    base, prep_s, why = prepare(args.scene, n, args.out, args.depth_backend)
    print(f"[N={n}] prepared in {prep_s:.0f} s" + (f"; no depth prior: {why}" if why else ""), flush=True)
    for init, dl, seed in todo:
        if why and (init == "depth" or dl != "none"):
            continue
        row = train_one(base, args, init, dl, seed, n)
        if row is not None:
            on_row({"views": n, **row})
            print(f"  {init:6s} {dl:10s} seed {seed}: PSNR {row['psnr']:.2f}  SSIM {row['ssim']:.3f}  "
                  f"{row['wall_s']:.0f} s", flush=True)  # fmt: skip


def cell_key(row: dict) -> tuple[int, str, str, int]:
    """(views, init, depth loss, seed): what one ledger row measures; a ledger holds each at most once."""
    return row["views"], row["init"], row["depth_loss"], row["seed"]


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What makes rows comparable: rows measured under other settings never mix in one ledger or table."""
    return dict(
        scene=args.scene.name, iterations=args.iterations, depth_backend=args.depth_backend, set=sorted(args.set)
    )


def load_ledger(path: Path, expected: dict[str, Any]) -> list[dict]:
    """The rows of the ledger at `path` ([] when there is none yet), so that a killed or split-up run resumes;
    SystemExit with one line when it is not a ledger or holds other settings."""
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        got, rows = data["settings"], data["rows"]
        keys = [cell_key(r) for r in rows]
        if any("psnr" not in r for r in rows):
            raise KeyError("psnr")
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"error: {path} is not a benchmarks/llff.py ledger ({type(e).__name__}: {e})") from None
    if got != expected:
        raise SystemExit(f"error: {path} holds rows measured with {got}, not {expected}; give another --json")
    if len(set(keys)) != len(rows):
        raise SystemExit(f"error: {path} holds one (views, init, depth loss, seed) twice")
    return rows


@contextlib.contextmanager
def ledger_lock(path: Path | None) -> Iterator[None]:
    """One writer per ledger: an OS lock on LEDGER.lock for the whole run (released however the process ends), so two
    runs given one --json cannot overwrite each other's rows; the second fails at once with one line. Written with
    fcntl as recon.lock does for run directories (whose lock is per folder, not per file)."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(
                f"error: {path} is being written by another benchmarks/llff.py; give another --json"
            ) from None
        yield


def save_ledger(path: Path, expected: dict[str, Any], rows: list[dict]) -> None:
    """Rows and their summary, replaced atomically (a kill leaves the previous ledger)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"settings": expected, "rows": rows, "summary": summarise(rows)}, indent=1))
    os.replace(tmp, path)


def table_order(row: dict) -> tuple:
    """N, then SfM / random / depth-fused, then no depth loss first (the order of the table in benchmarks/README)."""
    inits = ("sfm", "random", "depth")
    return row["views"], inits.index(row["init"]), row["depth_loss"] != "none", row["depth_loss"], row["seed"]


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds per (views, init, depth loss)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["views"], r["init"], r["depth_loss"]), []).append(r)
    out = []
    for (n, init, dl), rs in groups.items():
        agg = {
            "views": n,
            "init": init,
            "depth_loss": dl,
            "seeds": len(rs),
            "prepares": len({r.get("prepare") for r in rs}),
        }
        for k in ("psnr", "ssim", "lpips", "wall_s"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            agg[k] = (float(np.mean(vals)), float(np.std(vals))) if vals else None
        out.append(agg)
    return out


def table(summary: list[dict], iterations: int) -> str:
    f = lambda v, p: "-" if v is None else f"{v[0]:.{p}f} ± {v[1]:.{p}f}"  # noqa: E731
    lines = [
        f"fern, LLFF protocol, 504x378, {iterations} iterations (CPU preset otherwise), mean ± std over seeds; "
        "prep: how many prepared runs (poses -> fuse) the seeds trained on",
        "|  N | init   | depth loss | seeds |        PSNR   |        SSIM     |       LPIPS     |    wall s   | prep |",
        "|----|--------|------------|-------|---------------|-----------------|-----------------|-------------|------|",
    ]
    for a in summary:
        lines.append(
            f"| {a['views']:2d} | {a['init']:6s} | {a['depth_loss']:10s} | {a['seeds']:5d} | {f(a['psnr'], 2):>13s} | "
            f"{f(a['ssim'], 3):>15s} | {f(a['lpips'], 3):>15s} | {f(a['wall_s'], 0):>11s} | {a['prepares']:4d} |"
        )
    pub = ", ".join(f"{k} {v:.2f}" for k, v in PUBLISHED_3VIEW.items())
    lines.append(f"published 3-view PSNR, mean of the 8 LLFF scenes (not fern alone): {pub}")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", type=Path, default=FERN, help="LLFF scene folder with images_8/ and poses_bounds.npy")
    ap.add_argument("--views", type=int, nargs="+", default=[3, 6, 9])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--inits", nargs="+", default=["sfm", "random", "depth"], choices=["sfm", "random", "depth"])
    ap.add_argument("--depth-losses", nargs="+", default=["none", "l1-inverse"])
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--depth-backend", default="stereo")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for training (0 = all)")
    ap.add_argument("--set", nargs="*", default=[], help="extra train fields, KEY=JSON (e.g. drop_rate=0.1)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/llff_bench"))
    ap.add_argument("--keep", action="store_true", help="keep every trained variant's run directory")
    ap.add_argument(
        "--json",
        type=Path,
        help="ledger of the per-seed rows and the summary, written after every row; the cells it already holds "
        "(same settings) are not trained again, so a killed run resumes and streams can split a table",
    )
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="print the table of these ledgers (same settings) and train nothing; with --json, write them as one",
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    set_verbosity(1 if args.verbose else 0)
    with ledger_lock(args.json):
        rows = merge(args) if args.merge else measure(args)
    print()
    print(table(summarise(sorted(rows, key=table_order)), args.iterations))


def merge(args: argparse.Namespace) -> list[dict]:
    """The rows of the --merge ledgers, written to --json as one ledger when it is given."""
    rows = [r for path in args.merge for r in load_ledger(path, settings(args))]
    if len({cell_key(r) for r in rows}) != len(rows):
        raise SystemExit("error: the --merge ledgers hold one (views, init, depth loss, seed) more than once")
    if args.json:
        save_ledger(args.json, settings(args), sorted(rows, key=table_order))
    return rows


def measure(args: argparse.Namespace) -> list[dict]:
    """Train every cell the --json ledger does not hold yet, writing the ledger after each; all its rows."""
    expected = settings(args)
    rows = load_ledger(args.json, expected) if args.json else []
    done = {cell_key(r) for r in rows}

    def on_row(row: dict) -> None:
        rows.append(row)
        if args.json:
            save_ledger(args.json, expected, rows)

    for n in args.views:
        bench_views(args, n, done, on_row)
    return rows


if __name__ == "__main__":
    main()
