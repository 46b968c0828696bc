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


def _issue_rows(results: Sequence[Result]) -> list[tuple[str, str, str]]:
    """One row per issue-17 finding: each case's outcome (flagged if not as expected, "not
    run" outside an --only selection) and each test's verdict."""
    ran = {case.name: (outcome, verdict(case, outcome, message))
           for case, outcome, message in results}  # fmt: skip
    elsewhere = {test: shown for _, _, shown, test in CHECKED_ELSEWHERE}
    rows = []
    for item, finding, names in ISSUE_17:
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
