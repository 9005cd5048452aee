"""One module per stage; the only code (with recon.artifacts) that knows the run directory.

Contract of a stage module `recon.stages.<name>`:
    Config                      the stage's dataclass config (importable without torch)
    run(ctx: StageContext, cfg: Config) -> dict[str, Any]
                                reads its inputs through recon.artifacts, calls the libraries (depth/, splat/,
                                pycolmap, ...) on arrays, writes its outputs through recon.artifacts, and returns
                                a JSON-compatible summary for the manifest.
The pipeline (recon.pipeline) holds the table of stages (name, depends-on, config class, module); a cluster
scheduler calls the same `run` functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recon.artifacts.layout import RunPaths


@dataclass(frozen=True)
class StageContext:
    """What a stage runner gets besides its config: the run directory and the user's input (frames only)."""

    paths: RunPaths
    input_path: Path | None = None
