"""RH-emo at full strength: which way of training RH-emo the instrument's quaternion pipeline
reads, chosen like the instrument's recipe, on ceiling runs only and on validation data, and
confirmed on fresh (seed, fold) pairs; a section of reports/instrument.md.

Written before any of its runs: the candidates (CANDIDATES: an `upstream` design of
qat.config.UPSTREAMS, i.e. recipe and loss weights, with an RH-emo encoder), the pairs they are
compared on (SELECT_PAIRS), the rule (`choose`) and the fresh pairs that confirm the choice
(CONFIRM_PAIRS). Every candidate keeps the profile's pools, so the embedding, and with it the
quaternion VGG16's step, is the same size for all of them.
"""

from __future__ import annotations

import statistics

from qat import runs, stats, tables
from qat.config import INSTRUMENT_ENCODER, INSTRUMENT_UPSTREAM, RunConfig

FROZEN = "cpu"
SETUP = "unconfounded"  # the ceiling
# (name, upstream design, RH-emo encoder); the first is the instrument's RH-emo retrained with
# care, the others change one thing each or both.
CANDIDATES = (
    ("careful", "careful", "published"),
    ("careful-wide", "careful", "wide"),
    ("careful-emotion", "careful-emotion", "published"),
    ("careful-emotion-wide", "careful-emotion", "wide"),
)
SELECT_PAIRS = ((0, 0), (1, 1), (2, 2))  # pairs of the frozen instrument: real ceilings exist
# Never used by an earlier record (the demonstration uses 100-101, 200-204; the diagnosis's
# confirmation 300-304).
CONFIRM_PAIRS = ((310, 0), (311, 1), (312, 2), (313, 3), (314, 0))
# The rule's tolerance: candidates within this validation UA of the best are ties, broken by
# the fewer RH-emo encoder parameters (published before wide).
TIE = 0.01
REAL_ON_RHEMO = "diag-real-on-rhemo"  # the real VGG16 reading the embedding
# The RH-emo the choice must beat: the instrument's before this section (upstream, encoder).
PREVIOUS = ("v1", "published")


def candidate(name: str, seed: int, fold: int, setup: str = SETUP, **changes) -> RunConfig:
    """The quaternion run of a candidate on one (seed, fold)."""
    _, upstream, encoder = _find(name)
    settings = dict(profile=FROZEN, model="quaternion", seed=seed, fold=fold, setup=setup,
                    upstream=upstream, rhemo_encoder=encoder)  # fmt: skip
    return RunConfig(**{**settings, **changes})


def _find(name: str) -> tuple[str, str, str]:
    for row in CANDIDATES:
        if row[0] == name:
            return row
    raise ValueError(f"candidate={name!r}: expected one of {', '.join(c[0] for c in CANDIDATES)}")


def select_configs() -> list[RunConfig]:
    """Every candidate's ceiling on the selection pairs."""
    return [candidate(name, s, f) for name, *_ in CANDIDATES for s, f in SELECT_PAIRS]


def confirm_configs(chosen: str) -> list[RunConfig]:
    """On the fresh pairs: the chosen candidate's baseline and ceiling, the real VGG16 on its
    embedding and on the spectrogram (ceilings), and the current instrument's quaternion
    ceiling, against which the choice must hold."""
    out = []
    for seed, fold in CONFIRM_PAIRS:
        ceiling = candidate(chosen, seed, fold)
        out += [
            ceiling,
            ceiling.replace(setup="confounded"),
            ceiling.replace(profile=REAL_ON_RHEMO, model="real"),
            RunConfig(profile=FROZEN, model="real", seed=seed, fold=fold, setup=SETUP),
            RunConfig(profile=FROZEN, model="quaternion", seed=seed, fold=fold, setup=SETUP,
                      upstream=PREVIOUS[0], rhemo_encoder=PREVIOUS[1]),
        ]  # fmt: skip
    return out


def word_networks(chosen: str) -> list[RunConfig]:
    """The runs whose quaternion word network (reading the chosen RH-emo of the confounded
    split, as the demonstration's AT runs do) is trained and scored on held-out speakers."""
    return [candidate(chosen, s, f, setup="confounded") for s, f in CONFIRM_PAIRS]


def found(records, configs) -> dict[str, dict]:
    """{key: record} of the SER records among `records` that ran one of `configs`."""
    wanted = {c.key() for c in configs}
    ser = (r for r in records if r.get("kind") == "ser")
    return {k: r for r in ser if (k := runs.config_key(r["config"])) in wanted}


