"""Task setups: determinism, disjointness, the confound's strength and its control."""

import itertools
import json
import re
from collections import Counter

import numpy as np
import pytest

from qat.data.records import Utterance
from qat.data.splits import SETUPS, Split, kfold_speakers, make_split

EMOS = ("neutral", "happy", "sad", "angry", "fearful")


def factorial(n_speakers=12, n_words=40, emotions=EMOS, reps=2, corpus="synthemo"):
    """Every speaker says every word in every emotion `reps` times (fake paths, no audio)."""
    return [
        Utterance(
            path=f"/nowhere/s{s:02d}_w{w:02d}_{e}_{r}.wav",
            corpus=corpus,
            emotion=e,
            speaker=f"s{s:02d}",
            text=f"w{w:02d}",
        )
        for s, w, e, r in itertools.product(
            range(n_speakers), range(n_words), emotions, range(reps)
        )
    ]


@pytest.fixture(scope="module")
def records():
    return factorial()


def attr_set(records, idx, attr):
    return {getattr(records[i], attr) for i in idx}


@pytest.mark.parametrize("setup", SETUPS)
def test_same_seed_same_split_other_seed_other_split(records, setup):
    a = make_split(records, setup, seed=3)
    b = make_split(list(records), setup, seed=3)
    c = make_split(records, setup, seed=4)
    assert a == b and a.digest() == b.digest()
    assert a.digest() != c.digest()


@pytest.mark.parametrize("setup", SETUPS)
def test_parts_are_disjoint_nonempty_and_index_back(records, setup):
    split = make_split(records, setup, seed=1)
    train, val, test = split.indices(records)
    parts = [set(train), set(val), set(test)]
    assert all(parts)
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert [records[i].uid for i in train] == list(split.train)


def test_random_split_is_stratified_by_emotion(records):
    split = make_split(records, "random", seed=0, val_fraction=0.1, test_fraction=0.2)
    train, val, test = split.indices(records)
    per_emotion = len(records) // len(EMOS)  # 960
    for idx, expected in ((test, 192), (val, 77), (train, per_emotion - 192 - 77)):
        counts = Counter(records[i].emotion for i in idx)
        assert counts == dict.fromkeys(EMOS, expected)
    assert len(train) + len(val) + len(test) == len(records)


def test_speaker_split_holds_out_whole_speakers(records):
    split = make_split(records, "speaker", seed=2, n_test_speakers=3)
    train, val, test = split.indices(records)
    test_speakers = attr_set(records, test, "speaker")
    assert test_speakers == set(split.meta["test_speakers"]) and len(test_speakers) == 3
    assert not test_speakers & (
        attr_set(records, train, "speaker") | attr_set(records, val, "speaker")
    )
    assert len(test) == 3 * 40 * 5 * 2  # all their items
    default = make_split(records, "speaker", seed=2)
    assert len(default.meta["test_speakers"]) == 3  # a quarter of 12


def test_word_split_holds_out_whole_words(records):
    split = make_split(records, "word", seed=2, n_test_words=7)
    train, val, test = split.indices(records)
    test_words = attr_set(records, test, "text")
    assert len(test_words) == 7
    assert not test_words & (attr_set(records, train, "text") | attr_set(records, val, "text"))
    assert len(test) == 7 * 12 * 5 * 2


