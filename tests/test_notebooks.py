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
    monkeypatch.setenv("QAT_PROFILE", "smoke")
    kernel = {"name": notebooks.KERNEL, "display_name": "qat", "language": "python"}
    nb.metadata["kernelspec"] = kernel
    source = tmp_path / "tiny.ipynb"
    nbformat.write(nb, source)
    monkeypatch.setattr(paths, "REPORTS", tmp_path / "reports")
    done = notebooks.run_notebook(source, {"x": 5})
    assert done == tmp_path / "reports" / "smoke" / "tiny-x_5.ipynb"  # $QAT_PROFILE's pages
    executed = nbformat.read(done, as_version=4)
    assert executed.cells[-1].outputs[0]["text"] == "x is 5\n"
    assert executed.metadata["papermill"]["output_path"] == str(done)
    assert [p.name for p in done.parent.iterdir()] == [done.name]  # no temporary left
    assert nbformat.read(source, as_version=4).cells[-1].outputs == []  # source untouched


def test_run_notebook_names_a_missing_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"notebook .*nope\.ipynb does not exist"):
        notebooks.run_notebook(tmp_path / "nope.ipynb")


def _tiny(tmp_path, body="print('x is', x)"):
    """A two-cell notebook: `x = 1` as its parameters, then `body` under a heading."""
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("x = 1")
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_markdown_cell("## The step"),
                nbformat.v4.new_code_cell(body)]  # fmt: skip
    nb.metadata["kernelspec"] = {"name": notebooks.KERNEL, "display_name": "qat",
                                 "language": "python"}  # fmt: skip
    source = tmp_path / "tiny.ipynb"
    nbformat.write(nb, source)
    return source


def test_qat_run_refuses_a_parameter_the_notebook_lacks_and_lists_the_valid_ones(capsys):
    """`qat run ... -p betta 0.5` stops before anything runs (it used to run with the default
    beta, exit 0 and name its output after the typo), in one line listing the parameters."""
    from qat import cli

    before = set(paths.REPORTS.rglob("*.ipynb")) if paths.REPORTS.exists() else set()
    code = cli.main(["run", "notebooks/04_anti_transfer.ipynb", "-p", "betta", "0.5"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "no parameter 'betta'" in err
    for name in ("beta", "tap", "method", "profile"):
        assert name in err.split("its parameters:")[1]
    after = set(paths.REPORTS.rglob("*.ipynb")) if paths.REPORTS.exists() else set()
    assert after == before  # nothing ran, nothing was written


def test_a_value_the_notebook_refuses_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    """`-p beta -1` ended in 81 lines of tracebacks; now one line naming the notebook, the cell
    and the notebook's own message, and no executed copy."""
    from qat import cli

    monkeypatch.setattr(paths, "REPORTS", tmp_path / "reports")
    source = _tiny(tmp_path, "if x < 0:\n    raise ValueError(f'x={x}: expected a number >= 0')")
    code = cli.main(["run", str(source), "-p", "x", "-1"])
    err = capsys.readouterr().err
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last == "qat: error: tiny.ipynb, cell 3: x=-1: expected a number >= 0"
    assert "Traceback" not in err
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").rglob("*.ipynb"))


def test_a_bug_in_a_notebook_keeps_its_traceback(tmp_path):
    """Only user errors (ValueError, OSError) are shortened: a bug stays a bug."""
    from papermill.exceptions import PapermillExecutionError

    source = _tiny(tmp_path, "1 / 0")
    with pytest.raises(PapermillExecutionError, match="ZeroDivisionError"):
        notebooks.run_notebook(source, output=tmp_path / "out.ipynb")


def test_a_headless_run_names_each_cell_and_streams_text_progress(tmp_path):
    """With a log (the terminal), each code cell is named with its heading as it starts, and
    the kernel's progress bars arrive as text (QAT_PROGRESS=text), not as widgets."""
    import io as stdio

    body = "from qat.progress import tqdm\nfor _ in tqdm(range(3), desc='building'): pass"
    source = _tiny(tmp_path, body)
    log = stdio.StringIO()
    done = notebooks.run_notebook(source, output=tmp_path / "out.ipynb", log=log)
    text = log.getvalue()
    assert "tiny [cell 2/2] The step: from qat.progress import tqdm" in text
    assert "building: 100%" in text
    outputs = nbformat.read(done, as_version=4).cells[-1].outputs
    assert all("application/vnd.jupyter.widget-view+json" not in o.get("data", {})
               for o in outputs)  # fmt: skip
    assert any("building: 100%" in o.get("text", "") for o in outputs)  # kept in the copy


def test_the_kernel_is_registered_when_missing_and_never_borrowed(tmp_path):
    """`qat run` finds a kernel running this interpreter, or registers one: "qat" when free,
    "qat-<digest>" when a "qat" kernel of another environment exists (left alone)."""
    import json
    import sys

    from jupyter_client.kernelspec import KernelSpecManager

    kernels = tmp_path / "share" / "jupyter" / "kernels"
    specs = KernelSpecManager(kernel_dirs=[str(kernels)])
    assert notebooks.ensure_kernel(specs, folder=tmp_path) == "qat"
    spec = json.loads((kernels / "qat" / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    assert notebooks.ensure_kernel(specs, folder=tmp_path) == "qat"  # found, not rewritten

    spec["argv"][0] = "/elsewhere/bin/python"  # another environment's kernel named qat
    (kernels / "qat" / "kernel.json").write_text(json.dumps(spec))
    name = notebooks.ensure_kernel(specs, folder=tmp_path)
    assert name.startswith("qat-") and name != "qat"
    assert json.loads((kernels / name / "kernel.json").read_text())["argv"][0] == sys.executable
    assert json.loads((kernels / "qat" / "kernel.json").read_text())["argv"][0].startswith(
        "/elsewhere"
    )
    assert notebooks.ensure_kernel(specs, folder=tmp_path) == name


def test_pages_of_another_profile_go_to_their_own_folder(tmp_path):
    assert notebooks.pages_folder("cpu", tmp_path) == tmp_path
    assert notebooks.pages_folder(None, tmp_path) == tmp_path
    assert notebooks.pages_folder("smoke", tmp_path) == tmp_path / "smoke"
