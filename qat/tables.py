"""Records -> tables: DataFrames, run labels, matching baselines, and the Markdown-table writer.

Every function reads run records (the JSON dicts under reports/runs/, or utterance records for
the corpus tables) and returns a pandas DataFrame, a label or a sort key; nothing here draws.
Numbers are never typed in: what a table shows is read from the records.

UA, WA and macro-F1 are fractions in [0, 1]; "UA gain" is the difference of two UAs (same
units). A run's matching baseline is the baseline record with the same corpus, setup, model,
seed, profile and split options.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from qat.config import RunConfig, label_of
from qat.data.records import EMOTIONS

METRIC_COLUMNS = ("UA", "WA", "macro-F1")
CONFOUND_COLUMNS = ("congruent UA", "incongruent UA", "follows shortcut", "congruent share (test)")
RESOURCE_COLUMNS = (
    "params",
    "GFLOPs/step",
    "step time (ms)",
    "peak memory (MiB)",
    "train time (s)",
    "best epoch",
    "epochs",
)
RHEMO_AXES = ("r: emotion", "i: valence", "j: arousal", "k: dominance")
RHEMO_HEAD_KEYS = ("val_emotion_ua", "val_valence_acc", "val_arousal_acc", "val_dominance_acc")

MIB = 2**20
ACCURACY_RANGE = (0.0, 1.0)  # UA, WA and any accuracy; intervals of them are clipped to it
METRIC_NAMES = {
    "ua": "UA",
    "wa": "WA",
    "macro_f1": "macro-F1",
    "congruent_ua": "UA on congruent items",
    "incongruent_ua": "UA on incongruent items",
    "follows_shortcut": "share following the shortcut",
}


# ---------------------------------------------------------------- record helpers


def check_records(records, what: str = "run records") -> list[dict]:
    """`records` (one record or several) as a non-empty list of record dicts with a config."""
    if isinstance(records, Mapping):
        records = [records]
    records = list(records)
    if not records:
        raise ValueError(f"records: expected at least one of the {what}, got none")
    for r in records:
        if not isinstance(r, Mapping) or "config" not in r:
            raise ValueError(f"records: expected run record dicts with a 'config', got {r!r:.80}")
    return records


def ser_records(records) -> list[dict]:
    """The SER runs (kind "ser") among `records`."""
    return [r for r in records if r.get("kind") == "ser"]


def ser_only(records, who: str) -> list[dict]:
    """The SER runs among `records`; an error naming `who` if there is none."""
    ser = ser_records(check_records(records))
    if not ser:
        kinds = sorted({str(r.get("kind")) for r in records})
        raise ValueError(f"{who}: expected SER run records (kind 'ser'), got kinds {kinds}")
    return ser


def as_float(value) -> float:
    """A record's number as a float, NaN for a missing (None) value."""
    return math.nan if value is None else float(value)


def tap_order(tap: str) -> tuple[int, int]:
    """Sort key putting taps in network order: conv1_1 < conv1_2 < ... < conv5_3 < penultimate."""
    match = re.fullmatch(r"conv(\d+)_(\d+)", tap)
    if match:
        return int(match[1]), int(match[2])
    return (10**6, 0) if tap == "penultimate" else (10**6 + 1, 0)


def run_label(record: Mapping, without: Sequence[str] = ()) -> str:
    """A short human name for a run: RunConfig's label for SER runs (e.g. "[confounded]
    quaternion at word@conv2_1 β=1"), the kind, setup and seed for pretrained networks.
    `without` drops parts that every compared run shares ("model", "taps", "seed", "setup")."""
    config = record["config"]
    kind = record.get("kind", "?")
    if kind == "ser":
        return label_of(config, without)
    parts = [kind]
    if config.get("setup") and "setup" not in without:
        parts.append(config["setup"])
    if "seed" not in without and config.get("seed"):
        parts.append(f"seed {config['seed']}")
    return " ".join(parts)


def _pair_key(config: Mapping) -> str:
    """The key of the baseline a run is compared with: the same run, method baseline."""
    run = RunConfig.from_record(config)
    return run.replace(method="baseline", init_from_orthogonal=False).key()


