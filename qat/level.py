"""Level-robust input (issue 38): which `level` and `augment` settings the instrument's real
pipeline should read, chosen like the instrument's other options, on baseline and ceiling runs
only and on validation data, by a rule written before any of its runs; a section of
reports/perturbations.md.

Written before the runs: the candidates (CANDIDATES), the pairs (PAIRS: the RH-emo
confirmation's fresh pairs, whose real ceilings under raw input already exist with their model
files), the rule (`choose`) and the gain check the page reports beside it. The study is the
real VGG16's: `augment` acts on features, and the quaternion network reads RH-emo's embeddings,
computed once before training.

Adopting a candidate makes a new instrument version; the fair race (issue 34) runs on the
instrument as it is, and its page says which input level it read.
"""

from __future__ import annotations

import statistics

from qat import runs, stats, tables
from qat.config import RunConfig
from qat.embedding import CONFIRM_PAIRS, by_pair, interval_target, val_ua

FROZEN = "cpu"
MODEL = "real"
# (level, augment): the instrument's input first, then one change each, then both.
CANDIDATES = (("raw", "none"), ("normalise", "none"), ("raw", "gain"), ("normalise", "gain+noise"))
PAIRS = CONFIRM_PAIRS
SETUPS = ("confounded", "unconfounded")  # baseline and ceiling
COST = 0.02  # the clean validation UA a candidate's ceiling may lose against raw input
# Scored on every ceiling's model after the runs (test items: reported, never used to choose).
CHECKS = ("gain-20dB", "gain-10dB", "gain+6dB", "white-10dB", "babble-10dB", "rt60-0.6s")
CHECK_ITEMS = 1000  # test items per model, a seeded subset (qat perturb --items)
UNCHANGED = 0.95  # the target for level=normalise at -10 dB
UA_SHIFT = 0.03  # and its UA within this of clean


def name(level: str, augment: str) -> str:
    return f"level {level}, augment {augment}"


def config(level: str, augment: str, seed: int, fold: int, setup: str) -> RunConfig:
    return RunConfig(profile=FROZEN, model=MODEL, seed=seed, fold=fold, setup=setup,
                     level=level, augment=augment)  # fmt: skip


def configs() -> list[RunConfig]:
    """Every candidate's baseline and ceiling on every pair (the raw ceilings exist)."""
    return [config(*c, seed, fold, setup) for c in CANDIDATES for seed, fold in PAIRS
            for setup in SETUPS]  # fmt: skip


def _records(records, candidate, setup: str) -> dict[tuple, dict]:
    """{(seed, fold): record} of a candidate's runs in one setup."""
    return by_pair(records, [config(*candidate, s, f, setup) for s, f in PAIRS])


def choose(records) -> tuple[tuple[str, str] | None, str]:
    """The rule: among the candidates whose ceiling loses at most COST validation UA against
    raw input (the paired mean over PAIRS), the one with the highest mean validation UA of its
    ceilings; the first candidate (raw input) when no other qualifies. Test UA is never read.
    (None, why) while a ceiling is missing."""
    ceilings = {c: _records(records, c, "unconfounded") for c in CANDIDATES}
    missing = [name(*c) for c, found in ceilings.items() if len(found) < len(PAIRS)]
    if missing:
        return None, f"waiting for the ceilings of {'; '.join(missing)} on every pair"
    scores = {c: {k: val_ua(r) for k, r in found.items()} for c, found in ceilings.items()}
    raw = scores[CANDIDATES[0]]
    costs = {c: statistics.fmean(s[k] - raw[k] for k in raw) for c, s in scores.items()}
    eligible = [c for c in CANDIDATES if costs[c] >= -COST]  # raw itself: 0
    pick = max(eligible, key=lambda c: (statistics.fmean(scores[c].values()),
                                        -CANDIDATES.index(c)))  # fmt: skip
    best = statistics.fmean(scores[pick].values())
    return pick, (f"the highest mean ceiling validation UA ({best:.3f}) among the "
                  f"{len(eligible)} candidates within {COST} of raw input's")  # fmt: skip


def ceiling_models(records) -> list[str]:
    """The model files of every candidate's ceilings found, for the gain and noise checks."""
    return [r["model"] for c in CANDIDATES for r in _records(records, c, "unconfounded").values()
            if r.get("model")]  # fmt: skip


