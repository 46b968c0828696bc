"""Where the kit reads and writes. Defaults live beside the package (the repository when
installed editable); each can be moved with an environment variable."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTS = Path(os.environ.get("QAT_REPORTS", ROOT / "reports"))  # committed results
DATA = Path(os.environ.get("QAT_DATA", ROOT / "data"))  # synthesised corpora
CACHE = Path(os.environ.get("QAT_CACHE", ROOT / "cache"))  # features, checkpoints, networks