def _baselines(records: Sequence[Mapping]) -> dict[str, list[Mapping]]:
    out: dict[str, list[Mapping]] = defaultdict(list)
    for r in records:
        if r["config"].get("method") == "baseline":
            out[_pair_key(r["config"])].append(r)
    return out


def metric_value(record: Mapping, name: str) -> float:
    """A test metric of an SER record: "ua", "wa", "macro_f1" or a confound metric
    ("congruent_ua", "incongruent_ua", "follows_shortcut"); NaN when the record lacks it."""
    if name in ("ua", "wa", "macro_f1"):
        return as_float(record["metrics"].get(name))
    return as_float((record.get("confound") or {}).get(name))


def unique_labels(records: Sequence[Mapping]) -> list[str]:
    """run_label of each record, numbered "#1", "#2", ... where two runs share a label."""
    labels = [run_label(r) for r in records]
    seen: dict[str, int] = defaultdict(int)
    out = []
    for label in labels:
        seen[label] += 1
        out.append(label if labels.count(label) == 1 else f"{label} #{seen[label]}")
    return out


def configuration_order(record: Mapping) -> tuple:
    """Sort key for runs: by setup and model, baseline first, then by method, by tap in
    network order, and by seed."""
    c = record["config"]
    taps = [tap_order(t) for t in c.get("taps") or []]
    method = str(c.get("method"))
    return (str(c.get("setup")), str(c.get("model")), method != "baseline", method, taps,
            json.dumps(c, sort_keys=True, default=str))  # fmt: skip


# ---------------------------------------------------------------- tables


def results_table(records) -> pd.DataFrame:
    """One row per SER run: configuration, test UA/WA/macro-F1, the confound metrics (NaN when
    the setup is not confounded) and the cost of training (resources)."""
    rows = []
    for r in ser_only(records, "results_table"):
        c, m, res = r["config"], r["metrics"], r.get("resources") or {}
        confound = r.get("confound") or {}
        rows.append(
            {
                "run": run_label(r),
                "setup": c.get("setup"),
                "model": c.get("model"),
                "method": c.get("method"),
                "orthogonal": c.get("orthogonal"),
                "taps": "+".join(c.get("taps") or []),
                "beta": as_float(c.get("beta")),
                "lam": as_float(c.get("lam")),
                "seed": c.get("seed"),
                "UA": as_float(m.get("ua")),
                "WA": as_float(m.get("wa")),
                "macro-F1": as_float(m.get("macro_f1")),
                "congruent UA": as_float(confound.get("congruent_ua")),
                "incongruent UA": as_float(confound.get("incongruent_ua")),
                "follows shortcut": as_float(confound.get("follows_shortcut")),
                "congruent share (test)": as_float(confound.get("congruent_share_test")),
                "params": res.get("params"),
                "GFLOPs/step": as_float(res.get("flops_per_step")) / 1e9,
                "step time (ms)": as_float(res.get("step_time_s")) * 1e3,
                "peak memory (MiB)": as_float(res.get("peak_memory_bytes")) / MIB,
                # a run resumed from a checkpoint timed its last epochs only
                "train time (s)": math.nan
                if res.get("resumed_from_epoch")
                else as_float(res.get("train_time_s")),
                "best epoch": r.get("best_epoch"),
                "epochs": len(r.get("history") or []),
            }
        )
    return pd.DataFrame(rows)


def record_id(record: Mapping) -> str:
    """The file stem of a record under runs/ (<kind>-<config key>): how a table row names the
    records its numbers were read from."""
    from qat.runs import config_key

    return f"{record.get('kind')}-{config_key(record['config'])}"


def configurations(records) -> list[dict]:
    """The SER runs among `records` grouped per configuration (everything but seed and fold),
    in configuration_order: [{"config": its first run's config, "runs": {(seed, fold):
    record}}]. A forced rerun written beside a record is not a new run."""
    groups: dict[str, dict] = {}
    for r in sorted(ser_only(records, "configurations"), key=configuration_order):
        run = RunConfig.from_record(r)
        key = run.replace(seed=0, fold=None).key()
        group = groups.setdefault(key, {"config": r["config"], "runs": {}})
        group["runs"].setdefault((run.seed, run.fold), r)
    return list(groups.values())