def scores(records) -> dict[str, list[float]]:
    """{candidate: the validation UA of its ceilings on the selection pairs found}."""
    out = {}
    for name, *_ in CANDIDATES:
        mine = found(records, [candidate(name, s, f) for s, f in SELECT_PAIRS])
        out[name] = [val_ua(r) for r in mine.values()]
    return out


def val_ua(record: dict) -> float:
    """The kept network's validation UA: the last epoch's row scores the weights the run keeps
    (the EMA under the cpu recipe)."""
    return record["history"][-1]["val_ua"]


def choose(scores: dict[str, list[float]]) -> tuple[str | None, str]:
    """The rule: the candidate with the highest mean validation UA of its ceilings over every
    selection pair; candidates within TIE of it are ties, broken by CANDIDATES' order (the
    smaller encoder and the paper's loss weights first). None while a pair is missing."""
    missing = [n for n, *_ in CANDIDATES if len(scores.get(n, [])) < len(SELECT_PAIRS)]
    if missing:
        return None, f"waiting for {', '.join(missing)} on every selection pair"
    means = {n: statistics.fmean(scores[n]) for n, *_ in CANDIDATES}
    best = max(means.values())
    pick = next(n for n, *_ in CANDIDATES if means[n] >= best - TIE)
    return pick, (
        f"the highest mean validation UA of the quaternion ceiling over {len(SELECT_PAIRS)} "
        f"pairs ({best:.3f}); within {TIE} of it, the first in the candidates' order "
        f"({pick}: {means[pick]:.3f})"
    )


# ---------------------------------------------------------------- the page

RATIO = 0.80  # RH-emo's emotion head against the real SER network, validation UA
EMBEDDING_LOSS = (-0.03, -0.05)  # real on the embedding minus on the spectrogram: mean, low
QUATERNION_GAP = (-0.03, -0.05)  # quaternion ceiling minus real ceiling: mean, low
BASELINE_SD = 0.02
WORD_NETWORK = 0.95
COST = (0.30, 0.20)  # quaternion step over the real one: time, peak memory


def cost_configs(chosen: str) -> list[RunConfig]:
    """The real and the chosen quaternion ceiling's steps on the first fresh pair, timed side
    by side (their ratio is the paper's claim)."""
    seed, fold = CONFIRM_PAIRS[0]
    return [RunConfig(profile=FROZEN, model="real", seed=seed, fold=fold, setup=SETUP),
            candidate(chosen, seed, fold)]  # fmt: skip


def _rhemos(records) -> dict[str, dict]:
    return {tables.record_id(r): r for r in records if r.get("kind") == "rhemo"}


def _rhemo_of(record: dict, rhemos: dict) -> dict | None:
    """The RH-emo record a run read (from the run's own record of its upstream weights)."""
    used = (record.get("upstream_weights") or {}).get("rhemo") or {}
    return rhemos.get(used.get("record"))


def by_pair(records, configs) -> dict[tuple, dict]:
    """{(seed, fold): record} of `configs` found among the records."""
    keyed = found(records, configs)
    return {(c.seed, c.fold): keyed[c.key()] for c in configs if c.key() in keyed}


def selection_rows(records) -> list[dict]:
    """One row per candidate on the selection pairs, then the current instrument's quaternion
    ceiling and the real one on the same pairs for reference (test UA is shown, never used)."""
    rhemos = _rhemos(records)
    rows = []
    for name, upstream, encoder in CANDIDATES:
        runs_ = by_pair(records, [candidate(name, s, f) for s, f in SELECT_PAIRS])
        heads = [_rhemo_of(r, rhemos) for r in runs_.values()]
        heads = [h for h in heads if h]
        rows.append({
            "candidate": name, "upstream": upstream, "RH-emo encoder": encoder,
            "pairs": f"{len(runs_)}/{len(SELECT_PAIRS)}",
            "ceiling validation UA (the rule's score)": stats.mean(
                val_ua(r) for r in runs_.values()),
            "ceiling test UA (not used)": stats.mean(r["metrics"]["ua"] for r in runs_.values()),
            "RH-emo emotion head, validation UA at the kept epoch": stats.mean(
                tables.kept_row(h).get("val_emotion_ua") for h in heads),
            "RH-emo kept epoch": stats.mean(tables.kept_row(h).get("epoch") for h in heads),
            "RH-emo stopped early": f"{sum('early' in h.get('stopped', '') for h in heads)}/"
                                    f"{len(heads)}",
            **{f"{axis} balanced accuracy": tables.heads_summary(
                [tables.kept_row(h) for h in heads], axis.split(": ")[1])
               for axis in tables.RHEMO_AXES[1:]},
        })  # fmt: skip
    for label, model in (("current instrument (v1, published)", "quaternion"),
                         ("real VGG16 on spectrograms", "real")):  # fmt: skip
        ref = by_pair(
            records,
            [
                RunConfig(profile=FROZEN, model=model, seed=s, fold=f, setup=SETUP, upstream="v1")
                for s, f in SELECT_PAIRS
            ],
        )
        rows.append({"candidate": label, "pairs": f"{len(ref)}/{len(SELECT_PAIRS)}",
                     "ceiling validation UA (the rule's score)": stats.mean(
                         val_ua(r) for r in ref.values()),
                     "ceiling test UA (not used)": stats.mean(
                         r["metrics"]["ua"] for r in ref.values())})  # fmt: skip
    return rows


