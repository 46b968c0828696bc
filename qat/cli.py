"""`qat ...` (also `python -m qat`): run notebooks headless, the report pipeline, one training
run, a sweep, the demonstration, or build SynthEmo.

The options of a run are built from qat.config.RunConfig: every field is an option with its
choices and help line, and the same validation (and message) as the notebooks and the panel.
A user error prints one line, `qat: error: ...`, without a traceback (QAT_DEBUG=1 shows it);
that includes an unusable $QAT_REPORTS, $QAT_DATA or $QAT_CACHE (qat.paths refuses them when
first imported, so this module imports the kit only inside main).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qat.config import RunConfig

USER_ERRORS = (ValueError, OSError)  # FileNotFoundError, NotADirectoryError, PermissionError...


def _value(text: str):
    """`-p beta 1.0` gives a float, `-p tap conv2_1` a string, `-p seeds [0,1]` a list."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _taps(text: str) -> tuple[str, ...]:
    """Comma-separated taps; empty (an unset variable, a lone comma) is refused, never read as
    "no tap" or "every tap"."""
    taps = tuple(t.strip() for t in text.split(",") if t.strip())
    if not taps:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one or more comma-separated taps")
    return taps


def _mapping_text(text: str) -> str:
    """An empty --mapping (an unset variable) is refused: leave the flag out for the default."""
    if not text.replace(",", "").strip():
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected EMOTION=MODEL_EMOTION pairs; leave --mapping out for the default"
        )
    return text


def _fold(text: str):
    """A fold index, or "all" (every fold of the corpus, one after the other)."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a fold index or 'all'") from None


def _nonempty_path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset shell variable?)")
    return Path(text)


def add_config_arguments(parser: argparse.ArgumentParser, exclude=()) -> None:
    """One option per RunConfig field, with its type, choices and help line. Defaults are
    left to RunConfig (so $QAT_PROFILE applies); only the options given are passed on."""
    from qat import config as cfg

    for field in cfg.fields():
        if field.name in exclude:
            continue
        meta, kw = field.metadata, {"default": None, "help": field.metadata["help"]}
        default = field.default if field.default is not dataclasses.MISSING else None
        if field.type == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif field.name == "fold":
            kw.update(type=_fold, metavar="FOLD|all")
            kw["help"] += "; all: every fold, one after the other"
        elif field.name == "tap":
            kw.update(type=_taps, metavar="TAP[,TAP...]")
            kw["help"] += f"; one of {', '.join(meta['choices'])}"
            default = ",".join(default)
        elif meta["choices"] is not None:
            kw["choices"] = meta["choices"]
        else:
            kw["type"] = {"float": float, "int": int}.get(field.type.removesuffix(" | None"), str)
        if default is not None:
            kw["help"] += f" (default {default})"
        parser.add_argument(_option(field.name), **kw)


def config_from_args(args: argparse.Namespace, **fixed) -> RunConfig:
    from qat import config as cfg

    names = {f.name for f in cfg.fields()}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return cfg.RunConfig(**{**given, **fixed})


def _add_execution_arguments(parser: argparse.ArgumentParser, engine: bool = True) -> None:
    """Where and how runs execute: never in a record's key, the same records either way."""
    if engine:
        parser.add_argument(
            "--engine",
            choices=("local", "ray"),
            default="local",
            help="local: --jobs processes here; ray: one Ray task per run",
        )
        parser.add_argument(
            "--address",
            default=None,
            help="ray: the cluster's address, e.g. auto or ray://HEAD:10001 "
            "(default: a local cluster started for the grid, on 127.0.0.1)",
        )
        parser.add_argument(
            "--cpus-per-run",
            type=int,
            default=None,
            help="ray: CPUs each run asks for (default: cores / --jobs)",
        )
        parser.add_argument(
            "--gpus-per-run",
            type=float,
            default=0.0,
            help="ray: GPUs each run asks for, below 1 a share of one",
        )
    parser.add_argument(
        "--device",
        default=None,
        metavar="cpu|cuda|cuda:N",
        help="where runs train (default: cuda when available); with plain "
        "cuda the local pool gives each job a GPU of its own, in turn",
    )
    parser.add_argument("--memory-budget", default=None, metavar="SIZE",
                        help="a split larger than this (e.g. 8G) is read batch by batch from "
                        "the feature cache (default: a quarter of RAM)")  # fmt: skip