def _pairs_text(pairs) -> str:
    """ "seed/fold" of each pair ("-": no fold), a repeated pair once with its count."""
    counts = Counter(tuple(pair) for pair in pairs)
    return ", ".join(
        f"{s}/{'-' if f is None else f}" + (f" ×{n}" if n > 1 else "")
        for (s, f), n in sorted(counts.items(), key=str)
    )


def upstream_name(config: Mapping, v1="v1") -> str | None:
    """How a record's upstream networks were trained (qat.config.UPSTREAMS): the design's name
    in a run's or RH-emo's config, "early stopping" for an orthogonal network keyed by its
    recipe, else `v1` (records from before the designs)."""
    upstream = config.get("upstream")
    if isinstance(upstream, Mapping):
        return upstream["name"]
    return "early stopping" if config.get("recipe") else v1


def _encoder(config: Mapping) -> str | None:
    """The RH-emo encoder a quaternion run reads (None for a real run)."""
    if config.get("model") != "quaternion":
        return None
    return config.get("rhemo_encoder") or "published"


def _settings(config: Mapping) -> dict:
    """A configuration's setting columns: what tells two rows with similar labels apart."""
    split = config.get("split") or {}
    return {
        "corpus": config.get("corpus"),
        "setup": config.get("setup"),
        "rho": split.get("rho"),
        "factor": split.get("factor"),
        "model": config.get("model"),
        "RH-emo encoder": _encoder(config),
        "profile": config.get("profile"),
    }


def _mean_and_interval(values: Sequence[float], name: str, bounds=(-math.inf, math.inf)) -> dict:
    """{name, "<name> SD", "<name> 95% low", "<name> 95% high"} of independent values
    (qat.stats.mean_interval); no SD or interval for a single value. The interval is clipped to
    `bounds`, the range the quantity can take (an accuracy's t-interval over 2 runs can
    otherwise reach below 0)."""
    from qat.stats import mean_interval

    low, high = (float(v) for v in np.clip(mean_interval(values), *bounds))
    return {
        name: float(np.mean(values)),
        f"{name} SD": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
        f"{name} 95% low": low,
        f"{name} 95% high": high,
    }


def configuration_table(records) -> pd.DataFrame:
    """One row per configuration (everything but seed and fold): its setting columns, the
    (seed, fold) runs it has, and mean, SD and 95% t-interval of test UA over them, with mean
    WA, macro-F1, worst-group accuracy and step cost; "records" names the record files."""
    rows = []
    for group in configurations(records):
        c, runs = group["config"], list(group["runs"].values())
        worst = [r["groups"]["worst_group"] for r in runs if (r.get("groups") or {})]
        rows.append({
            "configuration": label_of(c, without=("seed", "fold")),
            **_settings(c),
            "runs": len(runs),
            "(seed, fold)": _pairs_text(group["runs"]),
            **_mean_and_interval([r["metrics"]["ua"] for r in runs], "UA", ACCURACY_RANGE),
            "WA": float(np.mean([r["metrics"]["wa"] for r in runs])),
            "macro-F1": float(np.mean([r["metrics"]["macro_f1"] for r in runs])),
            "worst-group accuracy": float(np.mean(worst)) if worst else math.nan,
            "step time (ms)": 1e3 * _mean_resource(runs, "step_time_s"),
            "records": [record_id(r) for r in runs],
        })  # fmt: skip
    return pd.DataFrame(rows)


