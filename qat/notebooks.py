"""Running the notebooks headless (papermill), and the notebook list the report pipeline runs.

The source notebooks under notebooks/ stay output-free; an executed copy is written under
reports/ (qat.paths.REPORTS), whole or not at all.
"""

from __future__ import annotations

import re
from pathlib import Path

from qat import io, paths

FOLDER = paths.ROOT / "notebooks"  # the source notebooks
KERNEL = "qat"
# The notebooks `qat report` executes, in order (each reads the records of the ones before).
PIPELINE = (
    "01_corpus",
    "02_orthogonal_networks",
    "03_quaternion_embeddings",
    "04_anti_transfer",
    "05_layer_sweep",
)


def notebook_path(name: str) -> Path:
    """notebooks/<name>.ipynb."""
    return FOLDER / f"{name}.ipynb"


def _name_part(value) -> str:
    """A parameter value as part of a file name: a path's separators become underscores, so
    `-p root /data/RAVDESS` names one file, not a nested folder."""
    return re.sub(r"[^\w.,=+-]+", "_", str(value)).strip("_") or "_"


def run_notebook(
    notebook: str | Path, parameters: dict | None = None, output: Path | None = None
) -> Path:
    """Execute a notebook with papermill; the executed copy goes to `output` (default
    reports/<stem>[-<name>_<value>...].ipynb), written only once the notebook has run to its
    end, so a failed or interrupted run leaves no half-written report (and an earlier report
    of the same name in place)."""
    import nbformat
    import papermill

    notebook = Path(notebook)
    if not notebook.exists():
        raise FileNotFoundError(f"notebook {notebook} does not exist; see {FOLDER}")
    parameters = parameters or {}
    if output is None:
        suffix = "".join(f"-{k}_{_name_part(v)}" for k, v in sorted(parameters.items())
                         if k != "profile")  # fmt: skip
        output = paths.REPORTS / f"{notebook.stem}{suffix}.ipynb"
    output = Path(output)
    io.ensure_folder(output.parent, "executed notebook")
    executed = papermill.execute_notebook(
        str(notebook),
        None,  # kept in memory, written below once complete
        parameters=parameters,
        kernel_name=KERNEL,
        cwd=str(notebook.parent),
    )
    executed.metadata["papermill"]["output_path"] = str(output)
    io.write_text(output, nbformat.writes(executed))
    return output
