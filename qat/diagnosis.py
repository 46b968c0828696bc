"""Why the quaternion ceiling lags the real one, and why the real ceiling lags the prosody
oracle: ceiling runs (baseline on the unconfounded split) of the frozen instrument with one
change each (qat.config.DIAGNOSES), compared with the frozen real and quaternion ceilings on
the same (seed, fold) pairs; a section of reports/instrument.md.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from qat import costs, io, plots, runs, stats, tables
from qat.config import DIAGNOSES, INSTRUMENT_ENCODER, PROFILES, RunConfig
from qat.models import ENCODERS
from qat.upstream import rhemo_key

SETUP = "unconfounded"  # the ceiling: same test set and size as the baseline, no shortcut
WITHIN = 0.05  # the target: the quaternion ceiling within 0.05 UA of the real one
WIDE = "wide"  # the RH-emo encoder diagnosed (a run setting)


def profile(name: str) -> str:
    return f"diag-{name}"


def model_of(name: str) -> str:
    """The diagnosed network: the quaternion one, or the real one fed RH-emo embeddings."""
    return "real" if PROFILES[profile(name)].get("real_input") == "rhemo" else "quaternion"


# A diagnosis that raised the ceiling is confirmed on fresh pairs before the instrument adopts
# it: these pairs were never diagnosed on, and the demonstration does not use them.
CONFIRM_PAIRS = ((300, 0), (301, 1), (302, 2), (303, 3), (304, 0))
CANDIDATES = ("rhemo-pools", "rhemo-encoder")


def _candidate(name: str, frozen: str, seed: int, fold: int | None) -> RunConfig:
    """The ceiling run of a diagnosis (the wide encoder is a run setting, not a profile)."""
    if name == "rhemo-encoder":
        return RunConfig(profile=frozen, model="quaternion", seed=seed, fold=fold, setup=SETUP,
                         rhemo_encoder=WIDE)  # fmt: skip
    return RunConfig(profile=profile(name), model=model_of(name), seed=seed, fold=fold,
                     setup=SETUP)  # fmt: skip


def configs(pairs: Sequence[tuple[int, int]], frozen: str = "cpu") -> list[RunConfig]:
    """The ceiling of every diagnosis on each (seed, fold)."""
    names = (*DIAGNOSES, "rhemo-encoder")
    return [_candidate(name, frozen, seed, fold) for name in names for seed, fold in pairs]


def cost_configs(frozen: str = "cpu") -> dict[str, RunConfig]:
    """{network: its ceiling on the first pair}: the steps whose times the diagnosis compares,
    timed side by side (`qat instrument --stage costs`)."""
    out = {f"frozen {m}": RunConfig(profile=frozen, model=m, seed=0, fold=0, setup=SETUP)
           for m in ("real", "quaternion")}  # fmt: skip
    return out | {name: _candidate(name, frozen, 0, 0) for name in (*DIAGNOSES, "rhemo-encoder")}


def confirm_configs(frozen: str = "cpu") -> list[RunConfig]:
    """The frozen quaternion ceiling and each candidate's on CONFIRM_PAIRS."""
    return [
        c
        for seed, fold in CONFIRM_PAIRS
        for c in (
            RunConfig(profile=frozen, model="quaternion", seed=seed, fold=fold, setup=SETUP),
            *(_candidate(name, frozen, seed, fold) for name in CANDIDATES),
        )
    ]


def confirmation(records, frozen: str) -> list[dict]:
    """Each candidate against the frozen quaternion ceiling on the fresh pairs."""
    ser = [r for r in records if r.get("kind") == "ser"]
    quat = _ceilings(ser, frozen, "quaternion", CONFIRM_PAIRS)
    out = []
    for name in CANDIDATES:
        found = _candidate_ceilings(ser, name, frozen, CONFIRM_PAIRS)
        d = _paired(found, quat)
        if d is None or d.n < len(CONFIRM_PAIRS):
            verdict = f"pending ({0 if d is None else d.n}/{len(CONFIRM_PAIRS)} pairs)"
        else:
            verdict = "confirmed" if d.t_low > 0 else "not confirmed"
        out.append({"candidate": name, "runs": len(found), "ceiling UA": stats.mean(
            r["metrics"]["ua"] for r in found.values()), "vs frozen quaternion": _interval(d),
            "gain confirmed (95% low > 0)": verdict})  # fmt: skip
    return out