@pytest.mark.parametrize("k", [3, 5, 12])
def test_kfold_tests_every_speaker_exactly_once(records, k):
    folds = kfold_speakers(records, k, seed=0)
    assert len(folds) == k
    tested = Counter()
    for fold in folds:
        train, val, test = fold.indices(records)
        test_speakers = attr_set(records, test, "speaker")
        assert not test_speakers & attr_set(records, np.r_[train, val], "speaker")
        assert len(train) + len(val) + len(test) == len(records)
        tested.update(test_speakers)
    assert tested == {f"s{s:02d}": 1 for s in range(12)}
    assert folds == kfold_speakers(records, k, seed=0)


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_confounded_word_train_congruent_share_matches_rho(records, rho):
    split = make_split(records, "confounded", seed=5, rho=rho, factor="word")
    train, val, _ = split.indices(records)
    assignment = split.meta["assignment"]
    # The partition: every training word belongs to exactly one emotion.
    words = sorted(w for ws in assignment.values() for w in ws)
    assert words == sorted(attr_set(records, np.r_[train, val], "text"))
    # Congruence recomputed independently from the assignment.
    owner = {w: e for e, ws in assignment.items() for w in ws}
    share = np.mean([owner[records[i].text] == records[i].emotion for i in train])
    assert np.array_equal(
        split.congruent(records, train),
        [owner[records[i].text] == records[i].emotion for i in train],
    )
    # Kept pool share is rho up to rounding; train is a hypergeometric draw from it.
    kept = np.r_[train, val]
    p_kept = split.congruent(records, kept).mean()
    assert abs(p_kept - rho) < 0.01
    sd = np.sqrt(rho * (1 - rho) / len(train) * len(val) / len(kept))
    assert abs(share - rho) < 4 * sd + 0.01


def test_confounded_word_test_is_held_out_speakers_and_factorial(records):
    split = make_split(records, "confounded", seed=5, rho=0.9, factor="word")
    train, val, test = split.indices(records)
    test_speakers = attr_set(records, test, "speaker")
    assert test_speakers == set(split.meta["test_speakers"])
    assert not test_speakers & attr_set(records, np.r_[train, val], "speaker")
    cells = Counter((records[i].text, records[i].emotion) for i in test)
    assert len(cells) == 40 * 5 and set(cells.values()) == {len(test_speakers) * 2}
    # Independence: the congruent share of the test set is the chance level 8 words / 40.
    assert split.congruent(records, test).mean() == pytest.approx(8 / 40)


def test_confounded_speaker_factor(records):
    split = make_split(records, "confounded", seed=1, rho=0.8, factor="speaker", n_test_words=10)
    train, val, test = split.indices(records)
    test_words = attr_set(records, test, "text")
    assert len(test_words) == 10
    assert not test_words & attr_set(records, np.r_[train, val], "text")
    cells = Counter((records[i].speaker, records[i].emotion) for i in test)
    assert len(cells) == 12 * 5 and set(cells.values()) == {10 * 2}
    owner = {s: e for e, ss in split.meta["assignment"].items() for s in ss}
    assert sorted(owner) == sorted({r.speaker for r in records})
    kept_share = np.mean(
        [owner[records[i].speaker] == records[i].emotion for i in np.r_[train, val]]
    )
    assert abs(kept_share - 0.8) < 0.01


@pytest.mark.parametrize("factor", ["word", "speaker"])
def test_unconfounded_control_same_test_same_sizes_no_correlation(records, factor):
    conf = make_split(records, "confounded", seed=7, rho=0.9, factor=factor)
    ctrl = make_split(records, "unconfounded", seed=7, rho=0.9, factor=factor)
    assert ctrl.test == conf.test
    assert len(ctrl.train) == len(conf.train) and len(ctrl.val) == len(conf.val)
    c_train, _, _ = conf.indices(records)
    u_train, _, _ = ctrl.indices(records)
    assert Counter(records[i].emotion for i in u_train) == Counter(
        records[i].emotion for i in c_train
    )
    # Drawn uniformly from the pool: congruent share near the chance level 1/5, far from 0.9.
    share = ctrl.congruent(records, u_train).mean()
    assert abs(share - 0.2) < 0.06
    assert set(ctrl.train) != set(conf.train)


def test_to_dict_from_dict_round_trip_through_json(records):
    for setup in SETUPS:
        split = make_split(records, setup, seed=9)
        again = Split.from_dict(json.loads(json.dumps(split.to_dict())))
        assert again == split and again.digest() == split.digest()


def test_indices_reject_a_foreign_corpus(records):
    split = make_split(records, "random", seed=0)
    with pytest.raises(ValueError, match="missing"):
        split.indices(factorial(n_speakers=2))


