"""RH-emo at full strength (qat.embedding): the candidates are distinct ceiling runs that
differ only in how RH-emo is built and trained, the rule picks as stated, and the fresh-pair
targets agree with scipy on synthetic records."""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from qat import embedding, tables, upstream
from qat.config import UPSTREAMS, RunConfig


def test_candidates_are_distinct_ceiling_runs_with_their_own_rhemo_and_the_same_embedding():
    configs = embedding.select_configs()
    assert len(configs) == len(embedding.CANDIDATES) * len(embedding.SELECT_PAIRS)
    assert len({c.key() for c in configs}) == len(configs)
    assert {(c.setup, c.method, c.model) for c in configs} == {("unconfounded", "baseline",
                                                                 "quaternion")}  # fmt: skip
    rhemos = {runs_key for runs_key in (str(upstream.rhemo_key(c)) for c in configs)}
    assert len(rhemos) == len(configs)  # one RH-emo per candidate and pair
    fresh = {(c.seed, c.fold) for c in embedding.confirm_configs("careful")}
    assert fresh == set(embedding.CONFIRM_PAIRS)
    assert not fresh & set(embedding.SELECT_PAIRS)
    for _, design, _ in embedding.CANDIDATES:  # the embedding's size is the profile's for all
        assert "rhemo_pools" not in UPSTREAMS[design]


def test_an_upstream_design_enters_the_key_with_its_settings_and_v1_records_keep_theirs():
    v1 = RunConfig(profile="smoke", model="quaternion")
    careful = v1.replace(upstream="careful")
    assert "upstream" not in v1.key_dict()
    assert careful.key_dict()["upstream"]["name"] == "careful"
    assert careful.key() != v1.key()
    assert RunConfig.from_record({"config": careful.key_dict()}) == careful
    assert RunConfig.from_record({"config": v1.key_dict()}).upstream == "v1"
    real = RunConfig(profile="smoke", model="real")  # reads no upstream network
    assert real.replace(upstream="careful").key() == real.key()
    # A real anti-transfer run reads an orthogonal network, not RH-emo: designs that differ in
    # RH-emo alone give it one key, which reads back to a design with that recipe.
    at = real.replace(method="at", upstream="careful")
    same = at.replace(upstream="careful-emotion")
    assert at.key() == same.key() != at.replace(upstream="v1").key()
    assert RunConfig.from_record({"config": same.key_dict()}).key() == same.key()


def test_choose_takes_the_best_mean_validation_ua_and_breaks_ties_by_the_candidates_order():
    names = [name for name, *_ in embedding.CANDIDATES]
    n = len(embedding.SELECT_PAIRS)
    scores = {name: [0.50] * n for name in names}
    assert embedding.choose({**scores, names[-1]: [0.5] * (n - 1)})[0] is None  # a pair missing
    scores[names[2]] = [0.60, 0.62, 0.58][:n]  # best: mean 0.60
    scores[names[3]] = [0.595] * n  # within TIE of it, but later in the order
    assert embedding.choose(scores)[0] == names[2]
    scores[names[1]] = [0.592] * n  # within TIE and earlier: it wins the tie
    pick, why = embedding.choose(scores)
    assert pick == names[1] and "0.600" in why


def _ser(config: RunConfig, ua: float, val_ua: float, rhemo=None) -> dict:
    record = {"kind": "ser", "config": config.key_dict(), "metrics": {"ua": ua},
              "history": [{"epoch": 1, "val_ua": val_ua}]}  # fmt: skip
    if rhemo:
        record["upstream_weights"] = {"rhemo": {"record": rhemo, "weights": "w"}}
    return record


def _confirmation(chosen: str, rng) -> tuple[list[dict], dict]:
    """Records of the confirmation's runs on the fresh pairs and their test UAs by role."""
    k = len(embedding.CONFIRM_PAIRS)
    real = rng.uniform(0.58, 0.62, k)
    quat = real - rng.uniform(0.00, 0.02, k)  # within 0.03 of the real ceiling
    on_rhemo = real - rng.uniform(0.06, 0.10, k)  # more than 0.05 below it
    heads = rng.uniform(0.60, 0.75, k)  # RH-emo's emotion head, validation UA
    records = []
    for i, (seed, fold) in enumerate(embedding.CONFIRM_PAIRS):
        rhemo = {"kind": "rhemo", "config": {"seed": seed}, "kept_epoch": 1, "stopped": "",
                 "history": [{"epoch": 1, "stage": "heads", "val_objective": 1.0,
                              "val_emotion_ua": heads[i]}]}  # fmt: skip
        ceiling = embedding.candidate(chosen, seed, fold)
        real_run = RunConfig(profile="cpu", model="real", seed=seed, fold=fold,
                             setup="unconfounded")  # fmt: skip
        records += [
            rhemo,
            _ser(ceiling, quat[i], 0.6, tables.record_id(rhemo)),
            _ser(ceiling.replace(setup="confounded"), 0.45 + 0.001 * i, 0.5),
            _ser(ceiling.replace(profile=embedding.REAL_ON_RHEMO, model="real"), on_rhemo[i], 0.6),
            _ser(real_run, real[i], 0.8),
            _ser(real_run.replace(model="quaternion"), quat[i] - 0.05, 0.5),
        ]
    return records, {"real": real, "quat": quat, "on_rhemo": on_rhemo, "heads": heads}