def sweep_table(records) -> pd.DataFrame:
    """One row per single-tap method run (AT at one tap), beside its matching baseline: UA,
    baseline UA, UA gain, and the step time / peak memory of both. A run without a baseline
    record gets NaN baseline columns. `group` names the configuration without tap and seed."""
    ser = ser_only(records, "sweep_table")
    baselines = _baselines(ser)
    rows = []
    for r in ser:
        c = r["config"]
        taps = c.get("taps") or []
        if c.get("method") == "baseline" or len(taps) != 1:
            continue
        base = baselines.get(_pair_key(c), [])
        res = r.get("resources") or {}
        base_ua = np.mean([b["metrics"]["ua"] for b in base]) if base else math.nan
        base_time = _mean_resource(base, "step_time_s")
        base_mem = _mean_resource(base, "peak_memory_bytes")
        rows.append(
            {
                "group": run_label(r, without=("taps", "seed", "setup")),
                "model": c.get("model"),
                "method": c.get("method"),
                "tap": taps[0],
                "seed": c.get("seed"),
                "UA": as_float(r["metrics"].get("ua")),
                "baseline UA": float(base_ua),
                "UA gain": as_float(r["metrics"].get("ua")) - float(base_ua),
                "step time (ms)": as_float(res.get("step_time_s")) * 1e3,
                "baseline step time (ms)": base_time * 1e3,
                "peak memory (MiB)": as_float(res.get("peak_memory_bytes")) / MIB,
                "baseline peak memory (MiB)": base_mem / MIB,
                "GFLOPs/step": as_float(res.get("flops_per_step")) / 1e9,
                "records": [record_id(r)] + [record_id(b) for b in base],
            }
        )
    columns = ["group", "model", "method", "tap", "seed", "UA", "baseline UA", "UA gain"]
    if not rows:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows)
    table["_order"] = table["tap"].map(tap_order)
    return (
        table.sort_values(["group", "_order", "seed"]).drop(columns="_order").reset_index(drop=True)
    )


def _mean_resource(records: Sequence[Mapping], key: str) -> float:
    values = [(r.get("resources") or {}).get(key) for r in records]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else math.nan


def probe_table(records) -> pd.DataFrame:
    """Linear-probe accuracy of the orthogonal label (word or speaker) at each probed tap, one
    row per configuration: the mean over its (seed, fold) runs, columns "<label> @ <tap>" in
    network order; "records" names the record files."""
    rows = []
    for group in configurations(records):
        runs = [r for r in group["runs"].values() if r.get("probe")]
        if not runs:
            continue
        values: dict[str, list[float]] = defaultdict(list)
        for r in runs:
            for label, by_tap in r["probe"].items():
                for tap, value in by_tap.items():
                    values[f"{label} @ {tap}"].append(as_float(value))
        rows.append(
            {
                "configuration": label_of(group["config"], without=("seed", "fold")),
                "runs": len(runs),
                **{k: float(np.mean(v)) for k, v in values.items()},
                "records": [record_id(r) for r in runs],
            }
        )
    table = pd.DataFrame(rows)
    probes = sorted((c for c in table.columns if " @ " in c),
                    key=lambda k: (k.split(" @ ")[0], tap_order(k.split(" @ ")[1])))  # fmt: skip
    return table[["configuration", "runs", *probes, "records"]] if rows else table


def pretrained_table(records) -> pd.DataFrame:
    """One row per pretrained orthogonal network (records of kind "orthogonal-<task>-<model>"):
    task, model, epochs, its own test UA/WA/macro-F1 on the orthogonal task, training time."""
    rows = []
    for r in check_records(records, "pretrained-network records"):
        if not str(r.get("kind", "")).startswith("orthogonal-"):
            continue
        c, m = r["config"], r.get("metrics") or {}
        rows.append(
            {
                "network": r["kind"],
                "task": c.get("task"),
                "model": c.get("model"),
                "seed": c.get("seed"),
                "epochs": len(r.get("history") or []),
                "test UA": as_float(m.get("ua")),
                "test WA": as_float(m.get("wa")),
                "test macro-F1": as_float(m.get("macro_f1")),
                "train time (s)": as_float(r.get("wall_time_s")),
            }
        )
    return pd.DataFrame(rows)


def rhemo_table(records) -> pd.DataFrame:
    """One row per RH-emo record: its split, epochs, and the last epoch's validation
    reconstruction MSE and head accuracies (emotion UA on r; valence/arousal/dominance on
    i/j/k)."""
    rows = []
    for r in check_records(records, "RH-emo records"):
        if r.get("kind") != "rhemo":
            continue
        last = kept_row(r)
        row = {
            "corpus": r["config"].get("corpus"),
            "setup": r["config"].get("setup"),
            "seed": r["config"].get("seed"),
            "epochs": len(r.get("history") or []),
            "kept epoch": last.get("epoch"),
            "val reconstruction MSE": as_float(last.get("val_reconstruction_mse")),
        }
        for axis, key in zip(RHEMO_AXES, RHEMO_HEAD_KEYS, strict=True):
            row[f"{axis} accuracy"] = as_float(last.get(key))
        for axis in RHEMO_AXES[1:]:
            head = axis.split(": ")[1]
            row[f"{axis} balanced accuracy"] = heads_against_chance(last, head)
        row["train time (s)"] = as_float(r.get("wall_time_s"))
        rows.append(row)
    return pd.DataFrame(rows)


