"""Running the notebooks headless (papermill), and the notebook list the report pipeline runs.

The source notebooks under notebooks/ stay output-free; an executed copy is written under the
pages folder of the profile it ran at (reports/ for the committed profile, reports/<profile>/
for any other, so that a smoke or paper run never replaces the committed pages), whole or not
at all. A parameter the notebook does not have is refused before anything runs; a value the
notebook's checks refuse ends as one line naming the notebook and the value.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from pathlib import Path
from typing import TextIO

from qat import io, paths, progress
from qat.config import default_profile

FOLDER = paths.ROOT / "notebooks"  # the source notebooks
KERNEL = "qat"
# The profile whose pages (reports/README.md, its figures and executed notebooks) are
# committed at the top of reports/; every other profile's go to reports/<profile>/.
COMMITTED_PROFILE = "cpu"
# The notebooks `qat report` executes, in order (each reads the records of the ones before).
PIPELINE = (
    "01_corpus",
    "02_orthogonal_networks",
    "03_quaternion_embeddings",
    "04_anti_transfer",
    "05_layer_sweep",
)
# Errors a notebook's checks raise for a bad value (as in `qat.cli.USER_ERRORS`): reported in
# one line, the traceback stays in the kernel.
USER_ERRORS = ("ValueError", "OSError", "FileNotFoundError", "NotADirectoryError",
               "IsADirectoryError", "PermissionError", "FileExistsError")  # fmt: skip


class NotebookError(ValueError):
    """A notebook stopped on a user error (a bad parameter value, a missing folder)."""


def notebook_path(name: str) -> Path:
    """notebooks/<name>.ipynb."""
    return FOLDER / f"{name}.ipynb"


def pages_folder(profile: str | None, reports: Path | None = None) -> Path:
    """Where the pages of `profile` go: the reports folder itself for the committed profile
    (and for None: every profile's records together), else its <profile>/ subfolder."""
    reports = Path(reports or paths.REPORTS)
    return reports if profile in (None, COMMITTED_PROFILE) else reports / profile


def notebook_parameters(notebook: str | Path) -> dict[str, str]:
    """{name: default, as written} of the notebook's `parameters` cell."""
    from papermill import inspect_notebook

    return {name: p["default"] for name, p in inspect_notebook(str(notebook)).items()}


def check_parameter_names(notebook: str | Path, parameters: dict) -> None:
    """ValueError naming every parameter the notebook's parameters cell does not define, and
    the ones it does: papermill would inject it, the notebook would ignore it and run with
    its default."""
    valid = notebook_parameters(notebook)
    unknown = [name for name in parameters if name not in valid]
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise ValueError(f"{Path(notebook).name} has no parameter {names}; "
                         f"its parameters: {', '.join(valid)}")  # fmt: skip


def _name_part(value) -> str:
    """A parameter value as part of a file name: a path's separators become underscores, so
    `-p root /data/RAVDESS` names one file, not a nested folder."""
    return re.sub(r"[^\w.,=+-]+", "_", str(value)).strip("_") or "_"


# ---------------------------------------------------------------- the Jupyter kernel


def _runs_here(spec) -> bool:
    """The kernel spec starts this interpreter (a venv's python is a link to the system one,
    so paths are compared as written, not resolved)."""
    argv = getattr(spec, "argv", None) or [""]
    return os.path.abspath(argv[0]) == os.path.abspath(sys.executable)


def ensure_kernel(specs=None, folder: Path | None = None) -> str:
    """The name of a Jupyter kernel that runs this interpreter, registered if need be, so that
    `qat run` and `qat report` work however qat was installed (make, pip install -e ., conda).

    "qat" when that kernel runs this interpreter or is not registered (it is then written to
    `folder`, default this environment's share/jupyter/kernels, else the user's); otherwise
    "qat-<digest of this interpreter's path>" (a "qat" kernel of another environment is left
    alone). `specs`: a jupyter_client KernelSpecManager (default: the standard search path)."""
    import hashlib

    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    specs = specs or KernelSpecManager()

    def found(name: str):
        try:
            return specs.get_kernel_spec(name)
        except NoSuchKernel:
            return None

    spec = found(KERNEL)
    if spec is None or _runs_here(spec):
        if spec is None:
            _install_kernel(KERNEL, folder)
        return KERNEL
    digest = hashlib.sha256(os.path.abspath(sys.executable).encode()).hexdigest()[:8]
    own = f"{KERNEL}-{digest}"
    spec = found(own)
    if spec is None or not _runs_here(spec):
        _install_kernel(own, folder)
    return own


def _install_kernel(name: str, folder: Path | None) -> None:
    """Write the kernel spec `name` for this interpreter (ipykernel's own writer)."""
    from ipykernel.kernelspec import install

    if folder is not None:
        install(kernel_name=name, display_name=f"Python ({name})", prefix=str(folder))
        return
    try:  # this environment's share/jupyter, as `make` registers it
        install(kernel_name=name, display_name=f"Python ({name})", prefix=sys.prefix)
    except PermissionError:  # a system interpreter: the user's data folder
        install(kernel_name=name, display_name=f"Python ({name})", user=True)


# ---------------------------------------------------------------- running


class _Stages:
    """nbclient hooks that print, as each code cell starts, which notebook runs which cell and
    under which heading, so a long cell (a corpus build, a training run) is named in the
    terminal while its progress bars stream below it."""

    def __init__(self, name: str, out: TextIO) -> None:
        self.name, self.out = name, out
        self.heading, self.cells, self.done = "", 0, 0

    def notebook_start(self, notebook, **_) -> None:
        self.cells = sum(c.cell_type == "code" and bool(c.source.strip()) for c in notebook.cells)

    def cell_start(self, cell, **_) -> None:
        if cell.cell_type == "markdown":
            titles = [line.lstrip("#").strip() for line in cell.source.splitlines()
                      if line.startswith("#")]  # fmt: skip
            self.heading = titles[0] if titles else self.heading
            return
        if cell.cell_type != "code" or not cell.source.strip():
            return
        self.done += 1
        first = next(line for line in cell.source.splitlines() if line.strip()).strip()
        where = f"{self.heading}: " if self.heading else ""
        line = f"{self.name} [cell {self.done}/{self.cells}] {where}{first}"
        print(line if len(line) <= 110 else line[:107] + "...", file=self.out, flush=True)


@contextlib.contextmanager
def _environment(**values: str):
    """Set environment variables for the kernels started inside (they inherit them)."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_notebook(
    notebook: str | Path,
    parameters: dict | None = None,
    output: Path | None = None,
    log: TextIO | None = None,
) -> Path:
    """Execute a notebook with papermill; the executed copy goes to `output` (default
    <pages folder of its profile>/<stem>[-<name>_<value>...].ipynb, the profile being the
    `profile` parameter or $QAT_PROFILE or cpu, as in the notebook), written only once the
    notebook has run to its end, so a failed or interrupted run leaves no half-written report
    (and an earlier report of the same name in place).

    `log` (e.g. sys.stderr): each cell's heading and first line as it starts, and the kernel's
    output (its progress bars as text) as it comes. A parameter the notebook does not define
    raises ValueError before anything runs; a user error inside the notebook (a value its
    checks refuse) raises NotebookError, one line."""
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebook = Path(notebook)
    if not notebook.exists():
        raise FileNotFoundError(f"notebook {notebook} does not exist; see {FOLDER}")
    parameters = parameters or {}
    check_parameter_names(notebook, parameters)
    if output is None:
        suffix = "".join(f"-{k}_{_name_part(v)}" for k, v in sorted(parameters.items())
                         if k != "profile")  # fmt: skip
        folder = pages_folder(parameters.get("profile", default_profile()))
        output = folder / f"{notebook.stem}{suffix}.ipynb"
    output = Path(output)
    io.ensure_folder(output.parent, "executed notebook")
    hooks = {}
    if log is not None:
        stages = _Stages(notebook.stem, log)
        hooks = dict(on_notebook_start=stages.notebook_start, on_cell_start=stages.cell_start,
                     stdout_file=log, stderr_file=log)  # fmt: skip
    start = time.monotonic()
    try:
        with _environment(**{progress.ENV: progress.TEXT} if log is not None else {}):
            executed = papermill.execute_notebook(
                str(notebook),
                None,  # kept in memory, written below once complete
                parameters=parameters,
                kernel_name=ensure_kernel(),
                cwd=str(notebook.parent),
                progress_bar=False,
                **hooks,
            )
    except PapermillExecutionError as err:
        if err.ename not in USER_ERRORS:
            raise
        raise NotebookError(f"{notebook.name}, cell {err.exec_count}: {err.evalue}") from None
    executed.metadata["papermill"]["output_path"] = str(output)
    io.write_text(output, nbformat.writes(executed))
    if log is not None:
        print(f"{notebook.stem}: done in {time.monotonic() - start:.0f} s -> {output}",
              file=log, flush=True)  # fmt: skip
    return output