def _ua(found: dict) -> dict:
    return {k: r["metrics"]["ua"] for k, r in found.items()}


def _diff_target(target: str, a: dict, b: dict, mean_at_least: float, low_at_least: float):
    """A paired difference a - b against a mean and a lower bound (both must hold)."""
    keys = set(a) & set(b)
    if len(keys) < len(CONFIRM_PAIRS):
        return {"target": target, "measured": f"pending ({len(keys)}/{len(CONFIRM_PAIRS)} "
                "pairs)", "met": "pending"}  # fmt: skip
    d = stats.paired(_ua({k: a[k] for k in keys}), _ua({k: b[k] for k in keys}))
    met = stats.verdict(d.t_low, d.t_high, at_least=low_at_least)
    if met == "met" and d.mean < mean_at_least:
        met = "not met"
    return {"target": target, "measured": f"{d.mean:+.3f} [{d.t_low:+.3f}, {d.t_high:+.3f}]",
            "met": met}  # fmt: skip


def interval_target(target: str, values: list[float], at_least: float, spec=".3f") -> dict:
    """A target on the mean of one value per fresh pair, from its 95% t-interval."""
    if len(values) < len(CONFIRM_PAIRS):
        return {"target": target, "measured": f"pending ({len(values)}/{len(CONFIRM_PAIRS)})",
                "met": "pending"}  # fmt: skip
    low, high = stats.mean_interval(values)
    mean = statistics.fmean(values)
    return {"target": target, "measured": f"{mean:{spec}} [{low:{spec}}, {high:{spec}}]",
            "met": stats.verdict(low, high, at_least=at_least)}  # fmt: skip


def confirmation(records, chosen: str) -> dict:
    """The chosen RH-emo's runs on the fresh pairs, by role: {role: {(seed, fold): record}},
    and its RH-emo and word-network records."""
    roles = ("ceiling", "baseline", "real on the embedding", "real on spectrograms",
             "current instrument")  # fmt: skip
    configs = confirm_configs(chosen)
    out = {role: by_pair(records, configs[i :: len(roles)]) for i, role in enumerate(roles)}
    rhemos = _rhemos(records)
    out["RH-emos"] = [h for r in [*out["ceiling"].values(), *out["baseline"].values()]
                      if (h := _rhemo_of(r, rhemos))]  # fmt: skip
    read = {(r.get("upstream_weights") or {}).get("rhemo", {}).get("record")
            for r in out["baseline"].values()}  # fmt: skip
    out["word networks"] = [r for r in records if r.get("kind") == "orthogonal-word-quaternion"
                            and r.get("rhemo_record") in read]  # fmt: skip
    return out


