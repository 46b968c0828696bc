"""Bad inputs: every case of tests/bad_input_cases.py is handled (converted, with a note) or
rejected with a message naming the file or parameter and what is expected. The harness itself
is checked too, so that a crash, a wrong conversion or a vague message cannot pass unseen, and
so is scripts/robustness_report.py, which writes the same cases to reports/robustness.md.
No training happens here."""

from __future__ import annotations

import ast
import importlib.util
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import bad_input_cases
import numpy as np
import pytest
import soundfile as sf
from bad_input_cases import (
    CASES,
    CRASHED,
    HANDLED,
    KNOWN_BUGS,
    REJECTED,
    WRONG,
    Case,
    WrongResult,
    check_signal,
    reference_at,
    run_case,
    verdict,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "robustness_report.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("robustness_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _load_script()


def _known_bug(case: Case):
    """A case that reveals a reported, unfixed bug fails as expected (strict: once the bug is
    fixed the case passes, and its KNOWN_BUGS entry must go)."""
    reason = KNOWN_BUGS.get(case.name)
    return [pytest.mark.xfail(strict=True, reason=f"known bug: {reason}")] if reason else []


@pytest.mark.parametrize(
    "case", [pytest.param(case, id=case.name, marks=_known_bug(case)) for case in CASES]
)
def test_bad_input_is_handled_or_rejected_with_a_message_naming_it(case, tmp_path):
    outcome, message = run_case(case, tmp_path)
    problem = verdict(case, outcome, message)
    assert problem is None, f"{case.name}: {outcome}: {problem}: {message}"


def test_verdict_checks_outcome_then_every_mention():
    case = Case("c", "g", "input", "call()", REJECTED, ("beta", "'0.5'"), lambda f: "")
    assert verdict(case, REJECTED, "ValueError: beta='0.5' must be a number") is None
    assert verdict(case, CRASHED, "TypeError: beta='0.5'") == "expected rejected"
    assert verdict(case, REJECTED, "ValueError: beta is bad") == "message lacks [\"'0.5'\"]"


def test_the_table_covers_every_input_the_issue_lists():
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))
    required = {
        "wav-header-cut", "wav-data-cut", "wav-zero-length", "wav-nan", "wav-inf",
        "wav-pcm8", "wav-pcm24", "wav-pcm32", "wav-stereo",
        "wav-8k", "wav-22k", "wav-44k", "wav-48k",
        "manifest-missing-column", "manifest-unknown-label", "manifest-nonexistent-path",
        "manifest-duplicate-path", "tree-strays",
        "train-tap-unknown", "train-beta-negative", "train-corpus-unknown", "train-setup",
        "train-model", "train-profile", "at-tap-unknown", "at-gram", "at-distance",
        # the second hardening round: numerics, strict manifests, links in corpus trees
        "at-float16-self", "at-scaled-1e10", "at-scaled-1e20", "at-scaled-1e-10",
        "at-empty-batch-cos2", "at-empty-batch-cka", "manifest-duplicate-column",
        "manifest-unquoted-comma", "manifest-nul", "manifest-unterminated-quote",
        "tree-symlink-duplicate", "tree-dangling-link", "tree-looping-link",
        # issue 17: data lost (1-3)
        "synth-users-manifest", "synth-users-prosody", "synth-reseed-keeps-users-files",
        "synth-empty-path", "cli-synth-empty-path",
        # silently wrong (4-7, 9, 11)
        "results-relative-root", "results-relabelled-manifest", "train-force",
        "features-same-size-mtime-kept", "nan-features-val", "nan-features-test",
        "degenerate-single-emotion", "degenerate-one-item-test", "degenerate-silent-class",
        "wav-dc-offset", "wav-anti-phase-stereo", "env-qat-profile",
        # tracebacks (12-13)
        "records-unreadable-skipped", "records-readme", "records-demonstration-report-only",
        "records-rerun-truncated", "checkpoint-truncated", "cached-network-truncated",
        "env-cache-file", "env-cache-read-only", "env-data-file", "env-data-read-only",
        "env-reports-file", "env-reports-read-only", "cli-seed-2-64", "cli-sweep-jobs-negative",
        # issue 37: files as data, inference from sound, every input an answer or one line
        "model-carries-code", "cached-network-carries-code", "model-nan-weights",
        "model-nan-normaliser", "model-width-8", "model-width-inf", "model-labels-count",
        "model-normaliser-size", "model-named-pipe", "model-full-disk", "predict-late-silence",
        "predict-folder-links", "evaluate-all-unreadable", "evaluate-all-silent",
        "evaluate-own-training-data", "evaluate-own-training-data-allowed",
        "evaluate-mapping-repeated", "evaluate-mapping-synonym-repeated",
        "manifest-same-audio-two-labels", "manifest-10000-duplicate-rows",
        "records-config-mismatch", "rhemo-file-in-key-real-on-rhemo", "train-rhemo-empty",
        "records-impossible-ua", "records-no-metrics-readme", "records-no-metrics-report-only",
        "records-ua-string-readme", "env-reports-empty", "env-cache-relative",
        "env-profile-bogus", "env-profile-empty", "cli-fold-all-random", "cli-sweep-taps-empty",
        "cli-sweep-taps-comma", "cli-train-tap-empty", "cli-evaluate-mapping-empty",
        "tree-unlistable-folder",
        "tree-unlistable-folder-skip",
    }  # fmt: skip
    assert required <= set(names), sorted(required - set(names))
    for case in CASES:
        assert case.expect in (HANDLED, REJECTED) and case.mentions, case.name
        assert case.input and case.tried and case.group, case.name
    assert set(KNOWN_BUGS) <= set(names), sorted(set(KNOWN_BUGS) - set(names))


