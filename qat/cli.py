"""`qat ...` (also `python -m qat`): run notebooks headless, the report pipeline, one training
run, a sweep, or build SynthEmo."""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from qat import paths

NOTEBOOKS = paths.ROOT / "notebooks"
KERNEL = "qat"


def _value(text: str):
    """`-p beta 1.0` gives a float, `-p tap conv2_1` a string, `-p seeds [0,1]` a list."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run_notebook(
    notebook: str | Path, parameters: dict | None = None, output: Path | None = None
) -> Path:
    """Execute a notebook with papermill into reports/ (the source stays output-free)."""
    import papermill

    notebook = Path(notebook)
    if not notebook.exists():
        raise FileNotFoundError(f"notebook {notebook} does not exist; see {NOTEBOOKS}")
    parameters = parameters or {}
    if output is None:
        suffix = "".join(f"-{k}_{v}" for k, v in sorted(parameters.items()) if k != "profile")
        output = paths.REPORTS / f"{notebook.stem}{suffix}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.partial.ipynb")
    # Executed into a temporary name first: an interrupted run leaves no half-written report.
    try:
        papermill.execute_notebook(
            str(notebook),
            str(tmp),
            parameters=parameters,
            kernel_name=KERNEL,
            cwd=str(notebook.parent),
        )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(output)
    return output


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of one train_ser run (shared by `qat train` and `python -m qat.train`)."""
    for name, default in [("corpus", "synthemo"), ("setup", "confounded"), ("model", "real"),
                          ("method", "baseline"), ("orthogonal", "word"), ("tap", "conv2_1"),
                          ("gram", "sample"), ("profile", "cpu"), ("root", None)]:  # fmt: skip
        parser.add_argument(f"--{name}", default=default)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--lam", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)


def train_from_args(args: argparse.Namespace) -> dict:
    from qat.experiments import train_ser

    kwargs = {k: v for k, v in vars(args).items() if k != "command"}
    kwargs["tap"] = kwargs["tap"].split(",")
    record = train_ser(**kwargs)
    print({k: record["metrics"][k] for k in ("ua", "wa", "macro_f1")})
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="qat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a notebook headless (papermill)")
    run.add_argument("notebook")
    run.add_argument(
        "-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE")
    )
    run.add_argument("-o", "--output", type=Path)

    report = sub.add_parser("report", help="run notebooks 01-05 and write reports/README.md")
    report.add_argument("--profile", default="cpu")

    add_train_arguments(sub.add_parser("train", help="one SER run; writes reports/runs/ser-*.json"))

    sweep = sub.add_parser("sweep", help="AT at many taps x models x seeds, in parallel jobs")
    for name, default in [("corpus", "synthemo"), ("setup", "confounded"), ("method", "at"),
                          ("orthogonal", "word"), ("profile", "cpu"), ("taps", "all"),
                          ("models", "real,quaternion")]:  # fmt: skip
        sweep.add_argument(f"--{name}", default=default)
    sweep.add_argument("--beta", type=float, default=1.0)
    sweep.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    sweep.add_argument("--jobs", type=int, default=2)

    demo = sub.add_parser("demonstration", help="issue 5's grid on SynthEmo, then its report")
    demo.add_argument("--jobs", type=int, default=2)
    demo.add_argument("--report-only", action="store_true")

    synth = sub.add_parser("synth", help="build a SynthEmo corpus")
    synth.add_argument("out_dir", type=Path)
    synth.add_argument("--seed", type=int, default=0)

    args = parser.parse_args(argv)
    if args.command == "run":
        params = {name: _value(value) for name, value in args.parameter}
        print(run_notebook(args.notebook, params, args.output))
    elif args.command == "report":
        from qat.report import run_pipeline

        print(run_pipeline(profile=args.profile))
    elif args.command == "train":
        train_from_args(args)
    elif args.command == "sweep":
        from qat.experiments import sweep_configs
        from qat.sweep import run_grid

        configs = sweep_configs(
            taps=None if args.taps == "all" else args.taps.split(","),
            models=args.models.split(","),
            seeds=range(args.seeds),
            corpus=args.corpus, setup=args.setup, method=args.method,
            orthogonal=args.orthogonal, profile=args.profile, beta=args.beta,
        )  # fmt: skip
        print(f"{len(run_grid(configs, jobs=args.jobs))} run records under reports/runs/")
    elif args.command == "demonstration":
        from qat import demonstration

        if not args.report_only:
            demonstration.run(jobs=args.jobs)
        print(demonstration.write_report())
    elif args.command == "synth":
        from qat.data.synth import make_synthemo

        print(f"{len(make_synthemo(args.out_dir, seed=args.seed))} utterances in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
