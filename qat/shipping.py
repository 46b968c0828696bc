"""The model files committed with the kit (issue 36): the fair race's main-setting finalists,
one per method and model (the baseline, the ceiling and every method; not the placebos) from
the first fresh pair, so that `qat predict` and `qat evaluate` work on a fresh clone.

A shipped copy is the run's model file with its network and RH-emo weights stored in float16:
the float32 files of the real finalists alone pass the BUDGET (a real cpu-profile file is
about 2.4 MB; `qat models --ship` prints the sizes). Loading casts them back to float32, so a
shipped copy's predictions may differ from the trained file's in the last digits: `qat
evaluate` on it states its own UA. Copies are named by the digest of their bytes (content-
keyed: the same weights are one file), written once, and listed in models/index.json
({the run's model file name: the copy's name}), which qat.saved.resolve_stored reads when the
cache lacks a run's file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from qat import demonstration, io, runs, saved
from qat.saved import SHIPPED_INDEX, _read, _serialised, resolve_stored

BUDGET = 20 * 2**20  # bytes, every shipped copy together
SHIPPED_NAMES = ("baseline", "ceiling", *demonstration.METHODS)  # per model


def halved(payload: dict) -> dict:
    """The model file's payload with every float32 weight of its network and RH-emo in
    float16 (everything else, the normaliser included, as it was)."""
    out = dict(payload)
    for part in ("model", "rhemo"):
        if out.get(part) is not None:
            state = {k: v.half() if v.dtype == torch.float32 else v
                     for k, v in out[part]["state_dict"].items()}  # fmt: skip
            out[part] = {**out[part], "state_dict": state}
    return out


def chosen(records) -> dict[str, dict]:
    """{"<model> <finalist>": its run record on the first fresh pair} for SHIPPED_NAMES of
    each model whose finalist has run there."""
    seed, fold = demonstration.FINAL_PAIRS[0]
    out = {}
    for model in demonstration.MODELS:
        for name, config in demonstration.finalists(records, model).items():
            if name not in SHIPPED_NAMES:
                continue
            key = config.replace(seed=seed, fold=fold).key()
            found = [r for r in records if r.get("kind") == "ser"
                     and runs.config_key(r["config"]) == key and r.get("model")]  # fmt: skip
            if found:
                out[f"{model} {name}"] = found[0]
    return out


def ship(records, folder: Path | None = None, budget: int = BUDGET) -> list[dict]:
    """Write the shipped copies of `chosen(records)` into `folder` (default qat.saved.SHIPPED,
    where records look) and list them in its index; returns one row per copy (what, the run's
    file, the copy, bytes). Refuses, writing nothing, when a run's model file is not in this
    cache or the copies together exceed `budget`."""
    folder = Path(folder) if folder is not None else saved.SHIPPED
    picked = chosen(records)
    if not picked:
        seed, fold = demonstration.FINAL_PAIRS[0]
        raise ValueError(f"qat models --ship: no finalist of the fair race has run on pair "
                         f"{seed}/{fold} yet (`qat demonstration` runs them)")  # fmt: skip
    sources = {what: resolve_stored(r["model"]) for what, r in picked.items()}
    missing = [f"{what} ({path})" for what, path in sources.items() if not path.is_file()]
    if missing:
        raise ValueError(f"qat models --ship: {len(missing)} model file(s) are not in this "
                         f"cache: {io.summarise(missing, 3)}; train or copy them "
                         "first")  # fmt: skip
    copies = {what: _serialised(halved(_read(path))) for what, path in sources.items()}
    total = sum(map(len, copies.values()))
    if total > budget:
        sizes = ", ".join(f"{w} {len(d) / 2**20:.2f}" for w, d in copies.items())
        raise ValueError(f"qat models --ship: the copies need {total / 2**20:.1f} MiB, more than "
                         f"the budget of {budget / 2**20:.0f} MiB (MiB each: {sizes})")  # fmt: skip
    io.ensure_folder(folder, "shipped models")
    index = saved.shipped_index(folder)
    rows = []
    for what, data in copies.items():
        name = f"ser-{hashlib.sha256(data).hexdigest()[:16]}.pt"
        if not (folder / name).exists():
            io.write_bytes_beside(folder / name, data)
        index[sources[what].name] = name
        rows.append({"finalist": what, "source": sources[what].name, "shipped": name,
                     "bytes": len(data)})  # fmt: skip
    io.write_json(folder / SHIPPED_INDEX, dict(sorted(index.items())))
    return rows