def test_every_issue_17_finding_has_cases_or_a_test_that_exist():
    """Each finding (1-14) names cases of the table or tests listed as checked elsewhere, and
    every case the test above requires for issue 17 appears under a finding."""
    names = {case.name for case in CASES}
    elsewhere = {test for _, _, _, test in report.CHECKED_ELSEWHERE}
    assert [item for item, _, _ in report.ISSUE_17] == [str(i) for i in range(1, 15)]
    for item, _, held_by in report.ISSUE_17:
        assert held_by, item
        unknown = [name for name in held_by if name not in names | elsewhere]
        assert not unknown, (item, unknown)
    listed = {name for _, _, held_by in report.ISSUE_17 for name in held_by}
    assert elsewhere <= listed
    issue_groups = ("SynthEmo folder", "run keys", "feature cache", "prepare_data",
                    "records and caches", "environment", "qat command line")  # fmt: skip
    before_37 = CASES[: [case.name for case in CASES].index("model-carries-code")]
    issue_cases = {case.name for case in before_37 if case.group in issue_groups}
    assert issue_cases and issue_cases <= listed, sorted(issue_cases - listed)


def test_every_issue_37_finding_has_cases_or_a_test_that_exist():
    """Each finding of issue 37 names cases of the table or tests checked elsewhere, and every
    case the table holds for issue 37 appears under a finding."""
    names = {case.name for case in CASES}
    elsewhere = {test for _, _, _, test in report.CHECKED_ELSEWHERE_37}
    assert [item for item, _, _ in report.ISSUE_37] == [str(i) for i in range(1, 19)]
    for item, _, held_by in report.ISSUE_37:
        assert held_by, item
        unknown = [name for name in held_by if name not in names | elsewhere]
        assert not unknown, (item, unknown)
    listed = {name for _, _, held_by in report.ISSUE_37 for name in held_by}
    assert elsewhere <= listed
    first = [case.name for case in CASES].index("model-carries-code")
    assert {case.name for case in CASES[first:]} <= listed


