"""Benchmarks, one module per subcommand: `python -m qat.bench {layers,data,...,all}`.

Each subcommand module defines `run(quick: bool = False) -> str`, which measures side by side
in one process, prints its table, writes its section of reports/benchmarks.md (unless quick),
and returns the markdown body.
"""

SUBCOMMANDS = (
    "layers",
    "data",
    "antitransfer",
    "quaternion",
    "efficiency",
    "scaling",
    "probe",
    "dfr",
    "layout",
    "compile",
    "scale",
    "run",
)
