"""The anti-transfer notebook's controls, and the functions both its Run button and its
headless (papermill) path call.

The panel holds no experiment logic and no settings of its own: its controls are built from
qat.config.RunConfig's fields (choices, defaults, help), its values are validated by
RunConfig (the same message as the CLI), and its Run button calls `compare(**values)`, then
shows `comparison_items` of the runs: the very functions the notebook's headless cell calls
(`run_and_show`) with the parameters cell's values.

What a Run shows is an ordinary output of the panel's cell (one HTML output, its figures as
PNG, updated through a display id), not the state of a widget: a saved notebook keeps it after
the kernel stops and the page reloads, and any notebook viewer renders it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from qat import config as cfg
from qat import experiments, plots, runs, tables
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
    "records_only": _flag,
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


def recorded(config: RunConfig) -> dict:
    """The run record of `config` under reports/runs/, without training: ValueError naming the
    run when it has none. For SynthEmo runs (a user's corpus enters the key by its content,
    which only reading the corpus gives)."""
    if config.root is not None:
        raise ValueError(f"records_only=True: root={config.root!r}: only SynthEmo runs are "
                         "found by their settings alone; set records_only=False")  # fmt: skip
    path = runs.record_path("ser", config.key_dict())
    # The previous protocol's records (moved beside the current ones) still answer here.
    path = next((p for p in (path, *(path.parent / a / path.name for a in runs.ARCHIVES))
                 if p.is_file()), path)  # fmt: skip
    if not path.is_file():
        raise ValueError(f"records_only=True: no record of {config.label()} (seed "
                         f"{config.seed}, fold {config.fold}, {config.profile} profile) under "
                         f"{path.parent}; set records_only=False to train it")  # fmt: skip
    return runs.load_record(path)


def _train_or_read(config: RunConfig, progress: bool, records_only: bool) -> dict:
    if records_only:
        return recorded(config)
    return experiments.train_ser(config, progress=progress)


def compare(
    ceiling: bool = True, progress: bool = True, records_only: bool = False, **settings
) -> dict[str, dict]:
    """Train (or reuse the records of) the baseline and the configured method with everything
    else equal; returns {"baseline": record, method: record} ({"baseline": record} for the
    baseline). `settings` are RunConfig fields.

    On a confounded setup, `ceiling` adds "ceiling": the baseline trained on the unconfounded
    control split (same test set, no shortcut in training), the UA an invariance method could
    hope to recover. `records_only`: read the records, train nothing (ValueError naming a
    missing one), as `make demo` does with the committed records."""
    config = RunConfig(**settings)
    baseline = config.replace(method="baseline")
    found = {"baseline": _train_or_read(baseline, progress, records_only)}
    if ceiling and config.setup == "confounded":
        control = baseline.replace(setup="unconfounded")
        found["ceiling"] = _train_or_read(control, progress, records_only)
    if config.method != "baseline":
        found[config.method] = _train_or_read(config, progress, records_only)
    return found


def sweep(records_only: bool = False, **params) -> list[dict]:
    """qat.experiments.sweep (taps x models x seeds, each model's baseline included), or with
    `records_only` the records of the same runs, training nothing."""
    if not records_only:
        return experiments.sweep(**params)
    params = {k: v for k, v in params.items() if k != "progress"}
    params.setdefault("method", "at")
    return [recorded(c) for c in experiments.sweep_configs(**params)]


# ---------------------------------------------------------------- what a run shows
# A list of items, ("heading" | "text", str), ("figure", Figure) or ("table", DataFrame): the
# headless path displays them one by one, the panel writes them into one HTML output.


def comparison_items(found: dict[str, dict]) -> list[tuple[str, object]]:
    """Learning curves, confusion matrices, the UA/WA/F1 table, the resource table, and the
    confound metrics and probe accuracies when the records have them."""
    records = list(found.values())
    table = tables.results_table(records).set_index("run")
    items: list[tuple[str, object]] = [
        ("heading", "Learning curves (test metrics use the selected epoch)"),
        ("figure", plots.learning_curves(records)),
        ("heading", "Test confusion matrices"),
        ("figure", plots.confusion_matrices(records)),
        ("heading", "Test metrics (fractions)"),
        ("table", table[list(tables.METRIC_COLUMNS)].round(3)),
        ("figure", plots.method_comparison(records, setup=records[0]["config"]["setup"])),
    ]
    confound = table[list(tables.CONFOUND_COLUMNS)]
    if confound.notna().any().any():
        items += [("heading", "Confound: congruent vs incongruent test items"),
                  ("table", confound.round(3))]  # fmt: skip
    items += [("heading", "Cost of one training step and of training"),
              ("table", table[list(tables.RESOURCE_COLUMNS)].round(3))]  # fmt: skip
    if any(r.get("probe") for r in records):
        probe = tables.probe_table(records).drop(columns="records").set_index("configuration")
        items += [("heading", "Invariance probe (orthogonal label decoded from each tap)"),
                  ("table", probe.round(3)), ("figure", plots.probe_by_tap(records))]  # fmt: skip
    return items


def display_items(items: list[tuple[str, object]]) -> None:
    """Each item as its own cell output (the headless path)."""
    from IPython.display import Markdown, display

    for kind, item in items:
        if kind == "heading":
            display(Markdown(f"### {item}"))
        elif kind == "text":
            print(item)
        else:
            display(item)


def items_html(items: list[tuple[str, object]]) -> str:
    """The items as one HTML document: headings, preformatted text, tables, and figures as
    inline PNG (base64), which a saved notebook keeps and any viewer renders."""
    import base64
    import html
    import io as stdio

    parts = []
    for kind, item in items:
        if kind == "heading":
            parts.append(f"<h3>{html.escape(item)}</h3>")
        elif kind == "text":
            parts.append(f"<pre>{html.escape(item)}</pre>")
        elif kind == "table":
            parts.append(item.to_html())
        else:
            png = stdio.BytesIO()
            item.savefig(png, format="png", dpi=100, bbox_inches="tight")
            data = base64.b64encode(png.getvalue()).decode()
            parts.append(f'<img src="data:image/png;base64,{data}" style="max-width:100%" '
                         f'alt="{html.escape(kind)}"/>')  # fmt: skip
    return "\n".join(parts)


def show_comparison(found: dict[str, dict]) -> None:
    """`comparison_items` displayed one by one."""
    display_items(comparison_items(found))


def run_and_show(**params) -> dict[str, dict]:
    """`compare(**params)` then `show_comparison`: what the headless cell does (the Run button
    shows the same items in the panel's cell)."""
    found = compare(**params)
    show_comparison(found)
    return found


# ---------------------------------------------------------------- the panel

DEFAULT = "default"  # an optional choice left to the profile

# Which methods use which control (the others are greyed out).
_RELEVANT = {
    "eta": ("groupdro",),
    "group_adjustment": ("groupdro",),
    "jtt_epochs": ("jtt",),
    "lambda_up": ("jtt",),
    "orthogonal_root": cfg.TAP_METHODS,
    "tap": cfg.TAP_METHODS,
    "beta": cfg.TAP_METHODS,
    "gram": ("at",),
    "lam": cfg.ADVERSARY_METHODS,
    "orthogonal": (*cfg.TAP_METHODS, *cfg.ADVERSARY_METHODS),
    "init_from_orthogonal": (*cfg.TAP_METHODS, *cfg.ADVERSARY_METHODS),
    "rho": cfg.METHODS,
    "factor": cfg.METHODS,
}


def _control(field: dataclasses.Field, value):
    """The ipywidget for one RunConfig field: a dropdown of its choices, a checkbox, or a text
    box. Numbers are typed in text boxes, read when Run is pressed: an empty box, NaN or an
    out-of-range value is refused with RunConfig's message, never clamped or silently replaced
    (ipywidgets' number boxes put the old value back)."""
    import ipywidgets as w

    common = dict(description=field.name.replace("_", " "), tooltip=field.metadata["help"],
                  style={"description_width": "initial"})  # fmt: skip
    if field.name == "tap":
        return w.Dropdown(options=cfg.TAPS, value=value[0] if value else cfg.TAPS[2], **common)
    if field.metadata["choices"] is not None and field.type.endswith("| None"):
        options = (DEFAULT, *field.metadata["choices"])
        return w.Dropdown(options=options, value=DEFAULT if value is None else value, **common)
    if field.metadata["choices"] is not None:
        return w.Dropdown(options=field.metadata["choices"], value=value, **common)
    if field.type == "bool":
        return w.Checkbox(value=bool(value), indent=False, **common)
    if field.type in ("float", "int"):
        return w.Text(value=str(value), placeholder="a number", **common)
    if field.type in ("int | None", "float | None"):
        return w.Text(value="" if value is None else str(value), placeholder="default", **common)
    return w.Text(value=value or "", placeholder="a path (empty: none)", **common)


def _read(field: dataclasses.Field, value):
    """A control's value as a RunConfig value: an empty box of an optional setting is "not set"
    (None), of a required number a ValueError naming it; a number typed in a text box becomes
    a number (anything else, NaN included, goes to RunConfig, which names it)."""
    if not isinstance(value, str) or field.type == "str":
        return value
    text = value.strip()
    number = {"int": int, "float": float, "int | None": int, "float | None": float}
    if not text and field.type in ("int", "float"):
        raise ValueError(f"{field.name}='': expected a number")
    if not text or text == DEFAULT:
        return None
    try:
        return number[field.type](text) if field.type in number else text
    except ValueError:
        return text


def _run_busy(panel, what: str, values: dict):
    """`panel.on_run(**values)` with the Run button disabled and `what` named beside it, then
    `panel.show` of its result written into the panel's results (an output of its cell); a
    user error (ValueError, OSError) ends as one red line, no traceback."""
    panel.button.disabled, panel.button.description = True, "Running…"
    panel.status.value = f"running {what}"
    result = error = None
    try:
        with panel.output:  # live progress; in IPython, Output shows and swallows what escapes
            try:
                result = panel.on_run(**values)
                if result is not None and panel.show is not None:
                    panel.results.show(f"Run: {what}", panel.show(result))
            except (ValueError, OSError) as err:
                error = err
    finally:
        panel.button.disabled, panel.button.description = False, "Run"
    if error is None:
        panel.output.clear_output()  # the bars are done; the results are the cell's output
    panel.status.value = f"done: {what}" if error is None else _red(str(error))
    return result


class Results:
    """A panel's results as an ordinary output of the panel's cell: placed (empty) when the
    panel is displayed, then replaced by each run's HTML through its display id. `html` holds
    the last results wherever the panel lives (tests, a script)."""

    def __init__(self) -> None:
        self.handle = None
        self.html = ""

    def place(self) -> None:
        from IPython.display import display

        self.handle = display({"text/plain": ""}, raw=True, display_id=True)

    def show(self, title: str, items: list[tuple[str, object]]) -> None:
        """`title` (HTML, escaped by the caller) over the items."""
        self.html = f"<h2>{title}</h2>\n" + items_html(items)
        plain = "\n".join(str(item) for kind, item in items if kind in ("heading", "text"))
        if self.handle is not None:
            self.handle.update({"text/html": self.html, "text/plain": plain}, raw=True)


def _red(text: str) -> str:
    import html

    return f"<span style='color:#c62828'>{html.escape(text)}</span>"


class AntiTransferPanel:
    """One control per RunConfig field and a Run button calling `on_run(**values)` (default
    `compare`), then showing `show(result)` (default: `comparison_items` for `compare`) as an
    ordinary output of the panel's cell. While a run trains, the button is disabled and says
    which run; a bad value shows one line naming the field instead of a traceback."""

    def __init__(
        self,
        on_run: Callable[..., object] = compare,
        show: Callable[[object], list] | None = None,
        **values,
    ) -> None:
        import ipywidgets as w

        check_parameters(**values)
        run_fields = {f.name for f in cfg.fields()}
        start = RunConfig(**{k: v for k, v in values.items() if k in run_fields})
        # The default run's result is shown by default; another on_run brings its own show.
        self.show = show or (comparison_items if on_run is compare else None)
        self.on_run, self.results = on_run, Results()
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
        for name in ("rho", "factor", "selection"):  # only a confounded split has groups
            self.controls[name].disabled = not confounded

    def values(self) -> dict:
        """The chosen values, as keyword arguments of `compare` / `run_and_show`."""
        out = {f.name: _read(f, self.controls[f.name].value) for f in cfg.fields()}
        return {**self.fixed, **out}

    def run(self):
        """What the Run button does: validate, then `on_run(**values)` with the button
        disabled and the run named beside it; a bad value gives one line, no traceback."""
        import html

        self.output.clear_output()
        try:
            values = self.values()
            config = RunConfig(**{k: v for k, v in values.items() if k in self.controls})
        except ValueError as err:
            self.status.value = _red(str(err))
            return None
        return _run_busy(self, html.escape(config.label()), values)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
        self.results.place()


# ---------------------------------------------------------------- cross-corpus evaluation
# Notebook 06: a saved model on another corpus. The same split as above: `evaluate_and_show` is
# what the headless cell and the panel's Run button call; the panel only gathers values.


def _is_path(value) -> bool:
    return (isinstance(value, str) and bool(value.strip())) or hasattr(value, "__fspath__")


def check_cross_corpus(
    model, corpus, root, mapping=None, resample=False, *, notebook_fills_in: bool = False
) -> None:
    """Validate the values of a cross-corpus evaluation before anything runs: one line naming
    the bad value and what is valid. `notebook_fills_in`: notebook 06's parameters, where
    model=None (train one on SynthEmo) and, for corpus synthemo, root=None (build a second
    SynthEmo) are allowed because the notebook's cells fill them in."""
    from qat.data.corpora import CORPORA
    from qat.evaluate import normalise_mapping

    if not (_is_path(model) or (model is None and notebook_fills_in)):
        raise ValueError(f"model={model!r}: expected the path of a model file written by qat "
                         "(a run record names it under 'model')")  # fmt: skip
    check_choice("corpus", corpus, CORPORA)
    if not (_is_path(root) or (root is None and notebook_fills_in and corpus == "synthemo")):
        raise ValueError(f"root={root!r}: expected the folder of the {corpus} corpus")
    if mapping is not None and not isinstance(mapping, dict):
        raise ValueError(f"mapping={mapping!r}: expected None or a dict "
                         "{corpus emotion: model emotion or None}")  # fmt: skip
    normalise_mapping(mapping)  # an unknown emotion: a message naming it
    _flag("resample", resample)


def in_corpus_record(record: dict) -> dict | None:
    """The training run's record of the model an "eval" record scored (test metrics on its own
    corpus), or None when it is not under reports/runs/ (e.g. a model file from elsewhere)."""
    from qat import runs

    run = record["config"]["model"].get("run")
    path = runs.record_path("ser", run) if run else None
    return runs.load_record(path) if path is not None and path.exists() else None


def evaluate(
    model, corpus, root, mapping=None, resample=False, progress: bool = True
) -> dict[str, dict | None]:
    """Evaluate a saved model on another corpus (qat.evaluate.evaluate_corpus, which writes or
    reuses the eval record). Returns {"eval": the eval record, "in_corpus": the training run's
    record or None}."""
    from qat.evaluate import evaluate_corpus

    check_cross_corpus(model, corpus, root, mapping, resample)
    record = evaluate_corpus(model, corpus, root, mapping, resample=resample, progress=progress)
    return {"eval": record, "in_corpus": in_corpus_record(record)}


def evaluation_items(found: dict[str, dict | None]) -> list[tuple[str, object]]:
    """The summary, the confusion matrix on the other corpus and the per-emotion recall beside
    the in-corpus one."""
    from qat.evaluate import summary_lines

    record, in_corpus = found["eval"], found["in_corpus"]
    items: list[tuple[str, object]] = [
        ("text", "\n".join(summary_lines(record))),
        ("heading", "Confusion matrix on the other corpus"),
        ("figure", plots.cross_corpus_confusion(record)),
        ("heading", "Per-emotion recall: in-corpus vs cross-corpus"),
    ]
    if in_corpus is None:
        items.append(("text", "The model's training record is not under reports/runs/: the "
                      "cross-corpus recall is shown alone."))  # fmt: skip
    items.append(("figure", plots.recall_comparison(record, in_corpus)))
    return items


def evaluate_and_show(
    model, corpus, root, mapping=None, resample=False, progress: bool = True
) -> dict[str, dict | None]:
    """`evaluate` then its `evaluation_items`, displayed: what the headless cell does (the Run
    button shows the same items in the panel's cell)."""
    found = evaluate(model, corpus, root, mapping, resample, progress)
    display_items(evaluation_items(found))
    return found


def _mapping_text(mapping: dict | None) -> str:
    """{"calm": "neutral", "boredom": None} -> "calm=neutral,boredom=" (qat evaluate --mapping)."""
    return ",".join(f"{k}={v or ''}" for k, v in (mapping or {}).items())


class CrossCorpusPanel:
    """Model file, corpus, its folder, an emotion mapping (as `qat evaluate --mapping` spells
    it) and resampling, and a Run button calling `on_run(**values)` (default `evaluate`), then
    showing `show(result)` (default: `evaluation_items` for `evaluate`) as an ordinary output
    of the panel's cell. While it runs the button is disabled and says what runs; a bad value
    shows one line naming it instead of a traceback."""

    def __init__(
        self,
        on_run: Callable[..., object] = evaluate,
        show: Callable[[object], list] | None = None,
        *,
        model=None,
        corpus: str = "synthemo",
        root=None,
        mapping: dict | None = None,
        resample: bool = False,
        **fixed,
    ) -> None:
        import ipywidgets as w

        from qat.data.corpora import CORPORA

        check_cross_corpus(model, corpus, root, mapping, resample, notebook_fills_in=True)
        self.show = show or (evaluation_items if on_run is evaluate else None)
        self.on_run, self.results = on_run, Results()
        self.fixed = fixed  # passed through unchanged (e.g. progress)
        style = {"description_width": "initial"}
        self.controls = {
            "model": w.Text(value=str(model or ""), description="model file",
                            placeholder="a model file (a run record names it)", style=style),
            "corpus": w.Dropdown(options=CORPORA, value=corpus, description="corpus",
                                 style=style),
            "root": w.Text(value=str(root or ""), description="corpus folder",
                           placeholder="folder of the corpus in its official layout",
                           style=style),
            "mapping": w.Text(value=_mapping_text(mapping), description="mapping",
                              placeholder="calm=neutral,boredom= (empty: dropped)",
                              style=style),
            "resample": w.Checkbox(value=resample, description="resample to the model's rate",
                                   indent=False, style=style),
        }  # fmt: skip
        self.button = w.Button(description="Run", button_style="primary", icon="play")
        self.status = w.HTML()
        self.output = w.Output()
        self.button.on_click(lambda _button: self.run())
        c = self.controls
        self.widget = w.VBox([
            w.HBox([c["model"], c["corpus"]]), w.HBox([c["root"], c["mapping"], c["resample"]]),
            w.HBox([self.button, self.status]), self.output,
        ])  # fmt: skip

    def values(self) -> dict:
        """The chosen values, as keyword arguments of `evaluate_and_show`; ValueError for a
        mapping that does not parse."""
        from qat.evaluate import parse_mapping

        c = self.controls
        mapping = parse_mapping(c["mapping"].value)
        return {
            **self.fixed,
            "model": c["model"].value.strip() or None,
            "corpus": c["corpus"].value,
            "root": c["root"].value.strip() or None,
            "mapping": mapping or None,
            "resample": c["resample"].value,
        }

    def run(self):
        """What the Run button does: validate, then `on_run(**values)` with the button
        disabled and the run named beside it; a bad value gives one line, no traceback."""
        import html

        self.output.clear_output()
        try:
            values = self.values()
            check_cross_corpus(values["model"], values["corpus"], values["root"],
                               values["mapping"], values["resample"])  # fmt: skip
        except ValueError as err:
            self.status.value = _red(str(err))
            return None
        what = html.escape(f"{values['model']} on {values['corpus']} at {values['root']}")
        return _run_busy(self, what, values)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
        self.results.place()