CHANCE_MARGIN = 0.05  # a rating head within this of 0.5 balanced accuracy is at chance


def kept_row(record: Mapping) -> Mapping:
    """The history row of the epoch whose weights a network keeps: its `kept_epoch`, or the
    last epoch for records from before early stopping (which kept the last)."""
    history = record.get("history") or [{}]
    kept = record.get("kept_epoch")
    return history[kept - 1] if isinstance(kept, int) and 1 <= kept <= len(history) else history[-1]


def kept_at_best(record: Mapping) -> bool:
    """Whether a network keeps the epoch with its best validation score: the lowest validation
    loss (objective, for RH-emo: within its last stage)."""
    history = record.get("history") or []
    if record.get("kind") == "rhemo":
        stage = (history or [{}])[-1].get("stage")
        history = [h for h in history if h.get("stage") == stage]
    key = "val_objective" if history and "val_objective" in history[-1] else "val_loss"
    losses = [h[key] for h in history if key in h]
    return bool(losses) and kept_row(record).get(key) == min(losses)


def heads_against_chance(row: Mapping, head: str) -> str:
    """A rating head's validation balanced accuracy beside its majority rate, flagged when it
    is within CHANCE_MARGIN of 0.5 (a head that answers the majority class has learned
    nothing); records from before balanced accuracy was kept show n/a."""
    balanced = row.get(f"val_{head}_balanced")
    if balanced is None:
        return "n/a"
    flag = " AT CHANCE" if balanced < 0.5 + CHANCE_MARGIN else ""
    return f"{balanced:.3f} (majority {row[f'val_{head}_majority']:.3f}){flag}"


def _best_at_last(record: Mapping) -> bool:
    """Whether a network's validation loss was still at its best at the last epoch (it might
    have improved with more epochs)."""
    losses = [h["val_loss"] for h in record.get("history") or [] if "val_loss" in h]
    return bool(losses) and losses[-1] <= min(losses)


def _last_drop(record: Mapping) -> float:
    """The relative drop of RH-emo's validation reconstruction MSE over its last epoch
    (about 0 when it has converged)."""
    mse = [h.get("val_reconstruction_mse") for h in record.get("history") or []]
    mse = [as_float(m) for m in mse if m is not None]
    return 1 - mse[-1] / mse[-2] if len(mse) >= 2 else math.nan


def heads_summary(rows, head: str) -> str:
    """A rating head over a row's networks: mean balanced accuracy and majority rate, and how
    many of the networks have it at chance."""
    known = [r for r in rows if r.get(f"val_{head}_balanced") is not None]
    if not known:
        return "n/a"
    balanced = float(np.mean([r[f"val_{head}_balanced"] for r in known]))
    majority = float(np.mean([r[f"val_{head}_majority"] for r in known]))
    at_chance = sum(r[f"val_{head}_balanced"] < 0.5 + CHANCE_MARGIN for r in known)
    flag = f"; AT CHANCE in {at_chance}/{len(known)}" if at_chance else ""
    return f"{balanced:.3f} (majority {majority:.3f}){flag}"


