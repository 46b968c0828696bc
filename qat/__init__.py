"""qat: quaternion anti-transfer learning for speech emotion recognition."""

import os

# Idle OpenMP threads otherwise spin-wait: on a shared 2-core machine that made a training
# step ~20x slower (2 s instead of 110 ms). Only effective before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"


def __getattr__(name: str):
    # qat.load_model without importing torch at `import qat` (the CLI and notebooks import qat
    # first; torch takes seconds).
    if name == "load_model":
        from qat.saved import load_model

        return load_model
    raise AttributeError(f"module 'qat' has no attribute {name!r}")
