"""Run records: one JSON file per run under reports/runs/, written atomically, never
overwritten. A record's file name is the hash of its configuration, so a sweep can skip runs
that already have a record and two processes can never clobber each other's results."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import qat
from qat import paths


def config_key(config: dict) -> str:
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def code_version() -> str:
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


def write_json_once(path: Path, payload: dict) -> Path:
    """Write `payload` to `path` atomically; refuse to overwrite an existing file.

    The JSON goes to a temporary file in the same folder, is flushed to disk, then linked to
    its final name (os.link fails if the name exists), so a crash, a full disk or a parallel
    writer leaves either the complete record or nothing."""
    path = Path(path)
    text = json.dumps(payload, indent=1, default=_jsonable)  # fails before touching the disk
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OSError(f"cannot write run records to {path.parent}: {err.strerror}") from err
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)
    except FileExistsError as err:
        raise FileExistsError(f"{path} exists; run records are never overwritten") from err
    except OSError as err:
        raise OSError(f"could not write {path}: {err.strerror or err}") from err
    finally:
        os.unlink(tmp)
    return path


def write_json_beside(path: Path, payload: dict) -> Path:
    """Write to `path`, or, if a record is already there (a forced rerun, or a parallel run
    that finished first), beside it under a unique name: a finished run is never lost."""
    try:
        return write_json_once(path, payload)
    except FileExistsError:
        unique = path.with_name(f"{path.stem}-{time.time_ns()}-{os.getpid()}.json")
        return write_json_once(unique, payload)


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def load_records(reports: Path | None = None, kind: str | None = None) -> list[dict]:
    folder = Path(reports or paths.REPORTS) / "runs"
    pattern = f"{kind}-*.json" if kind else "*.json"
    return [json.loads(p.read_text()) for p in sorted(folder.glob(pattern))]


def load_record(path: Path) -> dict:
    return json.loads(Path(path).read_text())
