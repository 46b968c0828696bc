"""Where the kit reads and writes. Defaults live beside the package (the repository when
installed editable); each can be moved with an environment variable."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _folder(variable: str, default: Path) -> Path:
    """$variable as an absolute path, or `default` when it is unset.

    Empty is refused: `QAT_REPORTS=` (a variable exported empty) would otherwise mean the
    current folder, and runs/ and splits/ would land wherever the command was started. A
    relative path is made absolute once, here: records name files under these folders, and a
    relative name could be resolved from no other folder."""
    value = os.environ.get(variable)
    if value is None:
        return default
    if not value.strip():
        raise ValueError(
            f"${variable}={value!r}: expected a folder path; unset the variable for the "
            f"default ({default.name}/ in the qat checkout)"
        )
    return Path(os.path.abspath(os.path.expanduser(value)))


REPORTS = _folder("QAT_REPORTS", ROOT / "reports")  # committed results
DATA = _folder("QAT_DATA", ROOT / "data")  # synthesised corpora
CACHE = _folder("QAT_CACHE", ROOT / "cache")  # features, checkpoints, networks
