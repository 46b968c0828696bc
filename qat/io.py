"""Writing files safely: the one home for atomic writes, write-once and write-beside records,
build locks and figure saving.

Every write goes to a temporary file in the target's folder (same file system), is flushed
to disk, then renamed onto its final name, so a crash, a full disk or a parallel writer
leaves either the complete file or the previous one, never half a file. Temporary names
start with "." and end with ".tmp" and carry the writer's pid, so `clean_stale_temporaries`
can remove what a killed process left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; builds are not shared across processes there
    fcntl = None

TMP_SUFFIX = ".tmp"


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(payload) -> str:
    """The kit's JSON spelling (arrays as lists, paths as strings, one-space indent)."""
    return json.dumps(payload, indent=1, default=_jsonable)


def ensure_folder(folder: str | os.PathLike, what: str = "output") -> Path:
    """Create `folder` if needed; one clear message if it is a file or cannot be written."""
    folder = Path(folder)
    for parent in (folder, *folder.parents):  # the nearest existing ancestor must be a folder
        if parent.exists():
            if not parent.is_dir():
                where = "" if parent == folder else f": {parent}"
                raise NotADirectoryError(
                    f"{what} folder {folder}{where} is a file; expected a folder"
                )
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the {what} folder {folder}: {err.strerror or err}") from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} folder {folder} is not writable")
    return folder


@contextlib.contextmanager
def _temporary(path: Path) -> Iterator[str]:
    """A temporary name beside `path`, removed whatever happens."""
    ensure_folder(path.parent)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX
    )
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read by others
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def temporary_beside(path: str | os.PathLike) -> contextlib.AbstractContextManager[str]:
    """A context manager giving a temporary name beside `path` (this module's naming, so
    `clean_stale_temporaries` finds it after a kill), removed on exit unless renamed: for
    writers that fill a file over a long computation (a memory-mapped array) and rename it
    onto `path` themselves with os.replace."""
    return _temporary(Path(path))


def _fsync(tmp: str) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())


def _write_synced(tmp: str, text: str) -> None:
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_TRUNC), "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def write_atomic(
    path: str | os.PathLike, write: Callable[[str], object], *, fsync: bool = True
) -> Path:
    """Call write(temporary path) beside `path`, then rename it onto `path` (replacing it).

    fsync=False skips flushing the file to disk before the rename: for the many small files of
    a build whose completion is marked by a final, flushed file (a synthesised corpus)."""
    path = Path(path)
    with _temporary(path) as tmp:
        try:
            write(tmp)
            if fsync:
                _fsync(tmp)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:  # torch reports a full disk as a RuntimeError
            raise OSError(f"could not write {path}: {getattr(err, 'strerror', None) or err}; "
                          "any previous version is kept") from err  # fmt: skip
    return path


