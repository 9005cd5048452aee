"""The layers of ../shared/DESIGN.md, checked on the source: every import arrow points down.

depth/ (floor 1) imports nothing of the project outside depth/; splat/ (floor 2) may import depth/, never recon/;
recon/ (floor 3) is the application. Only the nerfstudio plugin imports nerfstudio; the renderer never imports
the trainer; the libraries never name the run directory's files.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("depth", "splat", "recon")
RENDERER = ("splat/render.py", "splat/cpu_raster.py")
PLUGIN = "splat/nerfstudio/"
# Run-directory vocabulary that belongs to recon/ only (recon.artifacts and recon.stages).
RUN_FILE_NAMES = (
    "manifest.json",
    "frames.json",
    "cameras.json",
    "split.json",
    "disparity.npz",
    "aligned.npz",
    "alignment.json",
    "windows.json",
    "init.ply",
    "gaussians.ply",
    "checkpoint.pt",
    "metrics.json",
)


def _modules(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, function-level imports included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the file's package
                parts = path.relative_to(ROOT).with_suffix("").parts[: -node.level]
                base = ".".join(parts + ((node.module,) if node.module else ()))
            else:
                base = node.module or ""
            out.append((node.lineno, base))
    return out


def _top(name: str) -> str:
    return name.split(".")[0]


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _violations(folder: str, forbidden: set[str]) -> list[str]:
    return [
        f"{_rel(p)}:{line} imports {name}"
        for p in _modules(folder)
        for line, name in _imports(p)
        if _top(name) in forbidden
    ]


def test_the_ast_reader_sees_function_level_and_relative_imports(tmp_path):
    pkg = ROOT / "splat"
    probe = pkg / "_layering_probe.py"
    probe.write_text("def f():\n    from recon.artifacts import Split\n    from .render import rasterization\n")
    try:
        names = [n for _, n in _imports(probe)]
    finally:
        probe.unlink()
    assert names == ["recon.artifacts", "splat.render"]


def test_depth_imports_nothing_of_the_project_outside_depth():
    assert _violations("depth", {"splat", "recon"}) == []


def test_splat_never_imports_recon():
    assert _violations("splat", {"recon"}) == []


def test_only_the_nerfstudio_plugin_imports_nerfstudio():
    bad = [
        f"{_rel(p)}:{line} imports {name}"
        for p in _modules(*PACKAGES, "benchmarks")
        for line, name in _imports(p)
        if _top(name) == "nerfstudio" and not _rel(p).startswith(PLUGIN)
    ]
    assert bad == []


def test_the_renderer_never_imports_the_trainer():
    bad = [
        f"{f}:{line} imports {name}"
        for f in RENDERER
        for line, name in _imports(ROOT / f)
        if name.startswith(("splat.train", "splat.trainer", "splat.losses", "splat.fuse"))
    ]
    assert bad == []


def test_libraries_do_not_know_the_run_directory():
    bad = []
    for p in _modules("depth", "splat"):
        if _rel(p).startswith(PLUGIN):
            continue
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == "RunPaths":
                bad.append(f"{_rel(p)}:{node.lineno} uses RunPaths")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                hit = [n for n in RUN_FILE_NAMES if n in node.value]
                if hit and not _is_docstring(tree, node):
                    bad.append(f"{_rel(p)}:{node.lineno} names run file {hit[0]}")
    assert bad == []


def _is_docstring(tree: ast.AST, const: ast.Constant) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and body[0].value is const:
                return True
    return False


def test_benchmarks_import_no_tests_and_no_private_names():
    bad = []
    for p in _modules("benchmarks"):
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if _top(node.module) in ("tests", "conftest"):
                    bad.append(f"{_rel(p)}:{node.lineno} imports {node.module}")
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private and _top(node.module) in PACKAGES:
                    bad.append(f"{_rel(p)}:{node.lineno} imports private {private} from {node.module}")
            elif isinstance(node, ast.Import):
                bad += [f"{_rel(p)}:{node.lineno} imports {a.name}" for a in node.names if _top(a.name) == "tests"]
    assert bad == []


@pytest.mark.parametrize("statement", ["from depth.dvd import DVDRegressor", "from splat.render import rasterization"])
def test_library_entry_points_load_nothing_of_recon(statement):
    code = f"import sys\n{statement}\nprint(sorted(m for m in sys.modules if m == 'recon' or m.startswith('recon.')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


MAX_FUNCTION_LINES = 60  # DEVELOPERS.md: "short functions (split anything past ~60 lines)"


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the last one."""
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1 if body and body[-1].end_lineno else 0


def test_library_and_stage_functions_stay_short():
    long = []
    for p in _modules(*PACKAGES):
        for node in ast.walk(ast.parse(p.read_text(), filename=str(p))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(node) > MAX_FUNCTION_LINES:
                long.append(f"{_rel(p)}:{node.lineno} {node.name}: {_body_lines(node)} lines")
    assert long == []
