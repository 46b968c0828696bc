"""The anti-transfer notebook's controls, and the functions both its Run button and its
headless (papermill) path call.

The panel holds no experiment logic: its Run button collects the chosen values and calls
`run_and_show(**values)`, the very function the notebook's next cell calls with the parameters
cell's values. So a headless run and a click with the same values train (or reuse) the same
run records and show the same figures.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

from qat import experiments, plots
from qat.experiments import check_choice


def vgg16_taps() -> tuple[str, ...]:
    """The 13 conv-layer taps of VGG16 in network order."""
    from qat.models import VGG16_TAPS

    return tuple(VGG16_TAPS)


def tap_choices() -> tuple[str, ...]:
    """Every tap anti-transfer may use: the 13 conv taps and the penultimate features."""
    return tuple(experiments.TAPS)


def corpus_choices() -> tuple[str, ...]:
    """SER corpora: SynthEmo (built by the kit) and the real corpora read from a user's disk.
    Speech Commands is left out: it has no emotions (it trains word networks only)."""
    from qat.data import corpora

    return ("synthemo", *(c for c in corpora.CORPORA if c != "speechcommands"))


def _choice(valid: Callable[[], object]) -> Callable[[str, object], None]:
    return lambda name, value: check_choice(name, value, valid())


def _each(check: Callable[[str, object], None], item_name: str) -> Callable[[str, object], None]:
    """A check of a non-empty list whose items each pass `check` (reported as `item_name`)."""

    def check_list(name: str, value) -> None:
        if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
            raise ValueError(f"{name}={value!r}: expected a non-empty list")
        for item in value:
            check(item_name, item)

    return check_list


def _tap(name: str, value) -> None:
    """One tap, or a list of taps (CKA anti-transfer sums over several)."""
    if isinstance(value, str):
        check_choice(name, value, tap_choices())
    else:
        _each(_choice(tap_choices), name)(name, value)


def _non_negative(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}={value!r}: expected a number >= 0")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}={value!r}: expected a finite number >= 0")


def _integer(minimum: int) -> Callable[[str, object], None]:
    def check(name: str, value) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}")

    return check


def _flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: expected True or False")


def _root(name: str, value) -> None:
    if value is not None and not isinstance(value, str | os.PathLike):
        raise ValueError(f"{name}={value!r}: expected a folder path or None")


_CHECKS: dict[str, Callable[[str, object], None]] = {
    "profile": _choice(lambda: experiments.PROFILES),
    "corpus": _choice(corpus_choices),
    "root": _root,
    "setup": _choice(lambda: experiments.SETUPS),
    "model": _choice(lambda: experiments.MODELS),
    "models": _each(_choice(lambda: experiments.MODELS), "model"),
    "method": _choice(lambda: experiments.METHODS),
    "orthogonal": _choice(lambda: experiments.ORTHOGONAL_TASKS),
    "tasks": _each(_choice(lambda: experiments.ORTHOGONAL_TASKS), "task"),
    "tap": _tap,
    "taps": _each(_choice(tap_choices), "tap"),
    "beta": _non_negative,
    "lam": _non_negative,
    "rho": _non_negative,
    "factor": _choice(lambda: ("word", "speaker")),
    "init_from_orthogonal": _flag,
    "progress": _flag,
    "ceiling": _flag,
    "seed": _integer(0),
    "seeds": _each(_integer(0), "seed"),
    "orthogonal_seed": _integer(0),
    "examples_per_emotion": _integer(1),
    "audio_examples": _integer(0),
}


def check_parameters(**params) -> None:
    """Validate notebook parameters before anything runs, so a typo fails at once with the
    parameter's name and its valid choices rather than minutes into a run."""
    for name, value in params.items():
        if name not in _CHECKS:
            raise ValueError(f"unknown parameter {name!r}; expected one of {sorted(_CHECKS)}")
        _CHECKS[name](name, value)


# ---------------------------------------------------------------- the shared path


def compare(
    corpus: str = "synthemo",
    setup: str = "confounded",
    model: str = "real",
    method: str = "at",
    orthogonal: str = "word",
    tap: str | list[str] = "conv2_1",
    beta: float = 1.0,
    lam: float = 1.0,
    init_from_orthogonal: bool = False,
    seed: int = 0,
    profile: str | None = None,
    root: str | None = None,
    ceiling: bool = True,
    progress: bool = True,
) -> dict[str, dict]:
    """Train (or reuse the records of) the baseline and `method` with everything else equal;
    returns {"baseline": record, method: record} ({"baseline": record} for the baseline).

    On a confounded setup, `ceiling` adds "ceiling": the baseline trained on the unconfounded
    control split (same test set, no shortcut in training), the UA an invariance method could
    hope to recover."""
    common = dict(
        corpus=corpus,
        setup=setup,
        model=model,
        seed=seed,
        profile=profile or experiments.default_profile(),
        root=root,
        progress=progress,
    )
    runs = {"baseline": experiments.train_ser(method="baseline", **common)}
    if ceiling and setup == "confounded":
        control = dict(common, setup="unconfounded")
        runs["ceiling"] = experiments.train_ser(method="baseline", **control)
    if method != "baseline":
        runs[method] = experiments.train_ser(
            method=method,
            orthogonal=orthogonal,
            tap=tap,
            beta=beta,
            lam=lam,
            init_from_orthogonal=init_from_orthogonal,
            **common,
        )
    return runs