def upstream_table(records) -> pd.DataFrame:
    """The upstream networks' quality, one row per configuration (profile, network, the data it
    was trained on, the RH-emo encoder): the orthogonal networks (word or speaker recognition;
    accuracy = their test UA on the orthogonal task, held-out speakers for words where the
    profile says so) and RH-emo (accuracy = its emotion head's validation UA on r, with the
    reconstruction MSE and the valence/arousal/dominance heads on i, j, k, last epoch). Mean
    and 95% t-interval over the networks of a row (one per seed, fold); "records" names the
    record files."""
    from qat.config import PROFILES

    records = check_records(records, "upstream-network records")
    groups: dict[tuple, list[Mapping]] = defaultdict(list)
    for r in records:
        kind, c = str(r.get("kind", "")), r["config"]
        split = c.get("split") or {}
        if kind.startswith("orthogonal-"):
            held_out = c.get("task") == "word" and (PROFILES.get(c.get("profile")) or {}).get(
                "orthogonal_setup"
            )
            key = (f"{c.get('task')} recognition", c.get("model"), _encoder(c), c.get("profile"),
                   "orthogonal corpus", None, None,
                   "test, held-out speakers" if held_out else "test, random split")  # fmt: skip
        elif kind == "rhemo":
            key = ("RH-emo", "quaternion", _encoder({"model": "quaternion", **c}),
                   c.get("profile"), c.get("setup"), split.get("rho"), split.get("factor"),
                   "validation (emotion head)")  # fmt: skip
        else:
            continue
        groups[(*key, upstream_name(c))].append(r)
    rows = []
    for key, members in groups.items():
        network, model, encoder, profile, data, rho, factor, scored, upstream = key
        rhemo = network == "RH-emo"
        lasts = [kept_row(r) for r in members]
        accuracy = [
            as_float(last.get("val_emotion_ua")) if rhemo else as_float(r["metrics"].get("ua"))
            for r, last in zip(members, lasts, strict=True)
        ]
        pairs = [(r["config"].get("seed"), (r["config"].get("split") or {}).get("fold"))
                 for r in members]  # fmt: skip
        row = {
            "network": network, "model": model, "RH-emo encoder": encoder, "profile": profile,
            "trained on": data, "rho": rho, "factor": factor, "scored on": scored,
            "upstream": upstream, "networks": len(members), "(seed, fold)": _pairs_text(pairs),
            **_mean_and_interval(accuracy, "accuracy", ACCURACY_RANGE),
            "epochs": float(np.mean([len(r.get("history") or []) for r in members])),
            "kept epoch": float(np.mean([kept_row(r).get("epoch", math.nan) for r in members])),
            "kept at its best validation epoch": f"{sum(map(kept_at_best, members))}/"
                                                 f"{len(members)}",
            "stopped early": f"{sum('early' in r.get('stopped', '') for r in members)}/"
                             f"{len(members)}",
            "best val loss at the last epoch": None if rhemo else
            f"{sum(_best_at_last(r) for r in members)}/{len(members)}",
        }  # fmt: skip
        if rhemo:
            row["reconstruction MSE"] = float(
                np.mean([as_float(last.get("val_reconstruction_mse")) for last in lasts])
            )
            row["reconstruction, last-epoch drop"] = float(
                np.mean([_last_drop(r) for r in members])
            )
            for axis, head in zip(RHEMO_AXES[1:], RHEMO_HEAD_KEYS[1:], strict=True):
                row[f"{axis} accuracy"] = float(np.mean([as_float(x.get(head)) for x in lasts]))
                row[f"{axis} balanced accuracy"] = heads_summary(lasts, axis.split(": ")[1])
        row["train time (s)"] = float(np.mean([as_float(r.get("wall_time_s")) for r in members]))
        row["records"] = [record_id(r) for r in members]
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    order = ["network", "model", "profile", "trained on", "RH-emo encoder"]
    table = table.sort_values(order, key=lambda col: col.astype(str)).reset_index(drop=True)
    return table[[c for c in table.columns if c != "records"] + ["records"]]


def pick_examples(utterances, per_emotion: int = 1) -> list[int]:
    """Positions of the first `per_emotion` utterances of each emotion (emotions in the
    common vocabulary's order): a small deterministic set of examples to look at."""
    if per_emotion < 1:
        raise ValueError(f"per_emotion={per_emotion!r}: expected an integer >= 1")
    by_emotion: dict[str, list[int]] = defaultdict(list)
    for i, u in enumerate(utterances):
        if len(by_emotion[u.emotion]) < per_emotion:
            by_emotion[u.emotion].append(i)
    return [i for e in ordered_values(by_emotion, "emotion") for i in by_emotion[e]]


def cooccurrence_table(utterances, column: str = "text", row: str = "emotion") -> pd.DataFrame:
    """Counts of utterances per (row value, column value), e.g. emotion x word ("text") or
    emotion x speaker. Emotions keep the common vocabulary's order, other values are sorted."""
    utterances = list(utterances)
    if not utterances:
        raise ValueError("utterances: expected at least one utterance record, got none")
    for name in (row, column):
        if not hasattr(utterances[0], name):
            raise ValueError(f"{name!r} is not an utterance field; expected e.g. emotion, text")
    table = pd.crosstab(
        pd.Series([getattr(u, row) for u in utterances], name=row),
        pd.Series([getattr(u, column) for u in utterances], name=column),
    )
    return table.reindex(index=ordered_values(table.index, row), columns=sorted(table.columns))