def rows(records, checks: dict[str, dict[str, dict]]) -> list[dict]:
    """One row per candidate: ceiling validation UA (the rule's score) and its paired
    difference against raw input, test UA of ceiling and baseline (not used), and, from the
    eval records `checks` ({model file: {perturbation: record}}), the share of predictions
    unchanged and the UA difference at -10 dB."""
    out = []
    raw = {k: val_ua(r) for k, r in _records(records, CANDIDATES[0], "unconfounded").items()}
    for candidate in CANDIDATES:
        ceiling = _records(records, candidate, "unconfounded")
        baseline = _records(records, candidate, "confounded")
        mine = {k: val_ua(r) for k, r in ceiling.items()}
        row = {"candidate": name(*candidate), "pairs": f"{len(ceiling)}/{len(PAIRS)}",
               "ceiling validation UA (the rule's score)": stats.mean(mine.values())}  # fmt: skip
        common = set(mine) & set(raw)
        if candidate != CANDIDATES[0] and len(common) >= 2:
            d = stats.paired({k: mine[k] for k in common}, {k: raw[k] for k in common})
            row["minus raw input, validation"] = f"{d.mean:+.3f} [{d.t_low:+.3f}, {d.t_high:+.3f}]"
        row["ceiling test UA (not used)"] = stats.mean(r["metrics"]["ua"] for r in ceiling.values())
        row["baseline test UA (not used)"] = stats.mean(
            r["metrics"]["ua"] for r in baseline.values()
        )
        at = [checks.get(r.get("model"), {}).get("gain-10dB") for r in ceiling.values()]
        at = [a["paired"] for a in at if a]
        row["-10 dB: unchanged"] = stats.mean(a["unchanged"] for a in at)
        row["-10 dB: UA minus clean"] = stats.mean(a["perturbed_ua"] - a["clean_ua"] for a in at)
        out.append(row)
    return out


def targets(records, checks: dict[str, dict[str, dict]]) -> list[dict]:
    """The issue's targets for `level=normalise` (no augmentation), each "met" only when its
    interval says so: predictions unchanged at -10 dB, the UA there, and the clean cost."""
    normalise, raw = ("normalise", "none"), CANDIDATES[0]
    ceilings = _records(records, normalise, "unconfounded")
    at = [checks.get(r.get("model"), {}).get("gain-10dB") for r in ceilings.values()]
    at = [a["paired"] for a in at if a]
    out = []
    for target, values, bound in (
        (f"level normalise, -10 dB: predictions unchanged >= {UNCHANGED}",
         [a["unchanged"] for a in at], UNCHANGED),
        (f"level normalise, -10 dB: UA minus clean >= -{UA_SHIFT}",
         [a["perturbed_ua"] - a["clean_ua"] for a in at], -UA_SHIFT),
    ):  # fmt: skip
        out.append(interval_target(target, values, bound, "+.3f"))
    test = {k: r["metrics"]["ua"] for k, r in ceilings.items()}
    base = {k: r["metrics"]["ua"] for k, r in _records(records, raw, "unconfounded").items()}
    common = set(test) & set(base)
    diffs = [test[k] - base[k] for k in sorted(common)]
    out.append(interval_target(f"level normalise costs at most {COST} clean test UA (ceiling, "
                               "paired)", diffs, -COST, "+.3f"))  # fmt: skip
    return out


def section(records, checks: dict[str, dict[str, dict]]) -> list[str]:
    """reports/perturbations.md's section: the candidates, the rule, the table, the choice and
    the targets. `checks`: {model file: {perturbation name: eval record}}."""
    pick, why = choose(records)
    listed = "; ".join(f"`{name(*c)}`" for c in CANDIDATES)
    lines = [
        "## Level-robust input: the instrument's option",
        "",
        f"Candidates (qat.level.CANDIDATES, written before their runs): {listed}; the real "
        f"VGG16's baseline and ceiling on the pairs "
        f"{', '.join(f'{s}/{f}' for s, f in PAIRS)} (`qat instrument --stage level`). The rule: "
        f"among the candidates whose ceiling loses at most {COST} validation UA against raw "
        "input (paired mean), the highest mean ceiling validation UA; raw input when none "
        "other qualifies. Test UA and the perturbation checks are shown, never used. "
        f"Each ceiling's model is checked on {CHECK_ITEMS} test items under "
        f"{', '.join(f'`{c}`' for c in CHECKS)}.",
        "",
        tables.markdown_table(rows(records, checks)),
        "",
        f"Not chosen yet: {why}."
        if pick is None
        else f"Rule: {why}. Chosen: `{name(*pick)}`. "
        "Adopting it for the instrument is a new instrument version; the fair race (issue 34) "
        "reads raw input.",
        "",
        tables.markdown_table(targets(records, checks)),
        "",
    ]
    return lines


def run(jobs: int = 2, engine=None) -> None:
    """The candidates' runs (existing records skipped), then the checks of every ceiling's
    model (existing eval records reused); `qat instrument --stage level` then writes the page
    (qat.perturbation_page, which reads this module)."""
    from qat import perturbed
    from qat.experiments import run_configs
    from qat.saved import resolve_stored

    run_configs(configs(), jobs=jobs, desc="instrument level", engine=engine)
    for model in ceiling_models(runs.load_records(kind="ser")):
        perturbed.evaluate_perturbations(resolve_stored(model), CHECKS, items=CHECK_ITEMS)
