"""qat.notebooks: the notebook list the report runs, and run_notebook writing the executed copy
whole, under the reports folder by default, naming its final path in papermill's metadata.
(A failing notebook leaving nothing behind is in test_faults.)"""

from __future__ import annotations

import nbformat
import pytest

from qat import notebooks, paths


def test_the_pipeline_lists_existing_notebooks_in_order():
    assert list(notebooks.PIPELINE) == sorted(notebooks.PIPELINE)
    for name in notebooks.PIPELINE:
        assert notebooks.notebook_path(name).exists()


def test_run_notebook_writes_the_executed_copy_under_the_reports_folder(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("x = 1")
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_code_cell("print('x is', x)")]
    kernel = {"name": notebooks.KERNEL, "display_name": "qat", "language": "python"}
    nb.metadata["kernelspec"] = kernel
    source = tmp_path / "tiny.ipynb"
    nbformat.write(nb, source)
    monkeypatch.setattr(paths, "REPORTS", tmp_path / "reports")
    done = notebooks.run_notebook(source, {"x": 5, "profile": "smoke"})
    assert done == tmp_path / "reports" / "tiny-x_5.ipynb"  # the profile is not in the name
    executed = nbformat.read(done, as_version=4)
    assert executed.cells[-1].outputs[0]["text"] == "x is 5\n"
    assert executed.metadata["papermill"]["output_path"] == str(done)
    assert [p.name for p in done.parent.iterdir()] == [done.name]  # no temporary left
    assert nbformat.read(source, as_version=4).cells[-1].outputs == []  # source untouched


def test_run_notebook_names_a_missing_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"notebook .*nope\.ipynb does not exist"):
        notebooks.run_notebook(tmp_path / "nope.ipynb")