def confirmation_reading(rows: list[dict]) -> str:
    """What the confirmation decides, from confirmation()'s rows."""
    verdict = {r["candidate"]: r["gain confirmed (95% low > 0)"] for r in rows}
    waiting = [name for name, v in verdict.items() if v.startswith("pending")]
    confirmed = [name for name, v in verdict.items() if v == "confirmed"]
    if waiting:
        return f"Pending: {', '.join(waiting)}; nothing is adopted before every fresh pair ran."
    if confirmed:
        return (f"Confirmed: {', '.join(confirmed)}. Adopting one is a change of "
                "qat.config.INSTRUMENT_ENCODER or the cpu profile, and reruns the quaternion "
                "demonstration on it.")  # fmt: skip
    return (
        f"No candidate is confirmed: the instrument keeps the {INSTRUMENT_ENCODER!r} RH-emo "
        "(qat.config.INSTRUMENT_ENCODER), and the quaternion demonstration runs on it."
    )


def _ceilings(ser, profile_name: str, model: str, pairs, encoder=None) -> dict[tuple, dict]:
    return tables.baseline_by_pair(ser, pairs, profile_name, model, SETUP, encoder)


def _candidate_ceilings(ser, name: str, frozen: str, pairs) -> dict[tuple, dict]:
    run = _candidate(name, frozen, 0, 0)
    encoder = None if run.rhemo_encoder == "published" else run.rhemo_encoder
    return _ceilings(ser, run.profile, run.model, pairs, encoder)


def _change(name: str) -> str:
    """What a diagnosis changes, in words."""
    if name == "rhemo-encoder":
        return (f"RH-emo's encoder at {_channels(WIDE)} channels, not {_channels('published')} "
                f"(rhemo_encoder={WIDE!r})")  # fmt: skip
    return DIAGNOSES[name][0]


def _rhemo_ua(record: dict, rhemo_records: dict) -> float | None:
    """The emotion head's last-epoch validation UA of the RH-emo a quaternion run read."""
    run = RunConfig.from_record(record)
    if not run.reads_rhemo:
        return None
    found = rhemo_records.get(runs.record_path("rhemo", rhemo_key(run)).name)
    return found["history"][-1].get("val_emotion_ua") if found else None


def _paired(a: dict, b: dict):
    keys = set(a) & set(b)
    if len(keys) < 2:
        return None
    return stats.paired({k: a[k]["metrics"]["ua"] for k in keys},
                        {k: b[k]["metrics"]["ua"] for k in keys})  # fmt: skip


def _interval(d) -> str:
    return "n/a" if d is None else f"{d.mean:+.3f} [{d.t_low:+.3f}, {d.t_high:+.3f}]"


