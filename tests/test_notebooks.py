"""The notebooks run top to bottom (nbclient) at a small size set through their "parameters" cell.

As papermill does, a cell with the test's values is inserted after the cell tagged "parameters".
Notebooks are stored without outputs; each must leave real results behind (checked per notebook).
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

SMALL = {
    "quickstart": {
        "MAX_FRAMES": 10,
        "MAX_SIZE": 160,
        "ITERATIONS": 5,
        "MAX_INIT_POINTS": 2000,
        "VIDEO_FRAMES": 0,
        "DEPTH_BACKEND": "stereo",
        "STEREO_PLANES": 16,
        "TEST_EVERY": 5,
    },
    "sparse_view": {
        "VIEWS": [9],
        "NUM_TEST": 13,
        "INITS": ["depth", "random"],
        "DEPTH_LOSSES": ["l1-inverse"],
        "ITERATIONS": 5,
        "MAX_INIT_POINTS": 2000,
        "SIZE": 200,
        "DEPTH_BACKEND": "stereo",
        "STEREO_PLANES": 16,
    },
    "depth_alignment": {"MAX_SIZE": 160, "DEPTH_BACKEND": "stereo", "STEREO_PLANES": 16},
}


def inject_parameters(book: nbformat.NotebookNode, values: dict) -> None:
    """Insert a cell assigning `values` right after the cell tagged "parameters" (papermill's convention)."""
    idx = next(i for i, c in enumerate(book.cells) if "parameters" in c.metadata.get("tags", []))
    src = "\n".join(f"{k} = {v!r}" for k, v in values.items())
    cell = nbformat.v4.new_code_cell(src)
    cell.metadata["tags"] = ["injected-parameters"]
    book.cells.insert(idx + 1, cell)


def execute(name: str, tmp_path: Path) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    inject_parameters(book, {**SMALL[name], "OUT": str(tmp_path / name)})
    NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return book


def outputs_text(book: nbformat.NotebookNode) -> str:
    parts = []
    for cell in book.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(json.dumps(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def count_images(book: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for cell in book.cells for out in cell.get("outputs", []))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_notebook_is_stored_clean_with_a_parameters_cell(name: str):
    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(book)
    tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    for key in SMALL[name]:
        assert f"{key} =" in tagged[0].source
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in book.cells if c.cell_type == "code")


def test_quickstart_runs(tmp_path: Path):
    book = execute("quickstart", tmp_path)
    run = tmp_path / "quickstart"
    assert (run / "report.html").exists() and (run / "transforms.json").exists()
    assert (run / "splat" / "gaussians.ply").exists()
    assert count_images(book) >= 4  # frames+depth, cameras, point cloud, renders


def test_sparse_view_runs(tmp_path: Path):
    book = execute("sparse_view", tmp_path)
    text = outputs_text(book)
    assert "'init': 'depth'" in text and "'init': 'random'" in text
    metrics = json.loads((tmp_path / "sparse_view" / "N9" / "run" / "metrics.json").read_text())
    assert metrics["num_train_views"] == 9 and metrics["num_test_views"] == 13
    assert count_images(book) >= 2  # PSNR vs N, renders beside GT


def test_depth_alignment_runs(tmp_path: Path):
    book = execute("depth_alignment", tmp_path)
    text = outputs_text(book)
    assert "median |relative residual|" in text and "AbsRel" in text
    assert count_images(book) >= 2  # scatter with fits, residual maps