def targets(records, chosen: str) -> list[dict]:
    """The issue's targets on the fresh pairs, each "met" only when its interval says so."""
    c = confirmation(records, chosen)
    out = []
    ratios = []
    for pair, run in c["ceiling"].items():
        head = _rhemo_of(run, _rhemos(records))
        real = c["real on spectrograms"].get(pair)
        if head and real:
            ratios.append(tables.kept_row(head)["val_emotion_ua"] / val_ua(real))
    out.append(interval_target(f"RH-emo's emotion head, validation UA at its kept epoch, over "
                                f"the real SER network's on the same sets >= {RATIO}", ratios,
                                RATIO, ".2f"))  # fmt: skip
    out.append(_diff_target(f"real VGG16 on the embedding minus on the spectrogram (ceiling) "
                            f">= {EMBEDDING_LOSS[0]}, 95% low >= {EMBEDDING_LOSS[1]}",
                            c["real on the embedding"], c["real on spectrograms"],
                            *EMBEDDING_LOSS))  # fmt: skip
    out.append(_diff_target(f"quaternion ceiling minus the real one >= {QUATERNION_GAP[0]}, 95% "
                            f"low >= {QUATERNION_GAP[1]}", c["ceiling"],
                            c["real on spectrograms"], *QUATERNION_GAP))  # fmt: skip
    out.append(_sd_target(list(_ua(c["baseline"]).values())))
    words = [r["metrics"]["ua"] for r in c["word networks"]]
    out.append(interval_target(f"quaternion word network, held-out speakers >= {WORD_NETWORK}",
                                words, WORD_NETWORK))  # fmt: skip
    networks = [*c["RH-emos"], *c["word networks"]]
    expected = 3 * len(CONFIRM_PAIRS)  # an RH-emo per setup and a word network, per pair
    best = sum(map(tables.kept_at_best, networks))
    met = "not met" if best < len(networks) else "pending" if len(networks) < expected else "met"
    out.append({"target": "no upstream network kept at an epoch that is not its best on "
                "validation", "measured": f"{best}/{len(networks)} kept at their best "
                f"({len(networks)}/{expected} trained)", "met": met})  # fmt: skip
    out.append(_diff_target("the chosen RH-emo against the current instrument's, quaternion "
                            "ceiling: a gain (95% low > 0)", c["ceiling"],
                            c["current instrument"], 0.0, 1e-12))  # fmt: skip
    out += _cost_targets(records, chosen)
    return out


def _paired_text(a: dict, b: dict) -> str | None:
    """a - b of test UA paired over the (seed, fold) pairs both have, with its 95% interval."""
    keys = set(a) & set(b)
    if len(keys) < 2:
        return None
    d = stats.paired(_ua({k: a[k] for k in keys}), _ua({k: b[k] for k in keys}))
    return f"{d.mean:+.3f} [{d.t_low:+.3f}, {d.t_high:+.3f}] ({len(keys)} pairs)"


def shortfalls(records, chosen: str) -> list[str]:
    """For the targets out of reach, from the records: where the quaternion ceiling's loss
    against the real one arises (the embedding, or the quaternion network reading it), which
    candidate came closest on the selection pairs, and by how much each target is missed."""
    rows = {r["target"]: r for r in targets(records, chosen)}
    if any(r["met"] == "pending" for r in rows.values()):
        return []
    c = confirmation(records, chosen)
    out = []
    network = _paired_text(c["ceiling"], c["real on the embedding"])
    embedding = _paired_text(c["real on the embedding"], c["real on spectrograms"])
    if network and embedding:
        out.append(f"- Where the quaternion ceiling loses against the real one, on the fresh "
                   f"pairs (test UA): the real VGG16 reading the embedding minus reading the "
                   f"spectrogram {embedding}; the quaternion VGG16 minus the real one, both "
                   f"reading the embedding, {network}.")  # fmt: skip
    real = by_pair(records, [RunConfig(profile=FROZEN, model="real", seed=s, fold=f,
                                       setup=SETUP) for s, f in SELECT_PAIRS])  # fmt: skip
    gaps = {name: _paired_text(by_pair(records, [candidate(name, s, f) for s, f in
                                                 SELECT_PAIRS]), real)
            for name, *_ in CANDIDATES}  # fmt: skip
    gaps = {n: g for n, g in gaps.items() if g}
    if gaps:
        closest = max(gaps, key=lambda n: float(gaps[n].split()[0]))
        out.append(
            f"- Closest to the real ceiling on the selection pairs (test UA, quaternion "
            f"ceiling minus real): `{closest}` {gaps[closest]}; "
            + "; ".join(f"`{n}` {g}" for n, g in gaps.items() if n != closest)
            + "."
        )
    words = [r["metrics"]["ua"] for r in c["word networks"]]
    if words and statistics.fmean(words) < WORD_NETWORK:
        out.append(f"- The quaternion word networks miss {WORD_NETWORK} by "
                   f"{WORD_NETWORK - statistics.fmean(words):.3f} on average "
                   f"(lowest {min(words):.3f}, highest {max(words):.3f}).")  # fmt: skip
    n = len(c["baseline"])
    if n > 1:  # the largest sample SD whose chi-square interval still lies below the target
        largest = BASELINE_SD / stats.sd_interval(1.0, n)[1]
        out.append(f"- With {n} runs, the baseline SD's interval lies below {BASELINE_SD} only "
                   f"for a sample SD below {largest:.4f}; measured "
                   f"{statistics.stdev(_ua(c['baseline']).values()):.4f}.")  # fmt: skip
    return out