def _execution(args):
    """The execution settings given: the device and memory budget for every run this command
    starts ($QAT_DEVICE, $QAT_MEMORY_BUDGET: the workers read them), and the engine."""
    from qat import rundata, sweep

    if args.device is not None:
        os.environ[rundata.DEVICE_VARIABLE] = rundata.check_device(args.device, "--device")
    if args.memory_budget is not None:
        rundata.parse_bytes(args.memory_budget, "--memory-budget")
        os.environ[rundata.MEMORY_VARIABLE] = args.memory_budget
    if not hasattr(args, "engine"):
        return None
    local = args.engine == "local"
    if args.address is not None and local:
        raise ValueError(f"--address {args.address}: a Ray cluster's address, with --engine ray")
    if args.gpus_per_run and local:
        raise ValueError("--gpus-per-run: with --engine ray (the local pool gives each job a "
                         "GPU of its own with --device cuda)")  # fmt: skip
    return sweep.Engine(args.engine, address=args.address, cpus_per_run=args.cpus_per_run,
                        gpus_per_run=args.gpus_per_run,
                        gpus=rundata.worker_gpus() if local else ())  # fmt: skip


def _train(args) -> None:
    import torch

    from qat.experiments import train_ser
    from qat.rundata import fold_count

    _execution(args)
    if args.fold == "all":
        try:
            first = config_from_args(args, fold=0)
        except ValueError as err:  # about the first fold: say what was typed
            raise ValueError(str(err).replace("fold=0", "fold='all'", 1)) from None
        folds = [first.replace(fold=f) for f in range(fold_count(first))]
        uas = [train_ser(c, force=args.force)["metrics"]["ua"] for c in folds]
        for c, ua in zip(folds, uas, strict=True):
            print(f"{c.label()}: ua {ua:.4f}")
        sd = statistics.stdev(uas) if len(uas) > 1 else float("nan")
        print(f"{len(uas)} folds: UA mean {statistics.fmean(uas):.4f}, SD {sd:.4f}")
        return
    config = config_from_args(args)
    if "RANK" in os.environ and not torch.distributed.is_initialized():  # started by torchrun
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        record = train_ser(config, force=args.force)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    metrics = {k: round(record["metrics"][k], 4) for k in ("ua", "wa", "macro_f1")}
    print(f"{config.label()}: {metrics}")
    for note in record.get("warnings") or []:
        print(f"warning: {note}")


def _sweep(args) -> None:
    from qat import config as cfg
    from qat.config import VGG16_TAPS
    from qat.experiments import run_configs, sweep_configs

    try:
        taps = VGG16_TAPS if args.taps == "all" else _taps(args.taps)
    except argparse.ArgumentTypeError as err:
        raise ValueError(f"--taps {err} (or all)") from None
    for tap in taps:
        cfg.validate_field("tap", tap)
    models = args.models.split(",")
    for model in models:
        cfg.validate_field("model", model)
    cfg.check_number("seeds", args.seeds, 1, integer=True)
    cfg.check_number("jobs", args.jobs, 1, integer=True)
    engine = _execution(args)
    fixed = {k: v for k, v in vars(args).items() if k in {f.name for f in cfg.fields()}}
    settings = {k: v for k, v in fixed.items() if v is not None}
    settings.setdefault("method", "at")
    configs = sweep_configs(taps, models, range(args.seeds), **settings)
    done = run_configs(configs, jobs=args.jobs, engine=engine)
    print(f"{len(done)} run records under reports/runs/")


def _models(args) -> None:
    from qat import paths
    from qat.saved import saved_models

    if args.ship:
        from qat import runs, shipping

        rows = shipping.ship(runs.load_records(kind="ser"))
        for row in rows:
            print(f"{row['finalist']}: {row['shipped']} ({row['bytes'] / 2**20:.2f} MiB), a "
                  f"float16 copy of {row['source']}")  # fmt: skip
        print(f"{len(rows)} shipped model(s) under models/, listed in models/index.json")
        return
    rows = saved_models()
    here = [r for r in rows if r["exists"]]
    header = ("label", "setting", "test UA", "path")
    table = [header, *((r["label"], r["setting"], f"{r['ua']:.4f}", str(r["path"]))
                       for r in here)]  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]))
    missing = len(rows) - len(here)
    elsewhere = f"; {missing} more named by records are not in this cache" if missing else ""
    print(f"{len(here)} saved model(s) under {paths.CACHE}{elsewhere}")