@contextlib.contextmanager
def locked(lock: str | os.PathLike, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the file `lock` (created if missing, kept afterwards) for the
    block: a second process building the same thing waits here (after calling `on_wait`),
    then finds it built. flock: the system releases the lock if its holder dies."""
    if fcntl is None:
        yield
        return
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda tmp: _write_synced(tmp, text))


def write_json(path: str | os.PathLike, payload) -> Path:
    text = to_json(payload)  # fails before touching the disk
    return write_text(path, text)


def _write_bytes(tmp: str, data: bytes) -> None:
    # os.write, not a buffered file: a full disk surfaces as OSError ENOSPC ("No space left on
    # device"), where torch.save straight to disk reports "enforce fail at inline_container.cc".
    fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (replacing it)."""
    return write_atomic(path, lambda tmp: _write_bytes(tmp, data), fsync=False)


def write_once(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call write(temporary path) beside `path`, then give it its final name only if no file
    has it (the temporary file is hard-linked to the name, which fails if the name exists):
    FileExistsError, and `path` is left as it was. `write` flushes the file itself."""
    path = Path(path)
    with _temporary(path) as tmp:
        try:
            write(tmp)
            os.link(tmp, path)
        except FileExistsError as err:
            raise FileExistsError(f"{path} exists; it is never overwritten") from err
        except (OSError, RuntimeError) as err:
            raise OSError(f"could not write {path}: {getattr(err, 'strerror', None) or err}"
                          ) from err  # fmt: skip
    return path


def unique_beside(path: str | os.PathLike) -> Path:
    """A new name beside `path`: <stem>-<time ns>-<pid><suffix>."""
    path = Path(path)
    return path.with_name(f"{path.stem}-{time.time_ns()}-{os.getpid()}{path.suffix}")


def write_beside(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """write_once to `path`, or, if a file is already there, to a new name beside it
    (unique_beside): what is there is never changed. Returns the path written."""
    try:
        return write_once(path, write)
    except FileExistsError:
        return write_once(unique_beside(path), write)


def write_bytes_beside(path: str | os.PathLike, data: bytes) -> Path:
    """`data` written once, to `path` or beside it (write_beside)."""
    return write_beside(path, lambda tmp: _write_bytes(tmp, data))


def write_json_once(path: str | os.PathLike, payload) -> Path:
    """Write `payload` to `path` atomically; refuse to overwrite an existing file."""
    text = to_json(payload)  # fails before touching the disk
    try:
        return write_once(path, lambda tmp: _write_synced(tmp, text))
    except FileExistsError as err:
        raise FileExistsError(f"{path} exists; run records are never overwritten") from err


def write_json_beside(path: str | os.PathLike, payload) -> Path:
    """Write to `path`, or, if a file is already there (a forced rerun, or a parallel run that
    finished first), beside it under a unique name: a finished run is never lost."""
    text = to_json(payload)
    return write_beside(path, lambda tmp: _write_synced(tmp, text))


def summarise(items, shown: int = 3) -> str:
    """Many items in a one-line message: all of a short list, else the first `shown` and how
    many more ("a, b, c and 9997 more")."""
    items = [str(item) for item in items]
    head = ", ".join(items[:shown])
    return head if len(items) <= shown else f"{head} and {len(items) - shown} more"


def save_figure(fig, folder: str | os.PathLike, name: str, dpi: int = 110) -> Path:
    """Save a matplotlib figure as <folder>/<name>.png, atomically; returns the path."""
    return write_atomic(
        Path(folder) / f"{name}.png", lambda tmp: fig.savefig(tmp, format="png", dpi=dpi)
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Remove temporary files of this module's naming whose writer process is gone (a killed
    run); returns what was removed. Files of live writers are left alone."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    pattern = f".*{TMP_SUFFIX}"
    for tmp in folder.rglob(pattern) if recursive else folder.glob(pattern):
        parts = tmp.name.split(".")  # ".<name>.<pid>.<random>.tmp"
        pid = int(parts[-3]) if len(parts) >= 5 and parts[-3].isdigit() else None
        if pid is not None and not _alive(pid):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def temporary_folder(prefix: str, parent: str | os.PathLike | None = None):
    """A context manager giving a private folder <parent>/<prefix><pid>-<random> (parent: the
    system's temporary folder), removed with its content on exit. Folders of this naming whose
    process is gone (a killed run) are removed first."""
    parent = Path(parent if parent is not None else tempfile.gettempdir())
    for folder in parent.glob(f"{glob.escape(prefix)}*"):
        pid = folder.name[len(prefix) :].split("-", 1)[0]
        if folder.is_dir() and not folder.is_symlink() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-", dir=parent)


def exit_with_parent(owner_pid: int | None = None, interval: float = 0.5) -> None:
    """Make this (worker) process end when its parent dies, or `owner_pid` if given: call it
    from a process pool's initializer, so that a run killed with SIGKILL leaves no orphan
    workers waiting forever on their task queue.

    On Linux the kernel kills the worker when its parent exits (prctl PR_SET_PDEATHSIG); on
    every platform a daemon thread also checks every `interval` seconds that the parent is
    still the same process and `owner_pid` still runs, and exits otherwise."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG

    def orphaned() -> bool:
        return os.getppid() != parent or (owner_pid is not None and not _alive(owner_pid))

    def watch() -> None:
        while not orphaned():
            time.sleep(interval)
        os._exit(1)

    if orphaned():  # the parent died before this process got here
        os._exit(1)
    threading.Thread(target=watch, name="qat-exit-with-parent", daemon=True).start()
