"""The anti-transfer notebook's controls, and the functions both its Run button and its
headless (papermill) path call.

The panel holds no experiment logic and no settings of its own: its controls are built from
qat.config.RunConfig's fields (choices, defaults, help), its values are validated by
RunConfig (the same message as the CLI), and its Run button calls `run_and_show(**values)`,
the very function the notebook's next cell calls with the parameters cell's values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from qat import config as cfg
from qat import experiments, plots, tables
from qat.config import RunConfig, check_choice, check_number
from qat.models import VGG16_TAPS


def vgg16_taps() -> tuple[str, ...]:
    """The 13 conv-layer taps of VGG16 in network order."""
    return tuple(VGG16_TAPS)


def _each(check: Callable[[str, object], None], item_name: str) -> Callable[[str, object], None]:
    """A check of a non-empty list whose items each pass `check` (reported as `item_name`)."""

    def check_list(name: str, value) -> None:
        if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
            raise ValueError(f"{name}={value!r}: expected a non-empty list")
        for item in value:
            check(item_name, item)

    return check_list


def _flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: expected True or False")


# Notebook parameters that are not a single run's settings (lists of them, display options).
_NOTEBOOK_CHECKS: dict[str, Callable[[str, object], None]] = {
    "models": _each(cfg.validate_field, "model"),
    "tasks": _each(lambda n, v: check_choice(n, v, cfg.ORTHOGONAL_TASKS), "task"),
    "taps": _each(lambda n, v: check_choice(n, v, cfg.TAPS), "tap"),
    "seeds": _each(cfg.validate_field, "seed"),
    "ceiling": _flag,
    "progress": _flag,
    "orthogonal_seed": lambda n, v: check_number(n, v, 0, cfg.MAX_SEED, integer=True),
    "examples_per_emotion": lambda n, v: check_number(n, v, 1, integer=True),
    "audio_examples": lambda n, v: check_number(n, v, 0, integer=True),
}


def check_parameters(**params) -> None:
    """Validate notebook parameters before anything runs, so a typo fails at once with the
    parameter's name and what is valid rather than minutes into a run. A run's settings are
    checked by RunConfig; list-valued and display parameters here."""
    run_fields = {f.name for f in cfg.fields()}
    for name, value in params.items():
        if name in run_fields:
            cfg.validate_field(name, value)
        elif name in _NOTEBOOK_CHECKS:
            _NOTEBOOK_CHECKS[name](name, value)
        else:
            known = sorted(run_fields | set(_NOTEBOOK_CHECKS))
            raise ValueError(f"unknown parameter {name!r}; expected one of {', '.join(known)}")


# ---------------------------------------------------------------- the shared path


def compare(ceiling: bool = True, progress: bool = True, **settings) -> dict[str, dict]:
    """Train (or reuse the records of) the baseline and the configured method with everything
    else equal; returns {"baseline": record, method: record} ({"baseline": record} for the
    baseline). `settings` are RunConfig fields.

    On a confounded setup, `ceiling` adds "ceiling": the baseline trained on the unconfounded
    control split (same test set, no shortcut in training), the UA an invariance method could
    hope to recover."""
    config = RunConfig(**settings)
    baseline = config.replace(method="baseline")
    runs = {"baseline": experiments.train_ser(baseline, progress=progress)}
    if ceiling and config.setup == "confounded":
        control = baseline.replace(setup="unconfounded")
        runs["ceiling"] = experiments.train_ser(control, progress=progress)
    if config.method != "baseline":
        runs[config.method] = experiments.train_ser(config, progress=progress)
    return runs


def show_comparison(runs: dict[str, dict]) -> None:
    """Learning curves, confusion matrices, the UA/WA/F1 table, the resource table, and the
    confound metrics and probe accuracies when the records have them."""
    from IPython.display import Markdown, display

    records = list(runs.values())
    table = tables.results_table(records).set_index("run")
    display(Markdown("### Learning curves (test metrics use the selected epoch)"))
    display(plots.learning_curves(records))
    display(Markdown("### Test confusion matrices"))
    display(plots.confusion_matrices(records))
    display(Markdown("### Test metrics (fractions)"))
    display(table[list(tables.METRIC_COLUMNS)].round(3))
    display(plots.method_comparison(records, setup=records[0]["config"]["setup"]))
    confound = table[list(tables.CONFOUND_COLUMNS)]
    if confound.notna().any().any():
        display(Markdown("### Confound: congruent vs incongruent test items"))
        display(confound.round(3))
    display(Markdown("### Cost of one training step and of training"))
    display(table[list(tables.RESOURCE_COLUMNS)].round(3))
    if any(r.get("probe") for r in records):
        display(Markdown("### Invariance probe (orthogonal label decoded from each tap)"))
        display(tables.probe_table(records).set_index("run").round(3))
        display(plots.probe_by_tap(records))


def run_and_show(**params) -> dict[str, dict]:
    """`compare(**params)` then `show_comparison`: what the Run button and the headless cell do."""
    runs = compare(**params)
    show_comparison(runs)
    return runs


# ---------------------------------------------------------------- the panel

# Which methods use which control (the others are greyed out).
_RELEVANT = {
    "tap": cfg.TAP_METHODS,
    "beta": cfg.TAP_METHODS,
    "gram": ("at",),
    "lam": cfg.ADVERSARY_METHODS,
    "orthogonal": tuple(m for m in cfg.METHODS if m != "baseline"),
    "init_from_orthogonal": tuple(m for m in cfg.METHODS if m != "baseline"),
    "rho": cfg.METHODS,
    "factor": cfg.METHODS,
}


def _control(field: dataclasses.Field, value):
    """The ipywidget for one RunConfig field: a dropdown of its choices, a checkbox, or a text
    box. Number boxes are unbounded on purpose: an out-of-range value is refused with
    RunConfig's message when Run is pressed, never silently clamped."""
    import ipywidgets as w

    common = dict(description=field.name.replace("_", " "), tooltip=field.metadata["help"],
                  style={"description_width": "initial"})  # fmt: skip
    if field.name == "tap":
        return w.Dropdown(options=cfg.TAPS, value=value[0] if value else cfg.TAPS[2], **common)
    if field.metadata["choices"] is not None:
        return w.Dropdown(options=field.metadata["choices"], value=value, **common)
    if field.type == "bool":
        return w.Checkbox(value=bool(value), indent=False, **common)
    if field.type == "float":
        return w.FloatText(value=value, **common)
    if field.type == "int":
        return w.IntText(value=value, **common)
    if field.type == "int | None":
        return w.Text(value="" if value is None else str(value), placeholder="none", **common)
    return w.Text(value=value or "", placeholder="folder of a real corpus", **common)


