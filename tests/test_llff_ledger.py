"""benchmarks/llff.py's ledger: rows written as they finish, a killed run resumes, other settings never mix.

Training is replaced by a stand-in that records which cells it was asked for (the train stage itself is tested in
test_llff.py / test_train.py); what is tested here is which cells run and what the ledger holds afterwards."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import benchmarks.llff as llff

REPO = Path(__file__).resolve().parents[1]


class FakeTraining:
    def __init__(self, monkeypatch, die_at: int | None = None):
        self.trained: list[tuple] = []
        self.prepared: list[int] = []
        self.die_at = die_at
        monkeypatch.setattr(llff, "prepare", self.prepare)
        monkeypatch.setattr(llff, "train_one", self.train_one)

    def prepare(self, scene, n, out, backend):
        self.prepared.append(n)
        return None, 1.0, None

    def train_one(self, base, args, init, dl, seed, n):
        if self.die_at is not None and len(self.trained) == self.die_at:
            raise KeyboardInterrupt  # the run is killed while this cell trains
        self.trained.append((n, init, dl, seed))
        return {"init": init, "depth_loss": dl, "seed": seed, "psnr": 20.0 + seed, "ssim": 0.5, "lpips": None,
                "gaussians": 10, "wall_s": 1.0}  # fmt: skip


def run_main(monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", ["llff.py", *argv])
    llff.main()


def test_a_killed_run_resumes_from_its_ledger(monkeypatch, tmp_path: Path):
    ledger = tmp_path / "n3.json"
    argv = ("--views", "3", "--seeds", "0", "1", "2", "--inits", "sfm", "--depth-losses", "none", "l1-inverse")
    killed = FakeTraining(monkeypatch, die_at=4)
    with pytest.raises(KeyboardInterrupt):
        run_main(monkeypatch, *argv, "--json", str(ledger), "--out", str(tmp_path))
    rows = json.loads(ledger.read_text())["rows"]
    assert [(r["views"], r["init"], r["depth_loss"], r["seed"]) for r in rows] == killed.trained  # the 4 finished
    assert not list(tmp_path.glob("*.tmp"))

    resumed = FakeTraining(monkeypatch)
    run_main(monkeypatch, *argv, "--json", str(ledger), "--out", str(tmp_path))
    assert resumed.trained == [(3, "sfm", "l1-inverse", 1), (3, "sfm", "l1-inverse", 2)]
    data = json.loads(ledger.read_text())
    assert len(data["rows"]) == 6
    assert [(s["depth_loss"], s["seeds"], s["psnr"][0]) for s in data["summary"]] == [
        ("none", 3, 21.0),
        ("l1-inverse", 3, 21.0),
    ]

    again = FakeTraining(monkeypatch)
    run_main(monkeypatch, *argv, "--json", str(ledger), "--out", str(tmp_path))
    assert again.trained == [] and again.prepared == []  # nothing left: not even prepared


def test_other_settings_and_broken_ledgers_are_one_line_errors(monkeypatch, tmp_path: Path, capsys):
    ledger = tmp_path / "l.json"
    FakeTraining(monkeypatch)
    run_main(monkeypatch, "--views", "3", "--seeds", "0", "--inits", "sfm", "--depth-losses", "none", "--json",
             str(ledger), "--out", str(tmp_path))  # fmt: skip
    fake = FakeTraining(monkeypatch)
    with pytest.raises(SystemExit) as e:
        run_main(monkeypatch, "--views", "3", "--iterations", "300", "--json", str(ledger), "--out", str(tmp_path))
    assert "'iterations': 600" in str(e.value) and "\n" not in str(e.value) and fake.trained == []
    with pytest.raises(SystemExit) as e:
        run_main(monkeypatch, "--merge", str(ledger), str(ledger))
    assert "more than once" in str(e.value)
    ledger.write_text('{"rows": []}')
    with pytest.raises(SystemExit) as e:
        run_main(monkeypatch, "--views", "3", "--json", str(ledger), "--out", str(tmp_path))
    assert "not a benchmarks/llff.py ledger" in str(e.value) and fake.trained == []


def test_a_second_writer_of_one_ledger_is_refused(monkeypatch, tmp_path: Path):
    """Two runs given one --json would each rewrite the ledger from their own rows; the second one stops at once."""
    import fcntl

    ledger = tmp_path / "l.json"
    fake = FakeTraining(monkeypatch)
    with open(tmp_path / "l.json.lock", "w") as held:  # the first writer, still running
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SystemExit) as e:
            run_main(monkeypatch, "--views", "3", "--seeds", "0", "--json", str(ledger), "--out", str(tmp_path))
    assert "being written by another" in str(e.value) and fake.trained == [] and fake.prepared == []
    assert not ledger.exists()
    run_main(monkeypatch, "--views", "3", "--seeds", "0", "--inits", "sfm", "--depth-losses", "none", "--json",
             str(ledger), "--out", str(tmp_path))  # fmt: skip
    assert fake.trained == [(3, "sfm", "none", 0)]  # the lock went with its holder


def test_the_committed_ledger_holds_the_readme_table(monkeypatch, capsys):
    """benchmarks/results/llff_fern.json is the table benchmarks/README.md quotes: every row with more than one seed
    appears in the README's 600-iteration tables, on a line of its N, with the ledger's "mean ± std" PSNR."""
    run_main(monkeypatch, "--merge", str(REPO / "benchmarks" / "results" / "llff_fern.json"))
    readme = (REPO / "benchmarks" / "README.md").read_text()
    start = readme.index("## llff.py")
    tables = readme[start : readme.index("--iterations 300 --inits sfm depth --depth-losses none", start)]
    lines = [line for line in tables.splitlines() if line.startswith("| ")]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in capsys.readouterr().out.splitlines()]
    rows = [r for r in rows if r and r[0].isdigit()]
    assert {r[0] for r in rows} == {"3", "6", "9"}
    for r in rows:
        if int(r[3]) > 1:
            of_n = [ln for ln in lines if ln.startswith(f"| {r[0]} |") or (r[0] == "3" and ln[2:4] not in ("6 ", "9 "))]
            assert any(f" {r[4]} " in ln or f"**{r[4]}**" in ln for ln in of_n), r