def ordered_values(values, field: str) -> list:
    """Values of an utterance field in display order: emotions in the common vocabulary's
    order (unknown ones last), anything else sorted."""
    if field != "emotion":
        return sorted(values)
    rank = {e: i for i, e in enumerate(EMOTIONS)}
    return sorted(values, key=lambda v: (rank.get(v, len(rank)), v))


def sweep_summary(records) -> pd.DataFrame:
    """sweep_table averaged over seeds per (group, tap): runs, "pairs" (the runs that have a
    baseline of their own (seed, fold)), mean UA gain over those pairs with its SD and 95%
    t-interval, mean costs, and the record files ("records")."""
    table = sweep_table(records)
    if table.empty:
        raise ValueError(
            "records: no single-tap method run (e.g. AT at one tap) to plot against its tap"
        )
    rows = []
    for (group, tap), part in table.groupby(["group", "tap"], sort=False):
        gains = part["UA gain"].dropna().tolist()
        gains = gains or [math.nan]  # NaN: no baseline
        interval = _mean_and_interval(gains, "UA gain", (-1.0, 1.0))
        means = part.drop(columns=["group", "model", "method", "tap", "seed", "records"]).mean()
        rows.append({
            "group": group, "model": part["model"].iloc[0], "method": part["method"].iloc[0],
            "tap": tap, "runs": len(part), "pairs": int(part["UA gain"].notna().sum()),
            **means.to_dict(),
            **{k: v for k, v in interval.items() if k != "UA gain"},
            "records": [r for ids in part["records"] for r in ids],
        })  # fmt: skip
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- Markdown


# Columns holding fractions (UA, accuracy, shares): printed with 3 decimals by default.
FRACTION_KEYS = ("UA", "WA", "F1", "accuracy", "share", "shortcut", " @ ")


def default_float_format(column: str) -> str:
    """The report's rule for a float column: a gain signed with 3 decimals ("+0.062"), a
    fraction with 3 decimals, anything else with 4 significant digits."""
    if column.endswith("gain"):
        return "+.3f"
    if any(key in column for key in FRACTION_KEYS):
        return ".3f"
    return ".4g"


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def _cell(value, column: str, formats: Mapping[str, str], float_format, missing: str) -> str:
    if _is_missing(value):
        return missing
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        spec = formats.get(column) or float_format or default_float_format(column)
        return format(float(value), spec)
    return str(value).replace("|", "\\|")