def test_the_fresh_pair_targets_are_scipy_s_paired_intervals_and_met_only_as_they_say():
    chosen = "careful"
    k = len(embedding.CONFIRM_PAIRS)
    records, ua = _confirmation(chosen, np.random.default_rng(3))
    real, quat, heads = ua["real"], ua["quat"], ua["heads"]
    rows = {r["target"][:24]: r for r in embedding.targets(records, chosen)}
    ratio = rows["RH-emo's emotion head, v"]
    low, high = sps.t.interval(0.95, k - 1, loc=(heads / 0.8).mean(),
                               scale=sps.sem(heads / 0.8))  # fmt: skip
    assert ratio["measured"] == f"{(heads / 0.8).mean():.2f} [{low:.2f}, {high:.2f}]"
    assert ratio["met"] == ("met" if low >= 0.8 else "not met" if high < 0.8 else "interval "
                            "too wide")  # fmt: skip
    gap = rows["quaternion ceiling minus"]
    low, high = sps.ttest_rel(quat, real).confidence_interval(0.95)
    assert gap["measured"] == f"{(quat - real).mean():+.3f} [{low:+.3f}, {high:+.3f}]"
    assert gap["met"] == ("met" if low >= -0.05 and (quat - real).mean() >= -0.03 else "not met")
    assert rows["real VGG16 on the embedd"]["met"] == "not met"  # wholly below -0.05
    gain = rows["the chosen RH-emo agains"]  # +0.05 on every pair: a gain
    assert gain["met"] == "met" and gain["measured"].startswith("+0.050")
    assert rows["quaternion word network,"]["met"] == "pending"  # none trained yet
    kept = rows["no upstream network kept"]  # 5 RH-emos of 15 networks, each at its best
    assert kept["met"] == "pending" and kept["measured"] == "5/5 kept at their best (5/15 trained)"
    assert rows["quaternion step <= 0.3x "[:24]]["met"] == "pending"  # not timed side by side
    adopted, why = embedding.decision(records, chosen)
    assert adopted == chosen and "+0.050" in why
    # The previous instrument's ceiling above the chosen one's on two pairs: the gain's
    # interval reaches below 0, and the instrument keeps the previous RH-emo.
    previous = [r for r in records if r.get("kind") == "ser" and r["config"].get("upstream")
                is None and r["config"]["model"] == "quaternion"]  # fmt: skip
    for record in previous[:2]:
        record["metrics"]["ua"] += 0.2
    diffs = quat - np.array([r["metrics"]["ua"] for r in previous])
    low, _ = sps.ttest_rel(quat, quat - diffs).confidence_interval(0.95)
    assert low < 0
    assert embedding.decision(records, chosen)[0] == "previous"
    assert embedding.decision(records[:-1], chosen)[0] is None  # a fresh pair without both ceilings


def test_the_shortfalls_split_the_quaternion_gap_and_bound_the_sd_a_target_allows(monkeypatch):
    chosen = "careful"
    k = len(embedding.CONFIRM_PAIRS)
    records, ua = _confirmation(chosen, np.random.default_rng(4))
    assert embedding.shortfalls(records, chosen) == []  # targets pending: nothing said yet
    settled = [{"target": "t", "measured": "m", "met": "not met"}]
    monkeypatch.setattr(embedding, "targets", lambda records, chosen: settled)
    where, sd = embedding.shortfalls(records, chosen)  # no selection runs, no word networks
    for a, b in ((ua["on_rhemo"], ua["real"]), (ua["quat"], ua["on_rhemo"])):
        low, high = sps.ttest_rel(a, b).confidence_interval(0.95)
        assert f"{(a - b).mean():+.3f} [{low:+.3f}, {high:+.3f}] ({k} pairs)" in where
    largest = 0.02 / np.sqrt((k - 1) / sps.chi2.ppf(0.025, k - 1))  # the interval's top = 0.02
    baselines = 0.45 + 0.001 * np.arange(k)
    assert f"below {largest:.4f}; measured {baselines.std(ddof=1):.4f}" in sd


def test_the_instrument_must_read_the_rh_emo_the_rule_adopted(monkeypatch):
    chosen = "careful-wide"
    monkeypatch.setattr(embedding, "choose", lambda scores: (chosen, "the rule"))
    verdicts = iter([(None, "2/5 fresh pairs"), (chosen, "a gain"), ("previous", "no gain")])
    monkeypatch.setattr(embedding, "decision", lambda records, name: next(verdicts))
    monkeypatch.setattr(embedding, "INSTRUMENT_UPSTREAM", "v1")
    monkeypatch.setattr(embedding, "INSTRUMENT_ENCODER", "published")
    assert "decision is pending (2/5 fresh pairs)" in embedding.instrument_problem([])
    problem = embedding.instrument_problem([])  # adopted careful-wide; config still v1
    assert "adopted 'careful' with the 'wide' encoder" in problem
    assert "INSTRUMENT_UPSTREAM='v1'" in problem
    assert embedding.instrument_problem([]) is None  # the previous RH-emo kept, as configured


def test_the_real_vgg16_on_the_embedding_reads_the_ceilings_rh_emo_and_no_other():
    """A real network reading RH-emo under a diagnostic profile is keyed by its RH-emo's
    encoder and design: it shares the quaternion ceiling's RH-emo, never the v1 one's file."""
    ceiling = embedding.candidate("careful-wide", 310, 0)
    real = ceiling.replace(profile=embedding.REAL_ON_RHEMO, model="real")
    assert upstream.rhemo_key(real) == upstream.rhemo_key(ceiling)
    v1 = RunConfig(profile="cpu", model="quaternion", seed=310, fold=0, setup="unconfounded")
    assert upstream.rhemo_key(real) != upstream.rhemo_key(v1)
    old = real.replace(upstream="v1", rhemo_encoder="published")  # the diagnosis's, as before
    assert upstream.rhemo_key(old) == upstream.rhemo_key(v1)
