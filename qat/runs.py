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
from qat import paths


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


def record_path(kind: str, config: dict, reports: Path | None = None) -> Path:
    return Path(reports or paths.REPORTS) / "runs" / f"{kind}-{config_key(config)}.json"


class RecordError(ValueError):
    """A file under runs/ that is not a readable run record."""


def load_record(path: Path) -> dict:
    """One record; RecordError naming the file if it is truncated or not a run record."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecordError(f"{path}: not a readable run record ({err})") from err
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise RecordError(f"{path}: not a run record (expected a JSON object with a 'config')")
    return record


def load_records(reports: Path | None = None, kind: str | None = None) -> list[dict]:
    """Every readable record under <reports>/runs/ (of `kind`, e.g. "ser"), in file-name order.
    Unreadable files are skipped with one warning listing them."""
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
            f"skipped {len(bad)} unreadable file(s) under {folder}: " + "; ".join(bad),
            stacklevel=2,
        )
    return records