def rows(records, frozen: str, pairs) -> list[dict]:
    """One row per network: the frozen real and quaternion ceilings, then each diagnosis, with
    its mean ceiling, paired differences against both frozen ceilings, cost (the step time
    against the real one's only from a side-by-side costs record) and RH-emo quality."""
    ser = [r for r in records if r.get("kind") == "ser"]
    rhemo_records = {
        runs.record_path("rhemo", r["config"]).name: r for r in records if r.get("kind") == "rhemo"
    }
    real = _ceilings(ser, frozen, "real", pairs)
    quat = _ceilings(ser, frozen, "quaternion", pairs)
    candidates = [
        ("frozen real", "real VGG16 on spectrograms", frozen, "real", real),
        ("frozen quaternion", "quaternion VGG16 on RH-emo", frozen, "quaternion", quat),
    ]
    for name in (*DIAGNOSES, "rhemo-encoder"):
        run = _candidate(name, frozen, 0, 0)
        candidates.append((name, _change(name), run.profile, run.model,
                           _candidate_ceilings(ser, name, frozen, pairs)))  # fmt: skip
    steps = cost_configs(frozen)
    timed = costs.find(records, list(steps.values()))
    out = []
    for name, what, profile_name, model, found in candidates:
        ua = [r["metrics"]["ua"] for r in found.values()]
        time = timed and costs.time_ratio(timed, steps[name], steps["frozen real"])
        vs_real = _paired(found, real) if found is not real else None
        heads = [u for u in (_rhemo_ua(r, rhemo_records) for r in found.values()) if u is not None]
        verdict = None
        if vs_real is not None and model == "quaternion":
            verdict = stats.verdict(vs_real.t_low, vs_real.t_high, at_least=-WITHIN)
        out.append({
            "network": name, "change": what, "runs": len(found),
            "ceiling UA": stats.mean(ua),
            "ceiling SD": statistics.stdev(ua) if len(ua) > 1 else None,
            "vs frozen quaternion": _interval(_paired(found, quat)) if found is not quat else "–",
            "vs frozen real": _interval(vs_real) if found is not real else "–",
            f"within {WITHIN} of real": verdict or "–",
            "params": stats.mean(r["resources"]["params"] for r in found.values()),
            "step time vs real": time[0] if time else None,
            "RH-emo encoder parameters": _encoder_parameters(found) if heads else None,
            "RH-emo emotion head UA": stats.mean(heads),
            "_vs_real": vs_real, "_time": time,
            # (RH-emo quality, ceiling) once per RH-emo: rows reusing another's are left out
            "_heads": [] if PROFILES[profile_name].get("rhemo_profile") else [
                (_rhemo_ua(r, rhemo_records), r["metrics"]["ua"]) for r in found.values()],
        })  # fmt: skip
    return out


def _channels(encoder: str) -> str:
    return ENCODERS[encoder].describe()


def _encoder_parameters(found: dict) -> int:
    """The parameter count of the RH-emo encoder the runs read (built from their settings)."""
    run = RunConfig.from_record(next(iter(found.values())))
    p = PROFILES[run.profile]
    p = PROFILES[p.get("rhemo_profile")] if p.get("rhemo_profile") else p
    net = ENCODERS[run.rhemo_encoder].build(2, p["rhemo_pools"])
    return sum(t.numel() for t in net.encoder.parameters())


def speaker_shift(records, frozen: str, pairs) -> list[dict]:
    """The real and quaternion ceilings on the training speakers (validation, last epoch) and
    on the held-out test speakers: how much of the shortfall is speaker generalisation."""
    ser = [r for r in records if r.get("kind") == "ser"]
    out = []
    for model in ("real", "quaternion"):
        found = _ceilings(ser, frozen, model, pairs)
        if not found:
            continue
        last = [r["history"][-1] for r in found.values()]
        out.append({
            "model": model, "runs": len(found),
            "train accuracy (last epoch)": stats.mean(h.get("train_acc") for h in last),
            "validation UA, training speakers (last epoch)": stats.mean(
                h.get("val_ua") for h in last),
            "test UA, held-out speakers": stats.mean(r["metrics"]["ua"] for r in found.values()),
        })  # fmt: skip
    return out


