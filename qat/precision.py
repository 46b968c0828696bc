"""bfloat16 forwards for the real network's runs (issue 33): faster on a CPU with native bf16
(`python -m qat.bench run` times it), but a change of numerics, so it is adopted only if the
runs say the UA does not move; a section of reports/instrument.md.

Written before its runs: the pairs (PAIRS, the RH-emo confirmation's fresh pairs, whose fp32
real ceilings exist; the real baselines are the level study's raw ones, run here if that study
has not run), the bf16 runs (the same configurations with precision="bf16") and the rule
(`decision`): bf16 is adopted when, for each model of MODELS, the paired difference of
validation UA, bf16 minus fp32 over the baseline and the ceiling of every pair, has a 95%
t-interval that contains 0 and lies above -TOLERANCE. Test UA is shown beside it, never used.

The quaternion network is not a candidate: the bench measured its whole run slower under bf16
on this CPU (reports/benchmarks.md, section run). Adopting bf16 for the real network alone
leaves the quaternion/real step ratio (the paper's cost claim) to be timed with both in fp32.
"""

from __future__ import annotations

import statistics

from qat import embedding, stats, tables
from qat.config import INSTRUMENT_PRECISION, RunConfig

PAIRS = embedding.CONFIRM_PAIRS
SETUPS = ("confounded", "unconfounded")
MODELS = ("real",)
TOLERANCE = 0.01  # the bound on the UA a faster path may lose


def fp32_configs() -> dict[str, list[RunConfig]]:
    """{model: the fp32 baseline and ceiling of every pair}: the real VGG16 on spectrograms."""
    return {"real": [RunConfig(profile=embedding.FROZEN, model="real", seed=s, fold=f, setup=u)
                     for s, f in PAIRS for u in SETUPS]}  # fmt: skip


def configs() -> list[RunConfig]:
    """The bf16 runs: every fp32 configuration with precision="bf16"."""
    return [c.replace(precision="bf16") for cs in fp32_configs().values() for c in cs]


def _differences(records, fp32: list[RunConfig], read) -> list[float]:
    """bf16 - fp32 of `read(record)` over the configurations both ran, in a fixed order."""
    pairs = [(c.key(), c.replace(precision="bf16").key()) for c in fp32]
    ser = embedding.found(records, [*fp32, *(c.replace(precision="bf16") for c in fp32)])
    return [read(ser[bf16]) - read(ser[fp]) for fp, bf16 in pairs if fp in ser and bf16 in ser]


def rows(records) -> list[dict]:
    """Per model: the paired validation UA difference (the rule's) and the test UA one."""
    out = []
    for model, fp32 in fp32_configs().items():
        row = {"model": model, "pairs": f"{len(_differences(records, fp32, embedding.val_ua))}/"
               f"{len(fp32)}"}  # fmt: skip
        for what, read in (("validation UA, bf16 - fp32 (the rule's)", embedding.val_ua),
                           ("test UA, bf16 - fp32 (not used)", _test_ua)):  # fmt: skip
            diffs = _differences(records, fp32, read)
            row[what] = _interval(diffs) if len(diffs) >= 2 else None
        out.append(row)
    return out


def _test_ua(record: dict) -> float:
    return record["metrics"]["ua"]


def _interval(diffs: list[float]) -> str:
    low, high = stats.mean_interval(diffs)
    return f"{statistics.fmean(diffs):+.3f} [{low:+.3f}, {high:+.3f}]"


def decision(records) -> tuple[bool | None, str]:
    """(True: bf16 adopted, False: kept fp32, None: pending; why), by the module's rule."""
    measured = []
    for model, fp32 in fp32_configs().items():
        diffs = _differences(records, fp32, embedding.val_ua)
        if len(diffs) < len(fp32):
            return None, f"{model}: {len(diffs)}/{len(fp32)} fp32/bf16 pairs ran"
        low, high = stats.mean_interval(diffs)
        if not -TOLERANCE <= low <= 0 <= high:
            return False, (f"{model}: validation UA bf16 - fp32 {_interval(diffs)}, not an "
                           f"interval that contains 0 and lies above -{TOLERANCE}")  # fmt: skip
        measured.append(f"{model} {_interval(diffs)}")
    return True, (f"validation UA bf16 - fp32 {'; '.join(measured)}: intervals that contain 0 "
                  f"and lie above -{TOLERANCE}")  # fmt: skip


def instrument_problem(records) -> str | None:
    """Why qat.config.INSTRUMENT_PRECISION is not yet what `decision` says, or None when it is:
    the fair race runs at the precision the rule settled, and waits while it is pending."""
    adopted, why = decision(records)
    if adopted is None:
        return f"the bf16 decision is pending ({why}); run `qat instrument --stage precision`"
    wanted = {m: "bf16" if adopted and m in MODELS else "fp32" for m in INSTRUMENT_PRECISION}
    if INSTRUMENT_PRECISION != wanted:
        return (f"the bf16 rule says {wanted} ({why}), but qat.config has "
                f"INSTRUMENT_PRECISION={INSTRUMENT_PRECISION}: set it to that")  # fmt: skip
    return None


def reading(records) -> list[str]:
    """The section in a line, for the README."""
    adopted, why = decision(records)
    outcome = ("pending" if adopted is None else "adopted" if adopted else
               "not adopted, the runs stay in fp32")  # fmt: skip
    return [f"- bfloat16 forward passes for the real network (section 9): {outcome}: {why}."]


def section(records) -> list[str]:
    """reports/instrument.md's section: the rule, the differences, the decision."""
    adopted, why = decision(records)
    outcome = ("Pending: " if adopted is None else "Adopted: " if adopted else
               "Not adopted (the instrument keeps fp32): ") + why + "."  # fmt: skip
    return [
        "bfloat16 forward passes (`precision=bf16`; `python -m qat.bench run` times them) "
        "change the numerics, so they are adopted for the real network's runs only by a rule "
        "written before the runs (qat.precision; the quaternion run was slower under bf16 in "
        "that bench, reports/benchmarks.md, so it is not a candidate): the paired validation UA "
        f"difference, bf16 minus fp32, over the baseline and ceiling of the pairs "
        f"{', '.join(f'{s}/{f}' for s, f in PAIRS)} (`qat instrument --stage precision`), "
        f"has a 95% t-interval that contains 0 and lies above -{TOLERANCE}.",
        "",
        tables.markdown_table(rows(records)),
        "",
        outcome,
    ]


def run(jobs: int = 2, engine=None) -> None:
    """The fp32 runs the rule pairs with (the level study's raw baselines, if it has not run
    yet) and the bf16 runs; existing records are skipped."""
    from qat.experiments import run_configs

    fp32 = [c for cs in fp32_configs().values() for c in cs]
    run_configs([*fp32, *configs()], jobs=jobs, desc="instrument precision", engine=engine)