def _perturb(args) -> None:
    from qat import perturbation_page, perturbed

    if not args.report_only:
        if args.model is None:
            raise ValueError("perturb: expected --model PATH (a saved model), or --report-only")
        for record in perturbed.evaluate_perturbations(
            args.model, args.only, seed=args.seed, items=args.items, force=args.force
        ):
            print(perturbed.summary_line(record))
    elif args.model is not None or args.only is not None:
        raise ValueError("perturb --report-only evaluates nothing: leave out --model and --only")
    print(perturbation_page.write_page())


def build_parser() -> argparse.ArgumentParser:
    from qat import config as cfg

    parser = argparse.ArgumentParser(prog="qat", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a notebook headless (papermill) into reports/")
    run.add_argument("notebook", type=_nonempty_path)
    run.add_argument(
        "-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
        help="a value for the notebook's parameters cell (Python literal or plain text)",
    )  # fmt: skip
    run.add_argument("-o", "--output", type=_nonempty_path, help="the executed copy's path")

    report = sub.add_parser("report", help="run notebooks 01-05, then write reports/README.md "
                            "(another profile than cpu: reports/<profile>/)")  # fmt: skip
    report.add_argument("--profile", choices=tuple(cfg.PROFILES), default=None,
                        help="default $QAT_PROFILE or cpu")  # fmt: skip
    report.add_argument("--tour", action="store_true",
                        help="what `make demo` runs, in minutes: notebooks 01-05 trained small "
                        "(reports/smoke/), then 04 and 05 on the committed cpu records and "
                        "reports/README.md from them, nothing trained")  # fmt: skip

    train = sub.add_parser("train", help="one SER run; writes reports/runs/ser-<hash>.json")
    add_config_arguments(train)
    train.add_argument("--force", action="store_true",
                       help="train again even if a record exists (written beside it)")  # fmt: skip
    _add_execution_arguments(train, engine=False)

    sweep = sub.add_parser("sweep", help="a method at many taps x models x seeds, in parallel")
    add_config_arguments(sweep, exclude=("tap", "model", "seed"))
    sweep.add_argument("--taps", default="all", help="comma-separated taps, or all (13)")
    sweep.add_argument("--models", default="real,quaternion", help="comma-separated models")
    sweep.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    sweep.add_argument("--jobs", type=int, default=2, help="parallel processes")
    _add_execution_arguments(sweep)

    demo = sub.add_parser(
        "demonstration",
        help="compare the invariance methods on the confounded SynthEmo grid (it resumes), "
        "then write the pages built from the records: reports/demonstration.md, "
        "reports/instrument.md and reports/README.md",
    )
    demo.add_argument("--jobs", type=int, default=2, help="parallel processes")
    demo.add_argument("--models", default="real,quaternion", help="comma-separated models")
    demo.add_argument("--stages", default="selection,finalists,sweep,variants,costs",
                      help="comma-separated stages, run in this order; costs times every "
                      "finalist's and swept tap's step side by side in one process")  # fmt: skip
    demo.add_argument("--report-only", action="store_true",
                      help="rebuild the pages from the records without training")  # fmt: skip
    _add_execution_arguments(demo)

    rhemo = sub.add_parser(
        "rhemo", help="pretrain RH-emo on a corpus's training split and save it for reuse "
        "(train --rhemo PATH)",
    )  # fmt: skip
    add_config_arguments(rhemo, exclude=("model", "method", "orthogonal", "orthogonal_root",
                                         "tap", "beta", "gram", "lam", "init_from_orthogonal",
                                         "rhemo"))  # fmt: skip
    rhemo.add_argument("--out", type=_nonempty_path, help="the file to write (must not exist)")

    inst = sub.add_parser(
        "instrument",
        help="the instrument's pilot (candidate recipes), final (frozen cpu) baseline and "
        "ceiling runs, oracle and upstream networks, diagnose (ceilings with one upstream or "
        "width change each), confirm (those that helped, on fresh pairs) or costs (the frozen "
        "baselines' steps timed side by side); it resumes; then reports/instrument.md",
    )
    inst.add_argument("--stage", choices=("pilot", "final", "diagnose", "confirm", "embedding",
                                          "embedding-confirm", "level", "precision", "costs"),
                      default="pilot", help="embedding: RH-emo candidates' ceilings on the "
                      "selection pairs; embedding-confirm: the chosen one on fresh pairs; "
                      "level: the input-level candidates (reports/perturbations.md); "
                      "precision: bf16 against fp32 runs")  # fmt: skip
    inst.add_argument("--models", default="real,quaternion", help="comma-separated models")
    inst.add_argument("--jobs", type=int, default=2, help="parallel processes")
    inst.add_argument("--report-only", action="store_true",
                      help="rebuild the page from the records without training")  # fmt: skip
    _add_execution_arguments(inst)

    synth = sub.add_parser("synth", help="build a SynthEmo corpus into a new folder")
    synth.add_argument("out_dir", type=_nonempty_path)
    synth.add_argument("--seed", type=int, default=0)

    evaluate = sub.add_parser(
        "evaluate",
        help="a saved model on another corpus (cross-corpus); writes reports/runs/eval-<hash>.json",
    )
    evaluate.add_argument("--model", type=_nonempty_path, required=True,
                          help="a model file (a run record names it under 'model')")  # fmt: skip
    evaluate.add_argument("--corpus", choices=cfg.SER_CORPORA, required=True)
    evaluate.add_argument("--root", type=_nonempty_path, required=True,
                          help="the corpus folder (official layout) or a manifest CSV")  # fmt: skip
    evaluate.add_argument(
        "--mapping", default=None, metavar="EMOTION=MODEL_EMOTION[,...]", type=_mapping_text,
        help="corpus emotion -> model emotion; empty drops it (default: calm and boredom "
        "dropped, every other emotion onto itself), e.g. calm=neutral,excited=happy",
    )  # fmt: skip
    evaluate.add_argument("--resample", action="store_true",
                          help="resample audio at another rate than the model's features "
                          "(refused otherwise)")  # fmt: skip
    evaluate.add_argument("--force", action="store_true",
                          help="evaluate again even if a record exists (beside it)")  # fmt: skip
    evaluate.add_argument("--allow-overlap", action="store_true",
                          help="score items whose audio the model trained or was validated on "
                          "(refused otherwise; flagged in the record)")  # fmt: skip

    pred = sub.add_parser(
        "predict", help="a saved model's emotion for audio files (one line per file)",
        description="A saved model's emotion for each audio file, scored whole: the file is cut "
        "into consecutive segments of the model's length (its features' segment_seconds) that "
        "cover the clip, near-silent segments are left out, and the probabilities of the others "
        "are averaged; the segments and silent_segments columns count them. A file with no "
        "sounding segment, unreadable, or at another sample rate gets a row with its error.",
    )  # fmt: skip
    pred.add_argument("--model", type=_nonempty_path, required=True, help="a model file")
    pred.add_argument("paths", nargs="+", type=_nonempty_path, metavar="FILE_OR_FOLDER")
    pred.add_argument("--format", choices=("csv", "json"), default="csv",
                      help="csv: a header, then path, emotion, probabilities, error; json: one "
                      "object per line")  # fmt: skip
    pred.add_argument("--resample", action="store_true",
                      help="resample files at another rate than the model's features "
                      "(an error line otherwise)")  # fmt: skip

    pert = sub.add_parser(
        "perturb",
        help="a saved model on its run's test split, clean and under the declared perturbations "
        "(gain, white/pink/babble noise, rooms, 8 kHz), paired item by item; writes "
        "reports/runs/eval-<hash>.json per perturbation, then reports/perturbations.md",
    )
    pert.add_argument("--model", type=_nonempty_path, default=None,
                      help="a model file whose run record is under reports/runs/ (qat models "
                      "lists them)")  # fmt: skip
    pert.add_argument("--only", nargs="+", default=None, metavar="NAME",
                      help="these declared perturbations only, e.g. gain-10dB babble-5dB "
                      "(default: every one)")  # fmt: skip
    pert.add_argument(
        "--items",
        type=int,
        default=None,
        help="score this many test items, drawn by the seed (default: all)",
    )
    pert.add_argument("--seed", type=int, default=0, help="the noise's and rooms' seed")
    pert.add_argument("--force", action="store_true",
                      help="evaluate again even if a record exists (beside it)")  # fmt: skip
    pert.add_argument("--report-only", action="store_true",
                      help="rebuild reports/perturbations.md and its figure from the records "
                      "without evaluating")  # fmt: skip

    models = sub.add_parser(
        "models", help="the saved models the run records name: label, setting, test UA, path "
        "(for --model of predict and evaluate)",
    )  # fmt: skip
    models.add_argument("--ship", action="store_true",
                        help="copy the fair race's main-setting finalists (first fresh "
                        "pair) into models/ as float16 files, for a fresh clone "
                        "(qat.shipping)")  # fmt: skip
    return parser


def main(argv=None) -> int:
    try:
        return _dispatch(build_parser().parse_args(argv))
    except KeyboardInterrupt as err:
        print(f"qat: {err or 'interrupted'}", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if os.environ.get("QAT_DEBUG"):
            raise
        print(f"qat: error: {err}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    from qat import config as cfg

    if args.command == "run":
        from qat.notebooks import run_notebook

        params = {name: _value(value) for name, value in args.parameter}
        print(run_notebook(args.notebook, params, args.output, log=sys.stderr))
    elif args.command == "report":
        from qat import report

        if args.tour:
            print("\n".join(map(str, report.run_tour(log=sys.stderr))))
        else:
            print(report.run_pipeline(args.profile or cfg.default_profile(), log=sys.stderr))
    elif args.command == "train":
        _train(args)
    elif args.command == "sweep":
        _sweep(args)
    elif args.command == "demonstration":
        from qat import demonstration

        cfg.check_number("jobs", args.jobs, 1, integer=True)
        models, stages = args.models.split(","), args.stages.split(",")
        for model in models:
            cfg.validate_field("model", model)
        for stage in stages:
            cfg.check_choice("stages", stage, demonstration.STAGES)
        engine = _execution(args)
        if not args.report_only:
            demonstration.run(models, jobs=args.jobs, stages=stages, engine=engine)
        print("\n".join(map(str, demonstration.write_pages())))
    elif args.command == "rhemo":
        from qat.upstream import export_rhemo

        print(export_rhemo(config_from_args(args, model="quaternion"), args.out))
    elif args.command == "instrument":
        from qat import instrument

        cfg.check_number("jobs", args.jobs, 1, integer=True)
        models = args.models.split(",")
        for model in models:
            cfg.validate_field("model", model)
        engine = _execution(args)
        if not args.report_only:
            instrument.run(args.stage, jobs=args.jobs, models=models, engine=engine)
        print(instrument.write_report())
        if args.stage == "level":  # the level study's page
            from qat import perturbation_page

            print(perturbation_page.write_page())
    elif args.command == "synth":
        from qat.data.synth import make_synthemo

        cfg.check_number("seed", args.seed, 0, cfg.MAX_SEED, integer=True)
        print(f"{len(make_synthemo(args.out_dir, seed=args.seed))} utterances in {args.out_dir}")
    elif args.command == "evaluate":
        from qat.evaluate import evaluate_corpus, parse_mapping, summary_lines

        record = evaluate_corpus(
            args.model, args.corpus, args.root, parse_mapping(args.mapping),
            resample=args.resample, force=args.force, allow_overlap=args.allow_overlap,
        )  # fmt: skip
        print("\n".join(summary_lines(record)))
    elif args.command == "perturb":
        _perturb(args)
    elif args.command == "models":
        _models(args)
    elif args.command == "predict":
        from qat.evaluate import format_rows, predict_paths
        from qat.saved import load_model

        predictor = load_model(args.model)
        rows = predict_paths(predictor, args.paths, resample=args.resample)
        print("\n".join(format_rows(rows, args.format, predictor.emotions)), flush=True)
        failed = sum(row.error is not None for row in rows)
        if failed:
            print(f"qat: {failed} of {len(rows)} file(s) could not be predicted", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