def test_the_report_gives_every_issue_37_finding_a_verdict():
    case = next(c for c in CASES if c.name == "model-width-8")
    text = report.render([(case, CRASHED, "BuiltForReal: vgg16 was about to be built")])
    issue = text.split("## The third hostile test (issue 37)")[1].split("\n## ")[0]
    rows = [line for line in issue.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + len(report.ISSUE_37)
    assert "`model-width-8` crashed (**expected rejected**)" in issue
    assert "`model-named-pipe` not run" in issue
    assert (
        "handled (`test_a_forced_rerun_never_changes_the_model_an_earlier_record_names`)" in issue
    )
    elsewhere = text.split("## Checked elsewhere")[1]
    for _, _, _, test in report.CHECKED_ELSEWHERE_37:
        assert f"`{test}`" in elsewhere


def test_every_test_checked_elsewhere_exists():
    """The tests the report names as checking an issue-17 or issue-37 finding are test
    functions of the named files (a rename or a removal must show here, not as a stale
    report)."""
    for item, _, verdict_text, test in (*report.CHECKED_ELSEWHERE, *report.CHECKED_ELSEWHERE_37):
        assert verdict_text.split(":")[0] in (HANDLED, REJECTED), (item, verdict_text)
        path, name = test.split("::")
        tree = ast.parse((ROOT / path).read_text())
        functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert name.startswith("test_") and name in functions, test


# ------------------------------------------------------------------ the harness can fail


def _case(action, expect=REJECTED) -> Case:
    return Case("probe", "harness", "input", "call()", expect, ("x",), action)


def _raise(error):
    def action(folder):
        raise error

    return action


@pytest.mark.parametrize(
    ("action", "outcome", "prefix"),
    [
        (lambda folder: "used as is", HANDLED, "used as is"),
        (_raise(ValueError("beta=-1 must be >= 0")), REJECTED, "ValueError: beta=-1"),
        (_raise(FileNotFoundError("no such corpus")), REJECTED, "FileNotFoundError: no such"),
        (_raise(PermissionError("cache folder x is not writable")), REJECTED, "PermissionError"),
        (_raise(bad_input_cases.CliRejection("exit status 2: qat: error: x")), REJECTED, "Cli"),
        (_raise(TypeError("'>=' not supported")), CRASHED, "TypeError: '>='"),
        (_raise(KeyError("emotion")), CRASHED, "KeyError: 'emotion'"),
        (_raise(OverflowError("too big")), CRASHED, "OverflowError: too big"),
        (_raise(WrongResult("off by 0.1")), WRONG, "off by 0.1"),
    ],
)
def test_run_case_classifies_outcomes(tmp_path, action, outcome, prefix):
    got, message = run_case(_case(action), tmp_path)
    assert got == outcome
    assert message.startswith(prefix)


def test_run_case_hides_the_scratch_folder_and_appends_warnings(tmp_path):
    def action(folder):
        warnings.warn(f"skipped {folder}/bad.wav", UserWarning, stacklevel=1)
        raise ValueError(f"{folder}/x.wav:\n  unreadable")

    outcome, message = run_case(_case(action), tmp_path)
    assert outcome == REJECTED
    assert message == "ValueError: <tmp>/x.wav: unreadable | warning: skipped <tmp>/bad.wav"
    assert str(tmp_path) not in message


@pytest.mark.parametrize(
    ("code", "stderr", "outcome"),
    [
        (2, "qat: error: seed=-1: expected an integer\n", REJECTED),
        (2, "usage: qat synth [-h] out_dir\nqat synth: error: argument out_dir: empty\n",
         REJECTED),
        (2, "qat: error: one\nqat: error: two\n", CRASHED),
        (1, "Traceback (most recent call last):\nTypeError: boom\n", CRASHED),
        (2, "Traceback (most recent call last):\nqat: error: x\n", CRASHED),
        (0, "", HANDLED),
    ],
)  # fmt: skip
def test_a_command_line_is_rejected_only_with_status_2_and_one_error_line(
    tmp_path, monkeypatch, code, stderr, outcome
):
    from qat import cli

    def main(argv):
        sys.stderr.write(stderr)
        return code

    monkeypatch.setattr(cli, "main", main)
    action = lambda folder: bad_input_cases._cli(folder, ["train"])  # noqa: E731
    assert run_case(_case(action), tmp_path)[0] == outcome


def test_read_only_folders_are_refused_then_restored(tmp_path):
    """The read-only set-up of the environment cases denies writes under the folder (by its
    mode, or, for root, simulated), and gives the folder back writable."""
    from qat import io

    folder = tmp_path / "cache"
    (folder / "sub").mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with bad_input_cases._read_only(folder):
            with pytest.raises(PermissionError, match="is not writable"):
                io.ensure_folder(folder / "sub", "probe")
            assert os.access(tmp_path, os.W_OK)
    io.ensure_folder(folder / "sub", "probe")
    assert (folder.stat().st_mode & 0o777) == 0o755


def test_check_signal_rejects_wrong_length_type_and_values():
    rng = np.random.default_rng(0)
    reference = rng.uniform(-0.5, 0.5, 1000)
    y = reference.astype(np.float32)
    assert check_signal(y, reference, 1e-6, "y") <= 1e-7
    bad = y.copy()
    bad[500] += 0.01  # one interior sample off
    with pytest.raises(WrongResult, match=r"y: deviates from the analytic signal by 0\.01"):
        check_signal(bad, reference, 2e-3, "y")
    with pytest.raises(WrongResult, match="expected 1000 samples, got 999"):
        check_signal(y[:-1], reference, 1e-3, "y")
    with pytest.raises(WrongResult, match="float32"):
        check_signal(reference, reference, 1e-3, "y")
    with pytest.raises(WrongResult, match="deviates"):
        check_signal(np.full(1000, np.nan, dtype=np.float32), reference, 1e-3, "y")


def _left_channel_only(path, sample_rate=16000):
    data, _rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data[:, 0]


def _not_resampled(path, sample_rate=16000):
    data, _rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1).astype(np.float32)


