"""Tests never write into the repository: data, caches and run records go to a temporary
folder unless the caller (e.g. `make test`) has chosen one."""

import os
import tempfile

_scratch = tempfile.mkdtemp(prefix="qat-tests-")
for name in ("QAT_DATA", "QAT_CACHE", "QAT_REPORTS"):
    os.environ.setdefault(name, os.path.join(_scratch, name.lower()))
os.environ.setdefault("QAT_PROFILE", "smoke")