def markdown_table(
    table: pd.DataFrame | Sequence[Mapping] | Sequence[Sequence],
    columns: Sequence[str] | None = None,
    *,
    float_format: str | None = None,
    formats: Mapping[str, str] | None = None,
    missing: str = "–",
    empty: str = "_(no rows)_",
) -> str:
    """A GitHub-flavoured Markdown table: the kit's one table writer.

    `table` is a DataFrame (its columns, index dropped), a list of dicts (columns: `columns`,
    else every row's keys in order of appearance) or a list of row sequences (`columns`
    required, one name per value). Cells: None and NaN print as `missing`; bools and integers
    as they are; text with "|" escaped; floats with `formats[column]` if given, else
    `float_format` for every float column (e.g. ".3g"), else the report's rule
    (default_float_format: gains "+.3f", fractions ".3f", other numbers ".4g"). Formats are
    format-spec strings (format(value, spec)). A table without rows prints as `empty`."""
    formats = dict(formats or {})
    if isinstance(table, pd.DataFrame):
        names = [str(c) for c in (columns if columns is not None else table.columns)]
        frame = table if columns is None else table[list(columns)]
        rows = [list(row) for row in frame.itertuples(index=False)]
    else:
        records = list(table)
        if not records:
            return empty
        if isinstance(records[0], Mapping):
            union = dict.fromkeys(k for r in records for k in r)  # every row's keys, in order
            names = [str(c) for c in (columns if columns is not None else union)]
            rows = [[r.get(c) for c in names] for r in records]
        else:
            if columns is None:
                raise ValueError("columns: expected the column names for rows given as sequences")
            names = [str(c) for c in columns]
            rows = [list(r) for r in records]
            for row in rows:
                if len(row) != len(names):
                    raise ValueError(f"row {row!r:.80}: expected {len(names)} values ({names})")
    if not rows:
        return empty
    unknown = sorted(set(formats) - set(names))
    if unknown:
        raise ValueError(f"formats: columns {unknown} are not in the table's columns {names}")
    lines = [
        "| " + " | ".join(names) + " |",
        "|" + "|".join("---" for _ in names) + "|",
    ]
    for row in rows:
        cells = (
            _cell(v, c, formats, float_format, missing) for v, c in zip(row, names, strict=True)
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def traced_markdown(table: pd.DataFrame, names: Sequence[str] = ("configuration",)) -> str:
    """`table` as Markdown without its "records" column, then a collapsed list naming the
    record files (under runs/) behind each row (the row named by its `names` columns), so every
    number can be traced to the records it was read from."""
    shown = markdown_table(table.drop(columns="records"))
    items = [
        f"- {' '.join(str(row[n]) for n in names)}: " + ", ".join(f"`{r}`" for r in row["records"])
        for _, row in table.iterrows()
    ]
    return "\n".join([shown, "", "<details><summary>records behind each row</summary>", "",
                      *items, "", "</details>"])  # fmt: skip


def upstream_markdown(records) -> str:
    """upstream_table as a numbered Markdown table with its records, and what a row is."""
    table = upstream_table(records) if records else pd.DataFrame()
    if table.empty:
        return "_No upstream-network records yet._"
    table = table.dropna(axis=1, how="all")
    table.insert(0, "row", range(1, len(table) + 1))
    stray = unrecorded_weights(records)
    note = (
        f"\n\n**{len(stray)} run(s) stood on network weights that no record here describes** "
        "(a network retrained after its cache was lost): " + ", ".join(stray)
        if stray
        else ""
    )
    return (
        "One row per configuration: mean and 95% t-interval of the accuracy over its networks, "
        "clipped to [0, 1] "
        "(one per seed and fold; a quaternion word network reads the frozen RH-emo of one "
        "split, hence its repeated seed).\n\n" + traced_markdown(table, ("row",)) + note
    )


def unrecorded_weights(records) -> list[str]:
    """The ids of SER runs that stood on a network whose record describes other weights (the
    network was retrained under it, e.g. after its cache was lost). Runs and networks from
    before weights were recorded are not judged."""
    digest = {record_id(r): r.get("weights_digest") for r in records if r.get("kind") != "ser"}
    return [
        record_id(r)
        for r in records
        if r.get("kind") == "ser"
        and any(
            digest.get(used["record"]) not in (None, used["weights"])
            for used in (r.get("upstream_weights") or {}).values()
        )
    ]


def baseline_by_pair(
    records, pairs, profile: str, model: str, setup: str, encoder: str | None = None,
    upstream: str | None = None,
) -> dict[tuple, dict]:  # fmt: skip
    """{(seed, fold): record} of the baseline runs of a profile, model, setup, RH-emo encoder
    (None: the published one) and upstream design (None: v1) on `pairs`; one record per pair
    (a rerun written beside a record is not a new pair)."""
    out = {}
    for r in records:
        c = r["config"]
        pair = (c.get("seed"), (c.get("split") or {}).get("fold"))
        if (c.get("profile"), c.get("model"), c.get("setup"), c.get("method"),
            c.get("rhemo_encoder"), upstream_name(c, None)) == (
            profile, model, setup, "baseline", encoder, upstream) and (
            pair in pairs
        ):  # fmt: skip
            out.setdefault(pair, r)
    return out


def overhead_share(t: dict) -> float:
    """Data preparation, step-cost measurement and probes over training time (training the
    upstream networks, cached and shared by every method on a split, is not counted where the
    record separates it). Records from before the split of these timings count everything
    after training (evaluation too)."""
    if "probe" in t:
        return (t["prepare"] + t["step_cost"] + t["probe"]) / t["train"]
    return (t["prepare"] + t["after"]) / t["train"]