def decision(records, chosen: str) -> tuple[str | None, str]:
    """The rule that adopts an RH-emo for the instrument, written before the confirmation's
    runs: the chosen candidate is adopted when its quaternion ceiling beats the previous
    instrument's (PREVIOUS) on the fresh pairs, the paired 95% interval above 0; otherwise
    the instrument keeps PREVIOUS. The other targets are reported, never used to adopt.
    Returns (the adopted candidate, or "previous"; why), or (None, why) while pending."""
    c = confirmation(records, chosen)
    pairs = set(c["ceiling"]) & set(c["current instrument"])
    if len(pairs) < len(CONFIRM_PAIRS):
        return None, f"{len(pairs)}/{len(CONFIRM_PAIRS)} fresh pairs have both ceilings"
    d = stats.paired(_ua({k: c["ceiling"][k] for k in pairs}),
                     _ua({k: c["current instrument"][k] for k in pairs}))  # fmt: skip
    gain = f"{d.mean:+.3f} [{d.t_low:+.3f}, {d.t_high:+.3f}]"
    if d.t_low > 0:
        return chosen, f"`{chosen}`'s quaternion ceiling beats the previous one by {gain}"
    return "previous", (f"`{chosen}`'s quaternion ceiling against the previous one: {gain}, "
                        "an interval that does not lie above 0")  # fmt: skip


def instrument_problem(records) -> str | None:
    """Why the instrument's quaternion pipeline (qat.config.INSTRUMENT_UPSTREAM and
    INSTRUMENT_ENCODER) is not yet the one `decision` adopts, or None when it is: a method
    comparison (the fair race) must not start on an RH-emo the rule has not settled."""
    chosen, why = choose(scores(records))
    adopted, why = decision(records, chosen) if chosen else (None, why)
    if adopted is None:
        return (
            f"the RH-emo decision is pending ({why}); run `qat instrument --stage embedding`, "
            "then `--stage embedding-confirm` (reports/instrument.md, section 8)"
        )
    wanted = PREVIOUS if adopted == "previous" else _find(adopted)[1:]
    if (INSTRUMENT_UPSTREAM, INSTRUMENT_ENCODER) != tuple(wanted):
        return (
            f"the rule adopted {wanted[0]!r} with the {wanted[1]!r} encoder ({why}), but "
            f"qat.config has INSTRUMENT_UPSTREAM={INSTRUMENT_UPSTREAM!r} and "
            f"INSTRUMENT_ENCODER={INSTRUMENT_ENCODER!r}: set them to the adopted ones"
        )
    return None


def _sd_target(values: list[float]) -> dict:
    target = f"quaternion baseline SD <= {BASELINE_SD}"
    if len(values) < len(CONFIRM_PAIRS):
        return {"target": target, "measured": f"pending ({len(values)}/{len(CONFIRM_PAIRS)})",
                "met": "pending"}  # fmt: skip
    sd = statistics.stdev(values)
    low, high = stats.sd_interval(sd, len(values))
    return {"target": target, "measured": f"{sd:.4f} [{low:.4f}, {high:.4f}] (n={len(values)})",
            "met": stats.verdict(low, high, at_most=BASELINE_SD)}  # fmt: skip


def _cost_targets(records, chosen: str) -> list[dict]:
    from qat import costs

    real, quat = cost_configs(chosen)
    timed = costs.find(records, [real, quat])
    target = f"quaternion step <= {COST[0]}x the real one's time, <= {COST[1]}x its peak memory"
    if timed is None:
        return [{"target": target, "measured": "pending (`qat instrument --stage "
                 "embedding-confirm` times them side by side)", "met": "pending"}]  # fmt: skip
    ratio, low, high = costs.time_ratio(timed, quat, real)
    memory = (timed["entries"][quat.key()]["peak_memory_bytes"]
              / timed["entries"][real.key()]["peak_memory_bytes"])  # fmt: skip
    time_met = stats.verdict(low, high, at_most=COST[0])
    met = time_met if memory <= COST[1] else "not met"
    return [{"target": target, "measured": f"time {ratio:.2f} [{low:.2f}, {high:.2f}]x, memory "
             f"{memory:.2f}x ({timed['config']['rounds']} rounds)", "met": met}]  # fmt: skip


