"""The prosody oracle: how much emotion SynthEmo's prosody alone carries.

SynthEmo realises each emotion as prosody (rate, pitch, pitch range, volume, with jitter) and
writes what every utterance actually got to prosody.csv. A multinomial logistic regression on
those four numbers, fitted on a split's training items and scored on its held-out speakers,
gives the UA a classifier could reach from the emotion's own signal, word- and speaker-free:
the reference the unconfounded ceiling is judged against.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from qat import metrics
from qat.data.synth import PROSODY_CSV, Prosody

FEATURES = Prosody._fields  # rate, pitch, pitch_range, volume


def read_prosody(corpus_dir) -> pd.DataFrame:
    """prosody.csv of a SynthEmo folder, indexed by uid."""
    path = corpus_dir / PROSODY_CSV
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no prosody.csv; the oracle needs a SynthEmo folder")
    table = pd.read_csv(path).set_index("uid")
    missing = [c for c in FEATURES if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: columns {missing} missing; expected {list(FEATURES)}")
    return table


def prosody_oracle(prosody: pd.DataFrame, train_uids, train_y, test_uids, test_y) -> dict:
    """Fit on the training items' prosody, score on the test items; UA, WA and the number of
    items. Every uid must be in the table (a KeyError names the first one missing)."""
    x_train = prosody.loc[list(train_uids), list(FEATURES)].to_numpy(float)
    x_test = prosody.loc[list(test_uids), list(FEATURES)].to_numpy(float)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x_train, np.asarray(train_y))
    pred = model.predict(x_test)
    return {
        "ua": metrics.unweighted_accuracy(np.asarray(test_y), pred),
        "wa": metrics.weighted_accuracy(np.asarray(test_y), pred),
        "n_train": len(x_train),
        "n_test": len(x_test),
    }
