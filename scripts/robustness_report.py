"""Write reports/robustness.md: what the kit does with each bad input.

Runs every case of the table in tests/bad_input_cases.py (the one tests/test_bad_input.py
checks), each in its own temporary folder, and writes one Markdown table per group with the
outcome and the message, atomically (qat.io). Issue 17 (a hostile test's findings) gets a
verdict per finding: from the cases, and, for what only a training or subprocess test can
check, from CHECKED_ELSEWHERE (the test named there asserts it; tests/test_bad_input.py checks
that each named test exists). Exit status 1 if a case did not behave as the table expects.

    .venv/bin/python scripts/robustness_report.py [--out reports/robustness.md] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the case table lives beside the tests

from bad_input_cases import CASES, KNOWN_BUGS, OUTCOMES, Case, run_all, verdict  # noqa: E402

from qat import io, paths  # noqa: E402
from qat.tables import markdown_table  # noqa: E402

Result = tuple[Case, str, str]
COLUMNS = ("Input", "Tried", "Outcome", "Message")

# Issue-17 findings that only a training or subprocess test can check (too slow for the table,
# which never trains): (issue item, input, verdict, the pytest id of the test asserting it).
CHECKED_ELSEWHERE: tuple[tuple[str, str, str, str], ...] = (
    ("4", "a user's manifest trained, relabelled and trained again; the same content moved "
     "and named by a relative root", "handled: the relabelled data gets a new record (its "
     "data_digest is in the key); the moved copy keeps the digest, its root resolved",
     "tests/test_experiments.py::test_a_relabelled_manifest_gets_a_new_record_and_a_moved_one_the_same"),
    ("13", "two `qat synth` processes into the same new folder at once", "handled: the builds "
     "take turns (a lock); both return the corpus, no temporary file is left",
     "tests/test_synth.py::test_two_builds_into_one_new_folder_take_turns"),
    ("14", "SIGKILL during `qat synth` (2 workers)", "handled: no orphan worker; the next start "
     "removes the engine folder (qat-espeak-*) and the temporary files",
     "tests/test_synth.py::test_a_killed_build_leaves_no_orphan_and_the_next_start_cleans_up"),
    ("14", "SIGKILL during feature extraction (2 workers)", "handled: no orphan worker; the next "
     "call removes the temporary array and builds the cache",
     "tests/test_features.py::test_a_killed_extraction_leaves_no_orphan_and_the_next_call_cleans_up"),
)  # fmt: skip

# Issue-37 findings that a test outside the table checks (a trained model, a real checkpoint,
# the CLI's output): (issue item, input, verdict, the pytest id of the test asserting it).
CHECKED_ELSEWHERE_37: tuple[tuple[str, str, str, str], ...] = (
    ("1", "a checkpoint (cache/checkpoints/ser-<key>.ckpt) that carries code", "handled: read "
     "as data (weights_only), discarded with a warning; the code never runs",
     "tests/test_train.py::test_a_checkpoint_that_carries_code_is_refused_never_run"),
    ("1", "a model file or a `qat rhemo` file that carries code", "rejected: one line saying "
     "how to convert a trusted file; the code never runs",
     "tests/test_saved.py::test_a_model_file_that_carries_code_is_refused_never_run"),
    ("2", "a prediction row holding NaN, written as JSON lines", "rejected: never written as "
     "bare NaN (strict JSON)",
     "tests/test_evaluate.py::test_json_lines_are_strict_json_never_bare_nan"),
    ("3", "a 7 s clip given to classify_file", "handled: all 14 segments scored and averaged",
     "tests/test_saved.py::test_classify_file_scores_every_segment_of_a_7_s_clip"),
    ("3", "two 10 s files with speech in their first second only (a trained model)",
     "handled: scored on their speech, the 18 silent segments left out",
     "tests/test_saved.py::test_silent_segments_are_never_scored"),
    ("5", "`qat evaluate` on the audio the model trained on", "rejected: unless "
     "--allow-overlap, which scores it and flags it in the record and the summary",
     "tests/test_evaluate.py::test_the_models_own_training_audio_is_refused_unless_allowed_then_flagged"),
    ("9", "a record of another configuration at a run's record path, and one beside it",
     "handled: only a record whose stored config equals the run's is served",
     "tests/test_runs.py::test_a_record_is_served_only_if_its_stored_config_is_the_runs"),
    ("10", "`train_ser(force=True)` over a run whose record names its model", "handled: the "
     "new model is written beside it; the earlier file is unchanged, each record names its own",
     "tests/test_saved.py::test_a_forced_rerun_never_changes_the_model_an_earlier_record_names"),
    ("12", "records naming models under the cache (and old absolute names)", "handled: "
     "relative to the cache root; absolute names still load",
     "tests/test_saved.py::test_records_name_models_relative_to_the_cache_and_old_absolute_names_still_load"),
)  # fmt: skip

# Issue 37, finding by finding (its "Why" list in order), with the cases and tests that hold
# it. Not here: `qat run` / `qat report` finding no kernel (qat/notebooks.py, another change).
ISSUE_37: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("1", "code execution from a cache, model or network file",
     ("model-carries-code", "cached-network-carries-code", CHECKED_ELSEWHERE_37[0][3],
      CHECKED_ELSEWHERE_37[1][3])),
    ("2", "a model file with NaN weights or a NaN normaliser; bare NaN in JSON lines",
     ("model-nan-weights", "model-nan-normaliser", CHECKED_ELSEWHERE_37[2][3])),
    ("3", "an answer from a silent centre segment", ("predict-late-silence",
     CHECKED_ELSEWHERE_37[3][3], CHECKED_ELSEWHERE_37[4][3])),
    ("4", "`qat predict FOLDER` dropping broken links and linked subfolders",
     ("predict-folder-links",)),
    ("5", "`qat evaluate` on the corpus the model trained on",
     ("evaluate-own-training-data", "evaluate-own-training-data-allowed",
      CHECKED_ELSEWHERE_37[5][3])),
    ("6", "a mapping giving one emotion two targets",
     ("evaluate-mapping-repeated", "evaluate-mapping-synonym-repeated")),
    ("7", "byte-identical copies under two labels", ("manifest-same-audio-two-labels",)),
    ("8", "--rhemo A.pt and B.pt sharing a key where the real VGG16 reads RH-emo",
     ("rhemo-file-in-key-real-on-rhemo", "train-rhemo-empty")),
    ("9", "a record served under another configuration's file name",
     ("records-config-mismatch", CHECKED_ELSEWHERE_37[6][3])),
    ("10", "--force writing over the model an earlier record names", (CHECKED_ELSEWHERE_37[7][3],)),
    ("11", "QAT_REPORTS= writing into the current folder", ("env-reports-empty",)),
    ("12", "a relative QAT_CACHE in records", ("env-cache-relative", CHECKED_ELSEWHERE_37[8][3])),
    ("13", "empty list flags: --taps \"\" or --taps , sweeping all 13 taps",
     ("cli-sweep-taps-empty", "cli-sweep-taps-comma", "cli-train-tap-empty",
      "cli-evaluate-mapping-empty")),
    ("14", "a record with UA 1.7 reported", ("records-impossible-ua",)),
    ("15", "records without metrics, or with a UA as text, crashing the pages",
     ("records-no-metrics-readme", "records-no-metrics-report-only",
      "records-ua-string-readme")),
    ("16", "a 0.5 MB model file whose config says width=8; width=inf",
     ("model-width-8", "model-width-inf")),
    ("17", "unclear messages", ("model-named-pipe", "model-labels-count", "model-normaliser-size",
                                "manifest-10000-duplicate-rows", "evaluate-all-unreadable",
                                "evaluate-all-silent", "model-full-disk", "env-profile-bogus",
                                "env-profile-empty", "cli-fold-all-random")),
    ("18", "the earlier round's tracebacks: an unreadable corpus subfolder, a manifest of "
     "all-zero files, vgg16(width=inf)",
     ("tree-unlistable-folder", "tree-unlistable-folder-skip", "degenerate-all-silent",
      "vgg16-width-inf")),
)  # fmt: skip

# Issue 17, finding by finding: the cases (names in tests/bad_input_cases.py) and the tests
# (CHECKED_ELSEWHERE) that give it a verdict.
ISSUE_17: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("1", "`qat synth DIR` over the user's manifest.csv / prosody.csv",
     ("synth-users-manifest", "synth-users-prosody")),
    ("2", "`qat synth DIR --seed 1` over a SynthEmo folder holding the user's files",
     ("synth-reseed-keeps-users-files",)),
    ("3", '`qat synth ""` (an unset shell variable)', ("synth-empty-path", "cli-synth-empty-path")),
    ("4", "stale results for changed data; a relative root; no --force",
     ("results-relabelled-manifest", "results-relative-root", "train-force",
      CHECKED_ELSEWHERE[0][3])),
    ("5", "stale feature cache: same size, mtime kept", ("features-same-size-mtime-kept",)),
    ("6", "NaN in validation or test features", ("nan-features-val", "nan-features-test")),
    ("7", "degenerate data reported as a success",
     ("degenerate-single-emotion", "degenerate-one-item-test", "degenerate-silent-class")),
    ("8", "manifest parsing", ("manifest-duplicate-column", "manifest-unquoted-comma",
                               "manifest-nul", "manifest-unterminated-quote")),
    ("9", "audio: DC offset, anti-phase stereo, symlinks",
     ("wav-dc-offset", "wav-anti-phase-stereo", "tree-symlink-duplicate", "tree-dangling-link",
      "tree-looping-link", "tree-broken-links-skip", "tree-dangling-folder-link")),
    ("10", "anti-transfer numerics", ("at-float16-self", "at-float16", "at-scaled-1e10",
                                      "at-scaled-1e20", "at-scaled-1e-10",
                                      "at-empty-batch-cos2", "at-empty-batch-cka")),
    ("11", "QAT_PROFILE ignored by `qat train`", ("env-qat-profile",)),
    ("12", "a truncated or foreign record, checkpoint or cached network",
     ("records-unreadable-skipped", "records-readme", "records-demonstration-report-only",
      "records-rerun-truncated", "checkpoint-truncated", "cached-network-truncated")),
    ("13", "bad environment and arguments",
     ("env-cache-file", "env-cache-read-only", "env-data-file", "env-data-read-only",
      "env-reports-file", "env-reports-read-only", "cli-seed-2-64", "cli-sweep-jobs-negative",
      CHECKED_ELSEWHERE[1][3])),
    ("14", "leftovers after SIGKILL", (CHECKED_ELSEWHERE[2][3], CHECKED_ELSEWHERE[3][3])),
)  # fmt: skip


def _issue_rows(results: Sequence[Result], issue=None) -> list[tuple[str, str, str]]:
    """One row per finding of an issue (ISSUE_17 by default): each case's outcome (flagged if
    not as expected, "not run" outside an --only selection) and each test's verdict."""
    ran = {case.name: (outcome, verdict(case, outcome, message))
           for case, outcome, message in results}  # fmt: skip
    elsewhere = {test: shown for _, _, shown, test in (*CHECKED_ELSEWHERE, *CHECKED_ELSEWHERE_37)}
    rows = []
    for item, finding, names in issue or ISSUE_17:
        shown = []
        for name in names:
            if name in elsewhere:
                shown.append(f"{elsewhere[name].split(':')[0]} (`{name.split('::')[1]}`)")
            elif name in ran:
                outcome, why = ran[name]
                shown.append(f"`{name}` {outcome}" + (f" (**{why}**)" if why else ""))
            else:
                shown.append(f"`{name}` not run")
        rows.append((item, finding, "; ".join(shown)))
    return rows