def _misscaled(path, sample_rate=16000):
    data, _rate = sf.read(str(path), dtype="float32", always_2d=True)
    return (1.01 * data.mean(axis=1)).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "broken"),
    [("wav-stereo", _left_channel_only), ("wav-44k", _not_resampled), ("wav-pcm24", _misscaled)],
)
def test_a_wrong_conversion_is_reported_as_wrong(tmp_path, monkeypatch, name, broken):
    """If load_audio kept one channel, skipped resampling or misscaled, the case must fail."""
    import qat.data.audio as audio

    monkeypatch.setattr(audio, "load_audio", broken)
    case = next(c for c in CASES if c.name == name)
    outcome, message = run_case(case, tmp_path)
    assert outcome == WRONG, message


def test_train_ser_cases_stop_before_any_data_work(tmp_path, monkeypatch):
    """Parameters that pass validation reach the stop, never SynthEmo synthesis or training:
    the outcome is a crash ("parameters accepted"), not a rejection, so such a case fails."""
    from qat import experiments, rundata

    def fail(*args, **kwargs):
        raise AssertionError("data preparation or training started")

    for module, name in ((experiments, "run_data"), (experiments, "load_records"),
                         (experiments, "fit"), (rundata, "prepare_data"),
                         (rundata, "extract_features")):  # fmt: skip
        monkeypatch.setattr(module, name, fail)
    outcome, message = run_case(
        _case(
            lambda folder: bad_input_cases._train_ser(
                folder, method="at", tap="conv2_1", beta=0.5, seed=987654
            )
        ),
        tmp_path,
    )
    assert outcome == CRASHED, message
    assert message.startswith("DataStepReached: parameters accepted"), message