def test_congruent_refuses_a_split_without_assignment(records):
    split = make_split(records, "speaker", seed=0)
    with pytest.raises(ValueError, match="assignment"):
        split.congruent(records, [0, 1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"setup": "bogus"}, "setup='bogus'.*random"),
        ({"setup": "confounded", "rho": 1.5}, r"rho=1\.5"),
        ({"setup": "confounded", "rho": 0.1}, "below chance"),
        ({"setup": "confounded", "factor": "emotion"}, "factor='emotion'"),
        ({"setup": "speaker", "n_test_speakers": 12}, "n_test_speakers=12"),
        ({"setup": "word", "n_test_words": 0}, "n_test_words=0"),
        ({"setup": "random", "val_fraction": 0.0}, "val_fraction=0.0"),
        ({"setup": "random", "seed": -1}, "seed=-1"),
    ],
)
def test_bad_options_raise_naming_the_parameter(records, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_split(records, **kwargs)


def test_too_few_words_or_speakers_for_the_emotions():
    few_words = factorial(n_speakers=4, n_words=3)
    with pytest.raises(ValueError, match="3 words for 5 emotions"):
        make_split(few_words, "confounded", factor="word")
    few_speakers = factorial(n_speakers=4, n_words=8)
    with pytest.raises(ValueError, match="4 training speakers for 5 emotions"):
        make_split(few_speakers, "confounded", factor="speaker")
    with pytest.raises(ValueError, match="1 speakers present"):
        make_split(factorial(n_speakers=1, n_words=4), "speaker")
    with pytest.raises(ValueError, match=r"k=13"):
        kfold_speakers(factorial(), 13)


def test_empty_part_after_filtering_is_an_error():
    tiny = factorial(n_speakers=2, n_words=1, emotions=("happy", "sad"), reps=1)
    with pytest.raises(ValueError, match="val set is empty"):
        make_split(tiny, "speaker", n_test_speakers=1)


def test_duplicate_uids_are_refused():
    recs = factorial(n_speakers=2, n_words=2)
    with pytest.raises(ValueError, match="occurs twice"):
        make_split([*recs, recs[0]], "random")


def test_groups_pair_each_emotion_with_the_emotion_its_word_was_given(records):
    split = make_split(records, "confounded", seed=3, rho=0.9)
    train, _, test = split.indices(records)
    owner = {w: e for e, ws in split.meta["assignment"].items() for w in ws}
    groups = split.groups(records, train, EMOS)
    for i, g in zip(train, groups, strict=True):  # hand rule, item by item
        assert g == EMOS.index(records[i].emotion) * len(EMOS) + EMOS.index(owner[records[i].text])
    congruent = split.congruent(records, train)
    assert np.array_equal(congruent, groups // len(EMOS) == groups % len(EMOS))
    assert set(split.groups(records, test, EMOS)) == set(range(len(EMOS) ** 2))  # all 25 in test


def test_unused_items_are_exactly_those_in_no_part(records):
    split = make_split(records, "confounded", seed=0, rho=0.9)
    parts = set(split.train) | set(split.val) | set(split.test)
    unused = split.unused_indices(records)
    assert {records[i].uid for i in unused} == {r.uid for r in records} - parts
    test_speakers = set(split.meta["test_speakers"])
    assert all(records[i].speaker not in test_speakers for i in unused)  # training speakers only
    assert len(unused) == split.meta["unused_pool"]


@pytest.mark.parametrize("setup", ["speaker", "confounded", "unconfounded"])
def test_folds_test_every_speaker_once_and_never_train_on_it(records, setup):
    folds = 4
    seen = []
    for fold in range(folds):
        split = make_split(records, setup, seed=fold, folds=folds, fold=fold)
        train, val, test = split.indices(records)
        held = attr_set(records, test, "speaker")
        trained = attr_set(records, train, "speaker") | attr_set(records, val, "speaker")
        assert held.isdisjoint(trained)
        assert split.meta["fold"] == fold and split.meta["folds"] == folds
        seen += sorted(held)
    assert sorted(seen) == sorted({r.speaker for r in records})  # each speaker tested once
    # The fold partition does not depend on the run's seed.
    a = make_split(records, setup, seed=0, folds=folds, fold=1).meta.get("test_speakers")
    b = make_split(records, setup, seed=7, folds=folds, fold=1).meta.get("test_speakers")
    assert a == b


@pytest.mark.parametrize(("kw", "named"), [
    ({"folds": 4, "fold": 4}, "fold=4: expected an integer in 0..3"),
    ({"folds": 4, "fold": -1}, "fold=-1"),
    ({"folds": 13, "fold": 0}, "folds=13: expected 2 <= folds <= 12"),
    ({"folds": None, "fold": 0}, "fold=0: expected folds="),
])  # fmt: skip
def test_bad_folds_are_named(records, kw, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        make_split(records, "speaker", **kw)


@pytest.mark.parametrize(
    ("corpus", "speakers", "expected"),
    [
        ("ravdess", [f"Actor_{i:02d}" for i in range(1, 25)],
         [[f"Actor_{i:02d}" for i in range(j, j + 4)] for j in range(1, 25, 4)]),
        ("emodb", ["03", "08", "09", "10", "11", "12", "13", "14", "15", "16"],
         [["03", "08"], ["09", "10"], ["11", "12"], ["13", "14"], ["15", "16"]]),
        ("iemocap", [f"Ses0{s}{g}" for s in range(1, 6) for g in "FM"],
         [[f"Ses0{s}F", f"Ses0{s}M"] for s in range(1, 6)]),
        ("savee", ["DC", "JE", "JK", "KL"], [["DC"], ["JE"], ["JK"], ["KL"]]),
        ("emovo", ["f1", "f2", "f3", "m1", "m2", "m3"], [[s] for s in ["f1", "f2", "f3", "m1",
                                                                     "m2", "m3"]]),
        ("tess", ["OAF", "YAF"], [["OAF"], ["YAF"]]),
        ("manifest", ["a", "b", "c", "d"], [["a"], ["b"], ["c"], ["d"]]),
        ("manifest", [f"s{i:02d}" for i in range(10)],
         [[f"s{i:02d}", f"s{i + 1:02d}"] for i in range(0, 10, 2)]),
    ],
)  # fmt: skip
def test_default_folds_follow_the_field(corpus, speakers, expected):
    from qat.data.splits import default_folds

    assert default_folds(corpus, speakers) == expected


@pytest.mark.parametrize("name", ["iemocap", "ravdess", "emodb", "tess", "emovo", "savee"])
def test_default_folds_on_fixture_trees_partition_the_speakers(tmp_path, name):
    import corpus_fixtures

    from qat.data.corpora import load_corpus
    from qat.data.splits import default_folds

    getattr(corpus_fixtures, f"build_{name}")(tmp_path)
    speakers = {r.speaker for r in load_corpus(name, tmp_path, on_error="skip")}
    folds = default_folds(name, speakers)
    assert sorted(s for f in folds for s in f) == sorted(speakers)  # each speaker in one fold
    assert len(folds) >= 2 and all(folds)
    if name == "iemocap":
        assert all(len({s[:5] for s in f}) == 1 for f in folds)  # one session per fold


def test_a_four_speaker_corpus_trains_on_at_least_two_and_never_on_fewer_than_it_tests(records):
    names = sorted({r.speaker for r in records})[:4]
    four = [r for r in records if r.speaker in names]
    split = make_split(four, "speaker", seed=0)
    train, val, _ = split.indices(four)
    assert len(attr_set(four, train, "speaker")) >= 2
    assert attr_set(four, val, "speaker") <= attr_set(four, train, "speaker")  # val: training
    with pytest.raises(ValueError, match="train on 1 speakers and test on 3"):
        make_split(four, "speaker", seed=0, folds=[names[:1], names[1:]], fold=1)
    # Asked for explicitly, it is allowed.
    assert make_split(four, "speaker", seed=0, n_test_speakers=3).meta["test_speakers"]
