"""Run records: one JSON file per run under reports/runs/, named by the hash of the run's
configuration, so a sweep can skip runs that already have a record and two processes can
never clobber each other's results (qat.io writes them once, atomically). Reading skips a
truncated or foreign file with one warning naming it: one bad file never costs a report."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import warnings
from pathlib import Path

import qat
from qat import io, paths


def config_key(config: dict) -> str:
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@functools.cache
def code_version() -> str:
    """The qat this process runs: version, commit and "+dirty" when qat/ has uncommitted
    changes. Read once per process, at the first call (a run calls it when it starts), so a
    long sweep's worker keeps naming the code it imported while the tree changes under it."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "qat"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return f"qat {qat.__version__} ({commit}{'+dirty' if dirty else ''})"
    except (OSError, subprocess.SubprocessError):
        return f"qat {qat.__version__}"


# Folders under runs/ holding earlier protocols' records, newest first: no page reads them; the
# tour's notebooks may show one of their runs (qat.widgets.recorded).
ARCHIVES = ("v2",)


def record_path(kind: str, config: dict, reports: Path | None = None) -> Path:
    return Path(reports or paths.REPORTS) / "runs" / f"{kind}-{config_key(config)}.json"


class RecordError(ValueError):
    """A file under runs/ that is not a readable run record."""


# Shares in [0, 1] wherever a record holds them: a value outside is impossible, and a reader
# would report it as a result (a UA of 1.7, a gain of +1.5).
SHARES = {
    "metrics": ("ua", "wa", "macro_f1"),
    "confound": ("congruent_ua", "incongruent_ua", "follows_shortcut", "congruent_share_test"),
    "groups": ("worst_group", "average"),
    "selection_set": ("ua", "worst_group"),
}
# What every reader of a kind takes for granted (test results).
REQUIRED = {"ser": ("metrics",), "eval": ("metrics",)}


def _share_problem(section: str, name: str, value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{section}.{name} is {value!r}, not a number"
    if not 0.0 <= value <= 1.0:  # NaN fails too
        return f"{section}.{name} = {value!r} is outside [0, 1]"
    return None


def record_problem(record: dict) -> str | None:
    """Why a run record cannot be used (a field its kind needs is missing, or a share is
    outside [0, 1] or not a number), or None."""
    for field in REQUIRED.get(record.get("kind"), ()):
        if not isinstance(record.get(field), dict):
            return f"no {field!r} (an old or foreign file?)"
    if record.get("kind") in REQUIRED and "ua" not in record["metrics"]:
        return "no metrics.ua"
    for section, names in SHARES.items():
        values = record.get(section)
        if not isinstance(values, dict):
            continue
        for name in names:
            if problem := _share_problem(section, name, values.get(name)):
                return problem
    return None


def load_record(path: Path) -> dict:
    """One record; RecordError naming the file if it is truncated, not a run record, lacks a
    field its kind needs, or holds an impossible number."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecordError(f"{path}: not a readable run record ({err})") from err
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise RecordError(f"{path}: not a run record (expected a JSON object with a 'config')")
    if problem := record_problem(record):
        raise RecordError(f"{path}: not a usable run record: {problem}")
    return record


def _plain(config: dict) -> dict:
    """A configuration as a record stores it (JSON: tuples are lists, paths strings)."""
    return json.loads(json.dumps(config, default=str))


def find_record(kind: str, config: dict, reports: Path | None = None) -> tuple[Path, dict] | None:
    """(path, record) of the run of `config`: the record at record_path(kind, config), or one
    written beside it (<kind>-<key>-*.json: a forced rerun, a parallel writer), whose stored
    config equals `config`; None if there is none.

    The file name alone is never trusted: a record whose stored config is another (a file
    copied or renamed under this configuration's name) is not served, with a warning. An
    unreadable record at the path itself raises RecordError (it would otherwise be trained
    over, silently, on every run)."""
    target = record_path(kind, config, reports)
    wanted = _plain(config)
    others = []
    for path in [target, *sorted(target.parent.glob(f"{target.stem}-*.json"))]:
        if not path.is_file():
            continue
        try:
            record = load_record(path)
        except RecordError:
            if path == target:
                raise
            continue
        if record["config"] == wanted:
            return path, record
        others.append((path, record["config"]))
    if others:
        path, stored = others[0]
        differ = sorted(k for k in {*stored, *wanted} if stored.get(k) != wanted.get(k))
        warnings.warn(
            f"{path}: its stored config is another run's (differs in {io.summarise(differ)}), "
            "so it is not served; the run is done again and its record written beside it",
            stacklevel=2,
        )
    return None


def load_records(reports: Path | None = None, kind: str | None = None) -> list[dict]:
    """Every usable record under <reports>/runs/ (of `kind`, e.g. "ser"), in file-name order.
    Unreadable or unusable files (see load_record) are skipped with one warning naming them."""
    folder = Path(reports or paths.REPORTS) / "runs"
    pattern = f"{kind}-*.json" if kind else "*.json"
    records, bad = [], []
    for path in sorted(folder.glob(pattern)):
        try:
            records.append(load_record(path))
        except RecordError as err:
            bad.append(str(err))
    if bad:
        warnings.warn(
            f"skipped {len(bad)} unreadable file(s) under {folder}: " + io.summarise(bad),
            stacklevel=2,
        )
    return records