def test_reference_at_is_the_published_formula():
    """The numpy reference the numerics cases compare with: identical inputs give 1, and a
    hand-computed 1-item, 2-channel, 2-position example its value."""
    a = bad_input_cases._activations(0)
    for distance, gram in bad_input_cases.AT_MODES:
        assert reference_at(a, a, distance, gram) == pytest.approx(1.0, abs=1e-12)
    # Rows of G(F) = [[1, 1], [1, 2]] / 2 and G(P) = [[1, 0], [0, 1]] / 2 (per 2 positions):
    # |cos| = 1/sqrt(2) and 2/sqrt(5); AT = (mean)^2.
    f = np.array([[[[1.0, 0.0]], [[1.0, 1.0]]]])
    p = np.array([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    expected = ((1 / math.sqrt(2) + 2 / math.sqrt(5)) / 2) ** 2
    assert reference_at(f, p, "cos2", "sample") == pytest.approx(expected, rel=1e-12)


def test_a_wrong_at_value_is_reported_as_wrong(tmp_path, monkeypatch):
    """If at_loss were off (here: the old float32 overflow, 0 at 1e10), the case must fail."""
    import qat.antitransfer as antitransfer

    real = antitransfer.at_loss
    monkeypatch.setattr(antitransfer, "at_loss", lambda a, b, **kw: 0 * real(a, b, **kw))
    case = next(c for c in CASES if c.name == "at-scaled-1e10")
    outcome, message = run_case(case, tmp_path)
    assert outcome == WRONG, message


def _undo_fix(monkeypatch, name: str) -> None:
    """Put back, for one case, the behaviour issue 17 reported (or a like one)."""
    from qat import experiments, rundata
    from qat.data import features, synth

    if name == "synth-users-manifest":  # the guard looked only at wav/
        monkeypatch.setattr(synth, "_stored_corpus", lambda out_dir: None)
    elif name == "features-same-size-mtime-kept":  # the key was path, size and mtime
        monkeypatch.setattr(features, "file_digest", lambda p: str(os.stat(p)[6:9:2]))
    elif name in ("nan-features-val", "degenerate-single-emotion"):
        monkeypatch.setattr(rundata, "_check_task", lambda *args, **kwargs: [])
    elif name == "env-reports-read-only":  # writability checked only after training
        monkeypatch.setattr(experiments, "_check_writable", lambda: None)
    elif name == "results-relabelled-manifest":  # the key held the path, not the content
        monkeypatch.setattr(experiments, "corpus_digest", lambda records: "path only")
    _undo_issue_37_fix(monkeypatch, name)


def _undo_issue_37_fix(monkeypatch, name: str) -> None:
    """Put back, for one case, the behaviour issue 37 reported."""
    from qat import runs, saved

    if name == "records-impossible-ua":  # every JSON object with a config was a record
        monkeypatch.setattr(runs, "record_problem", lambda record: None)
    elif name == "model-width-8":  # the network was built before its weights were checked
        monkeypatch.setattr(saved, "_check_vgg_size", lambda config, state: None)
    elif name == "predict-late-silence":  # the centre segment was the whole answer
        centre = saved.segments
        monkeypatch.setattr(
            saved, "segments", lambda y, config, whole=True: centre(y, config, False)
        )
    elif name == "records-config-mismatch":  # the file name was trusted

        def by_name(kind, config, reports=None):
            path = runs.record_path(kind, config, reports)
            return (path, runs.load_record(path)) if path.exists() else None

        monkeypatch.setattr(runs, "find_record", by_name)


@pytest.mark.parametrize(
    ("name", "outcome"),
    [
        ("synth-users-manifest", WRONG),
        ("features-same-size-mtime-kept", WRONG),
        ("nan-features-val", HANDLED),
        ("degenerate-single-emotion", HANDLED),
        ("env-reports-read-only", CRASHED),
        ("results-relabelled-manifest", WRONG),
        ("records-impossible-ua", WRONG),
        ("model-width-8", CRASHED),
        ("predict-late-silence", WRONG),
        ("records-config-mismatch", WRONG),
    ],
)
def test_a_regression_of_an_issue_17_or_37_fix_fails_its_case(tmp_path, monkeypatch, name, outcome):
    """With a fix undone, the case no longer behaves as the table expects."""
    _undo_fix(monkeypatch, name)
    case = next(c for c in CASES if c.name == name)
    got, message = run_case(case, tmp_path)
    assert got == outcome, message
    assert verdict(case, got, message) is not None


# -------------------------------------------------------------------------------- report


def _results():
    cases = [
        Case("a", "audio", "pipe | in input", "load()", HANDLED, ("no",), lambda f: "note"),
        Case("b", "audio", "nan", "load()", REJECTED, ("x",), lambda f: "note"),
        Case("c", "train_ser", "beta='1'", "train()", REJECTED, ("x",), lambda f: "note"),
    ]
    return [(cases[0], HANDLED, "note"), (cases[1], HANDLED, "loaded"),
            (cases[2], REJECTED, "ValueError: beta='1' | y")]  # fmt: skip


def test_report_has_one_row_per_case_flags_surprises_and_escapes_pipes():
    text = report.render(_results())
    groups = text.split("\n## audio\n")[1].split("\n## Checked elsewhere\n")[0]
    rows = [line for line in groups.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 3 + 2  # three cases, two table headers (audio, train_ser)
    assert "## audio" in text and "## train_ser" in text
    assert "3 cases: 2 handled, 1 rejected, 0 crashed, 0 wrong." in text
    assert (
        "Not as expected (2): `b` handled: expected rejected; `c` rejected: message lacks" in text
    )
    assert "| **handled**: expected rejected |" in text
    assert "| **rejected**: message lacks ['x'] |" in text
    assert "pipe \\| in input" in text and "beta='1' \\| y" in text
    assert "`python scripts/robustness_report.py`" in text


def test_report_gives_every_issue_17_finding_a_verdict():
    case = next(c for c in CASES if c.name == "synth-users-manifest")
    broken = next(c for c in CASES if c.name == "wav-dc-offset")
    text = report.render([(case, REJECTED, "ValueError: <tmp>/corpus/manifest.csv exists and "
                           "was not written by make_synthemo; choose another out_dir"),
                          (broken, CRASHED, "TypeError: x")])  # fmt: skip
    issue = text.split("## The second hostile test: a verdict for every finding")[1].split("\n## ")[
        0
    ]
    rows = [line for line in issue.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 14
    assert "| 1 | `qat synth DIR` over" in issue and "`synth-users-manifest` rejected;" in issue
    assert "`synth-users-prosody` not run" in issue
    assert "`wav-dc-offset` crashed (**expected handled**)" in issue
    assert "handled (`test_two_builds_into_one_new_folder_take_turns`)" in issue
    elsewhere = text.split("## Checked elsewhere")[1]
    for _, _, _, test in report.CHECKED_ELSEWHERE:
        assert f"`{test}`" in elsewhere


def test_report_names_a_known_bug(monkeypatch):
    case = next(c for c in CASES if c.name == "wav-dc-offset")
    monkeypatch.setitem(report.KNOWN_BUGS, "wav-dc-offset", "the probe's reason")
    text = report.render([(case, CRASHED, "TypeError: x")])
    assert "`wav-dc-offset` crashed: expected handled (known bug, reported: the probe's" in text


def test_report_keeps_the_previous_file_when_rendering_fails(tmp_path, monkeypatch):
    path = report.write_report(_results(), tmp_path / "reports" / "robustness.md")
    assert path.read_text() == report.render(_results())

    def broken(results):
        raise RuntimeError("interrupted while rendering")

    monkeypatch.setattr(report, "render", broken)
    path.write_text("previous report")
    with pytest.raises(RuntimeError):
        report.write_report(_results(), path)
    assert path.read_text() == "previous report"
    assert [p.name for p in path.parent.iterdir()] == ["robustness.md"]


def test_the_script_runs_the_cases_and_writes_the_report(tmp_path):
    out = tmp_path / "robustness.md"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--only", "manifest-nul", "at-tap-none"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "2 cases: 0 handled, 2 rejected, 0 crashed, 0 wrong." in text
    assert "Every case behaves as expected." in text
    assert "NUL byte" in text and "## manifest" in text and "## AntiTransfer" in text
    unknown = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--only", "no-such-case"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert unknown.returncode == 2 and "unknown case(s) ['no-such-case']" in unknown.stderr


def test_sine_reference_is_the_formula():
    y = bad_input_cases._sine(8000, 9)
    expected = [0.5 * math.sin(2 * math.pi * 440 * n / 8000) for n in range(9)]
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-15)
    assert len(bad_input_cases._sine(22050)) == round(22050 * 0.25)