def show_comparison(runs: dict[str, dict]) -> None:
    """Learning curves, confusion matrices, the UA/WA/F1 table, the resource table, and the
    confound metrics and probe accuracies when the records have them."""
    from IPython.display import Markdown, display

    records = list(runs.values())
    table = plots.results_table(records).set_index("run")
    display(Markdown("### Learning curves (test metrics use the selected epoch)"))
    display(plots.learning_curves(records))
    display(Markdown("### Test confusion matrices"))
    display(plots.confusion_matrices(records))
    display(Markdown("### Test metrics (fractions)"))
    display(table[list(plots.METRIC_COLUMNS)].round(3))
    display(plots.method_comparison(records, setup=records[0]["config"]["setup"]))
    confound = table[list(plots.CONFOUND_COLUMNS)]
    if confound.notna().any().any():
        display(Markdown("### Confound: congruent vs incongruent test items"))
        display(confound.round(3))
    display(Markdown("### Cost of one training step and of training"))
    display(table[list(plots.RESOURCE_COLUMNS)].round(3))
    if any(r.get("probe") for r in records):
        display(Markdown("### Invariance probe (orthogonal label decoded from each tap)"))
        display(plots.probe_table(records).set_index("run").round(3))
        display(plots.probe_by_tap(records))


def run_and_show(**params) -> dict[str, dict]:
    """`compare(**params)` then `show_comparison`: what the Run button and the headless cell do."""
    runs = compare(**params)
    show_comparison(runs)
    return runs


# ---------------------------------------------------------------- the panel


class AntiTransferPanel:
    """Controls for corpus, setup, model, method, orthogonal task, tap, beta / lambda, seed and
    profile, and a Run button calling `on_run(**values)` (default `run_and_show`). Displaying
    the panel shows the controls; results appear in its output area."""

    def __init__(self, on_run: Callable[..., object] = run_and_show, **values) -> None:
        import ipywidgets as w

        check_parameters(**values)
        v = {**_defaults_of(compare), **values}
        tap = v["tap"] if isinstance(v["tap"], str) else v["tap"][0]  # one tap per click
        self.on_run = on_run
        self.controls = {
            "corpus": w.Dropdown(options=corpus_choices(), value=v["corpus"], description="corpus"),
            "root": w.Text(value=v["root"] or "", description="root",
                           placeholder="folder of a real corpus (synthemo: leave empty)"),
            "setup": w.Dropdown(options=experiments.SETUPS, value=v["setup"], description="setup"),
            "model": w.Dropdown(options=experiments.MODELS, value=v["model"], description="model"),
            "method": w.Dropdown(options=experiments.METHODS, value=v["method"],
                                 description="method"),
            "orthogonal": w.Dropdown(options=experiments.ORTHOGONAL_TASKS, value=v["orthogonal"],
                                     description="orthogonal"),
            "tap": w.Dropdown(options=tap_choices(), value=tap, description="tap"),
            "beta": w.BoundedFloatText(value=v["beta"], min=0, max=1e6, description="beta"),
            "lam": w.BoundedFloatText(value=v["lam"], min=0, max=1e6, description="lambda"),
            "init_from_orthogonal": w.Checkbox(value=bool(v["init_from_orthogonal"]),
                                               description="init from orthogonal"),
            "seed": w.BoundedIntText(value=v["seed"], min=0, max=2**31 - 1, description="seed"),
            "profile": w.Dropdown(options=tuple(experiments.PROFILES),
                                  value=v["profile"] or experiments.default_profile(),
                                  description="profile"),
        }  # fmt: skip
        # Values without a control (e.g. ceiling, progress) are passed through unchanged.
        self.fixed = {k: v for k, v in values.items() if k not in self.controls}
        self.button = w.Button(description="Run", button_style="primary", icon="play")
        self.output = w.Output()
        self.button.on_click(lambda _button: self.run())
        self.controls["method"].observe(lambda _change: self._enable_relevant(), names="value")
        self._enable_relevant()
        self.widget = w.VBox(
            [
                w.HBox(list(self.controls.values())[i : i + 4])
                for i in range(0, len(self.controls), 4)
            ]
            + [self.button, self.output]
        )

    def _enable_relevant(self) -> None:
        """Grey out what the chosen method ignores (beta and tap: AT/CKA; lambda: adversaries)."""
        method = self.controls["method"].value
        self.controls["beta"].disabled = method not in ("at", "cka")
        self.controls["tap"].disabled = method not in ("at", "cka")
        self.controls["lam"].disabled = not method.endswith("dann")
        self.controls["orthogonal"].disabled = method == "baseline"
        self.controls["init_from_orthogonal"].disabled = method == "baseline"

    def values(self) -> dict:
        """The chosen values, as keyword arguments of `compare` / `run_and_show`."""
        out = {name: control.value for name, control in self.controls.items()}
        out["root"] = out["root"].strip() or None
        return {**self.fixed, **out}

    def run(self):
        """What the Run button does: clear the output area, then `on_run(**self.values())`."""
        self.output.clear_output()
        with self.output:
            return self.on_run(**self.values())

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def _defaults_of(fn) -> dict:
    import inspect

    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