def section(records) -> list[str]:
    """reports/instrument.md's section: the candidates and the rule, the selection, the choice
    and its confirmation on fresh pairs against the issue's targets."""
    from qat.config import UPSTREAMS

    lines = [
        "RH-emo and the orthogonal networks trained with the SER recipe's care (warm-up and "
        "decay, early stopping on validation, the best-validation weights kept), with RH-emo "
        "chosen like the recipe: on ceiling runs only, on validation data, then confirmed on "
        f"fresh pairs. Candidates (qat.embedding.CANDIDATES, written before their runs), on "
        f"the pairs {_pairs(SELECT_PAIRS)} (`qat instrument --stage embedding`):",
        "",
    ]
    for name, upstream, encoder in CANDIDATES:
        design = UPSTREAMS[upstream]
        weights = ", ".join(f"{k} {v:g}" for k, v in design["rhemo_weights"].items())
        lines.append(f"- `{name}`: encoder {encoder}; loss weights {weights}; up to "
                     f"{design['rhemo_epochs'][0]} + {design['rhemo_epochs'][1]} epochs, "
                     f"patience {design['recipe']['patience']}")  # fmt: skip
    lines += ["", f"Every candidate keeps the profile's pools, so the embedding the quaternion "
              "VGG16 reads is the same size for all. A rating head whose balanced accuracy is "
              f"within {tables.CHANCE_MARGIN} of 0.5 is flagged AT CHANCE.", "",
              tables.markdown_table(selection_rows(records)), ""]  # fmt: skip
    chosen, why = choose(scores(records))
    if chosen is None:
        return [*lines, f"Not chosen yet: {why}."]
    lines += [f"Rule: {why}. Chosen: `{chosen}`.", "",
              f"Confirmation on the fresh pairs {_pairs(CONFIRM_PAIRS)} (`qat instrument "
              "--stage embedding-confirm`): the chosen RH-emo's quaternion baseline and ceiling, "
              "the real VGG16 reading its embedding and the spectrogram (ceilings), the current "
              "instrument's quaternion ceiling, and the quaternion word networks reading it. "
              "Differences are paired over the pairs, with 95% t-intervals.", "",
              tables.markdown_table(targets(records, chosen)), ""]  # fmt: skip
    missed = shortfalls(records, chosen)
    if missed:
        lines += ["The targets out of reach, in numbers:", "", *missed, ""]
    adopted, why = decision(records, chosen)
    reads = "the previous RH-emo" if adopted == "previous" else f"`{adopted}`"
    outcome = (
        f"Pending: {why}." if adopted is None else f"Decision: {why}; the instrument reads {reads}."
    )
    lines.append(
        "Adoption rule (`qat.embedding.decision`, written before the fresh pairs ran): the "
        "chosen RH-emo becomes the instrument's only if its quaternion ceiling beats the "
        f"previous one's ({PREVIOUS[0]}, {PREVIOUS[1]} encoder) on the fresh pairs, the paired "
        f"95% interval above 0. {outcome}"
    )
    return lines


def _pairs(pairs) -> str:
    return ", ".join(f"{s}/{f}" for s, f in pairs)


def reading(records) -> list[str]:
    """The section in a line or two, for the README."""
    chosen, why = choose(scores(records))
    if chosen is None:
        return [f"- RH-emo at full strength (section 8): not chosen yet ({why})."]
    rows = targets(records, chosen)
    met = [r["target"] for r in rows if r["met"] == "met"]
    pending = sum(r["met"] == "pending" for r in rows)
    fresh = (f"{pending} of {len(rows)} targets pending on the fresh pairs (`qat instrument "
             "--stage embedding-confirm`)" if pending else
             f"on fresh pairs {len(met)} of {len(rows)} targets met")  # fmt: skip
    adopted, verdict = decision(records, chosen)
    reads = "the previous (v1) RH-emo" if adopted == "previous" else f"`{adopted}`"
    rule = "" if adopted is None else f" Adoption: {verdict}; the instrument reads {reads}."
    return [f"- RH-emo at full strength (section 8): `{chosen}` chosen on validation ({why}); "
            f"{fresh}.{rule}"]  # fmt: skip