def _red(text: str) -> str:
    import html

    return f"<span style='color:#c62828'>{html.escape(text)}</span>"


class AntiTransferPanel:
    """One control per RunConfig field and a Run button calling `on_run(**values)` (default
    `run_and_show`). While a run trains, the button is disabled and says which run; a bad value
    shows one line naming the field instead of a traceback."""

    def __init__(self, on_run: Callable[..., object] = run_and_show, **values) -> None:
        import ipywidgets as w

        check_parameters(**values)
        run_fields = {f.name for f in cfg.fields()}
        start = RunConfig(**{k: v for k, v in values.items() if k in run_fields})
        self.on_run = on_run
        self.controls = {f.name: _control(f, getattr(start, f.name)) for f in cfg.fields()}
        # Values without a control (e.g. ceiling, progress) are passed through unchanged.
        self.fixed = {k: v for k, v in values.items() if k not in self.controls}
        self.button = w.Button(description="Run", button_style="primary", icon="play")
        self.status = w.HTML()
        self.output = w.Output()
        self.button.on_click(lambda _button: self.run())
        for name in ("method", "setup"):
            self.controls[name].observe(lambda _change: self._enable_relevant(), names="value")
        self._enable_relevant()
        rows = list(self.controls.values())
        self.widget = w.VBox(
            [w.HBox(rows[i : i + 4]) for i in range(0, len(rows), 4)]
            + [w.HBox([self.button, self.status]), self.output]
        )

    def _enable_relevant(self) -> None:
        """Grey out what the chosen method (or setup) ignores."""
        method = self.controls["method"].value
        for name, methods in _RELEVANT.items():
            self.controls[name].disabled = method not in methods
        confounded = self.controls["setup"].value in ("confounded", "unconfounded")
        self.controls["rho"].disabled = self.controls["factor"].disabled = not confounded

    def values(self) -> dict:
        """The chosen values, as keyword arguments of `compare` / `run_and_show`."""
        out = {name: control.value for name, control in self.controls.items()}
        out["root"] = out["root"].strip() or None
        fold = out["fold"].strip()
        out["fold"] = int(fold) if fold.lstrip("-").isdigit() else (fold or None)
        return {**self.fixed, **out}

    def run(self):
        """What the Run button does: validate, then `on_run(**values)` with the button
        disabled and the run named beside it; a bad value gives one line, no traceback."""
        import html

        values = self.values()
        self.output.clear_output()
        try:
            config = RunConfig(**{k: v for k, v in values.items() if k in self.controls})
        except ValueError as err:
            self.status.value = _red(str(err))
            return None
        self.button.disabled, self.button.description = True, "Running…"
        self.status.value = f"running {html.escape(config.label())}"
        result = error = None
        try:
            with self.output:  # in IPython, Output shows and swallows what escapes it
                try:
                    result = self.on_run(**values)
                except (ValueError, OSError) as err:  # a user error: one line, no traceback
                    error = err
        finally:
            self.button.disabled, self.button.description = False, "Run"
        done = f"done: {html.escape(config.label())}"
        self.status.value = done if error is None else _red(str(error))
        return result

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