def render(results: Sequence[Result]) -> str:
    """The markdown report: a summary, then one table per group."""
    unexpected = [(c, o, why) for c, o, m in results if (why := verdict(c, o, m))]
    counts = {o: sum(1 for _, out, _ in results if out == o) for o in OUTCOMES}
    lines = [
        "# Robustness: bad inputs and what qat does with them",
        "",
        "Generated by `python scripts/robustness_report.py` from the case table in "
        "`tests/bad_input_cases.py`; `tests/test_bad_input.py` runs the same cases and checks "
        "each outcome and message. Do not edit by hand. Fault tolerance (killed training, "
        "corrupted caches, full disk, concurrent writers, failed notebooks) is covered by "
        "`tests/test_faults.py`; the findings of the second hostile test that only a training "
        "or subprocess test can check, by the tests under *Checked elsewhere*.",
        "",
        "Outcomes: **handled** = used, converted where needed (converted audio is compared "
        "with the analytic signal it was written from, computed values with a float64 "
        "reference); **rejected** = a ValueError or OSError (what `qat` reports as a user "
        "error; for a command line, exit status 2 and one error line) whose message names the "
        "file or parameter and what is expected; **crashed** = any other error; **wrong** = "
        "handled but not as the reference says.",
        "",
        f"{len(results)} cases: " + ", ".join(f"{counts[o]} {o}" for o in OUTCOMES) + ".",
    ]
    if unexpected:
        shown = "; ".join(
            f"`{c.name}` {o}: {why}"
            + (f" (known bug, reported: {KNOWN_BUGS[c.name]})" if c.name in KNOWN_BUGS else "")
            for c, o, why in unexpected
        )
        lines.append(f"Not as expected ({len(unexpected)}): {shown}.")
    else:
        lines.append("Every case behaves as expected.")
    lines += [
        "",
        "## The second hostile test: a verdict for every finding",
        "",
        "Each finding of the hostile test, with the cases below (outcome) and the tests under "
        "*Checked elsewhere* (verdict) that hold it.",
        "",
        markdown_table(_issue_rows(results), ("Item", "Finding", "Verdicts")),
        "",
        "## The third hostile test (issue 37): a verdict for every finding",
        "",
        "Each finding of issue 37, in its order, with the cases below and the tests under "
        "*Checked elsewhere* that hold it. Not in this table: `qat run` and `qat report` "
        "finding no Jupyter kernel (qat/notebooks.py), and `qat train` on a manifest of "
        "all-zero files (an IndexError in qat/rundata.py), both left to other changes.",
        "",
        markdown_table(_issue_rows(results, ISSUE_37), ("Item", "Finding", "Verdicts")),
    ]
    for group in dict.fromkeys(c.group for c, _, _ in results):
        rows = []
        for case, outcome, message in results:
            if case.group == group:
                why = verdict(case, outcome, message)
                shown = f"**{outcome}**: {why}" if why else outcome
                rows.append((case.input, f"`{case.tried}`", shown, message))
        lines += ["", f"## {group}", "", markdown_table(rows, COLUMNS)]
    lines += [
        "",
        "## Checked elsewhere",
        "",
        "Issue-17 findings only a training or subprocess test can check; the verdict is what "
        "the named test asserts (`.venv/bin/pytest <test>`), not rerun by this script.",
        "",
        markdown_table(
            [(item, text, shown, f"`{test}`") for item, text, shown, test in CHECKED_ELSEWHERE],
            ("Item", "Input", "Verdict", "Checked by"),
        ),
        "",
        "Issue-37 findings checked by a test outside the table (a trained model, a real "
        "checkpoint, a run record), likewise not rerun by this script.",
        "",
        markdown_table(
            [(item, text, shown, f"`{test}`") for item, text, shown, test in CHECKED_ELSEWHERE_37],
            ("Item", "Input", "Verdict", "Checked by"),
        ),
    ]
    return "\n".join(lines) + "\n"


def write_report(results: Sequence[Result], path: Path) -> Path:
    """Render first, then write atomically: an error leaves any previous report as it was."""
    return io.write_text(path, render(results))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/robustness_report.py",
        description="Run the bad-input cases and write their report.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=paths.REPORTS / "robustness.md",
        help="where to write the report (default: reports/robustness.md, or under $QAT_REPORTS)",
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="run only these cases (names as in the table)"
    )
    args = parser.parse_args(argv)
    cases = CASES
    if args.only:
        names = {case.name for case in CASES}
        unknown = sorted(set(args.only) - names)
        if unknown:
            parser.error(f"unknown case(s) {unknown}; see tests/bad_input_cases.py")
        cases = tuple(case for case in CASES if case.name in set(args.only))
    results = run_all(cases)
    print(write_report(results, args.out))
    bad = [c.name for c, outcome, message in results if verdict(c, outcome, message)]
    if bad:
        print(f"{len(bad)} case(s) not as expected: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