def section(records, frozen: str, pairs, figures) -> list[str]:
    """The page's section: what each diagnosis changes, the table, the figure and the reading
    (generated from the rows, so it follows the records)."""
    table = rows(records, frozen, pairs)
    lines = [
        "Ceilings (baseline on the unconfounded split) of the frozen instrument with one change "
        "each, on the same (seed, fold) pairs as the frozen ceilings (`qat instrument --stage "
        "diagnose`). Differences are paired, with 95% t-intervals. RH-emo is trained once per "
        "split (seed, fold, setup), so every method on a pair reads the same one; the "
        "width and real-on-RH-emo diagnoses reuse the frozen instrument's RH-emo of the split.",
        "",
        tables.markdown_table([_public(r) for r in table]),
    ]
    drawn = [r for r in table if r["_vs_real"] is not None]
    if drawn:
        io.save_figure(plots.diagnosis(drawn, WITHIN), figures, "instrument_diagnosis")
        lines += ["", "![ceilings against the real one, and their cost]"
                      "(figures/instrument_diagnosis.png)"]  # fmt: skip
    lines += ["", *_reading(table), *_head_correlation(table)]
    lines += [
        "",
        "Confirmation on fresh pairs "
        f"({', '.join(f'{s}/{f}' for s, f in CONFIRM_PAIRS)}, `qat instrument --stage confirm`): "
        "the changes whose first diagnosis raised the ceiling, against the frozen quaternion "
        "ceiling. RH-emo's initial weights follow the run's seed since this stage (before, they "
        "followed the process's random state, so the diagnoses above also carry that draw).",
        "",
        tables.markdown_table(confirmed := confirmation(records, frozen)),
        "",
        confirmation_reading(confirmed),
    ]
    shift = speaker_shift(records, frozen, pairs)
    if shift:
        lines += [
            "",
            "Where the ceilings lose accuracy: on the training speakers (validation) against "
            "the held-out test speakers.",
            "",
            tables.markdown_table(shift),
        ]
    return lines


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _head_correlation(table: list[dict]) -> list[str]:
    """Does the downstream ceiling follow the quality of the RH-emo it reads? Pearson r over
    the ceiling runs that trained their own RH-emo (one point per RH-emo), with its 95%
    interval."""
    from scipy.stats import pearsonr

    points = [(h, ua) for r in table for h, ua in r["_heads"] if h is not None]
    if len(points) < 4:
        return []
    x, y = zip(*points, strict=True)
    result = pearsonr(x, y)
    low, high = result.confidence_interval(0.95)
    return [f"- Over {len(points)} RH-emos (one ceiling run each), the ceiling UA follows "
            f"the RH-emo's emotion-head validation UA with Pearson r = {result.statistic:+.2f} "
            f"[{low:+.2f}, {high:+.2f}]."]  # fmt: skip


def reading(records, frozen: str, pairs) -> list[str]:
    """The diagnosis in a few lines (for the README)."""
    table = rows(records, frozen, pairs)
    confirmed = confirmation(records, frozen)
    fresh = [f"`{r['candidate']}` {r['vs frozen quaternion']}" for r in confirmed]
    return [*_reading(table), *_head_correlation(table),
            f"- On fresh pairs against the frozen quaternion ceiling: {'; '.join(fresh)}. "
            + confirmation_reading(confirmed)]  # fmt: skip


def _reading(table: list[dict]) -> list[str]:
    """One line per diagnosis: its paired difference against the frozen quaternion ceiling
    (did the change matter?) and against the real one (is the gap closed?), as the intervals
    say."""
    out = []
    for r in table:
        d = r["_vs_real"]
        if d is None or r["network"].startswith("frozen"):
            continue
        claim = {
            "met": f"within {WITHIN} UA of the real ceiling",
            "not met": f"more than {WITHIN} UA below the real ceiling",
            stats.WIDE: f"not resolved against the {WITHIN} UA margin by {d.n} runs",
        }[stats.verdict(d.t_low, d.t_high, at_least=-WITHIN)]
        time = r["_time"]
        cost = (f"; step time {time[0]:.2f}x [{time[1]:.2f}, {time[2]:.2f}] the real network's "
                "(side by side)" if time else "")  # fmt: skip
        out.append(
            f"- `{r['network']}` ({r['change']}): {r['vs frozen quaternion']} against the "
            f"frozen quaternion ceiling; {d.mean:+.3f} [{d.t_low:+.3f}, {d.t_high:+.3f}] "
            f"against the real one: {claim}{cost}."
        )
    return out
