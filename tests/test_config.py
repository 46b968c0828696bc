"""RunConfig: one home for a run's settings. Committed records keep their keys; every invalid
value is refused with a message naming the field; the CLI is built from the fields; no qat
module imports another in a cycle."""

from __future__ import annotations

import ast
import dataclasses
import json
import pathlib

import pytest

from qat import cli, config, runs
from qat.config import RunConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMITTED = sorted((ROOT / "reports" / "runs").rglob("ser-*.json"))


def test_every_committed_record_reads_back_to_the_same_key():
    assert len(COMMITTED) > 100
    for path in COMMITTED:
        record = runs.load_record(path)
        rebuilt = RunConfig.from_record(record).key_dict()
        for extra in ("world_size", "data_digest"):
            if extra in record["config"]:
                rebuilt[extra] = record["config"][extra]
        if "v1" in path.parts:  # the superseded instrument: its profile's settings changed since
            rebuilt["profile_settings"] = record["config"]["profile_settings"]
        assert rebuilt == record["config"], path.name
        # A record written beside another (a forced rerun) keeps the key as its prefix.
        assert path.name.startswith(runs.record_path("ser", rebuilt).stem), path.name


def test_settings_a_method_ignores_do_not_make_a_new_run():
    base = RunConfig(method="baseline", profile="smoke")
    assert base.key() == RunConfig(method="baseline", beta=7.0, tap="conv5_3", lam=3.0,
                                   gram="batch", profile="smoke").key()  # fmt: skip
    at = RunConfig(method="at", tap="conv2_1", profile="smoke")
    assert at.key() != at.replace(beta=2.0).key()
    assert at.key() != at.replace(method="cka").key()
    assert RunConfig(setup="random", rho=0.5).key() == RunConfig(setup="random").key()
    assert RunConfig(rho=0.5).key() != RunConfig().key()


def test_relative_root_resolves_so_two_folders_never_share_a_record(tmp_path, monkeypatch):
    for sub in ("a", "b"):
        (tmp_path / sub / "data").mkdir(parents=True)
    keys = []
    for sub in ("a", "b"):
        monkeypatch.chdir(tmp_path / sub)
        keys.append(RunConfig(corpus="manifest", root="data").key())
    assert keys[0] != keys[1]


def test_tap_accepts_a_name_a_comma_list_or_a_list():
    a = RunConfig(method="cka", tap="conv3_1,penultimate")
    assert a.tap == ("conv3_1", "penultimate") == RunConfig(method="cka", tap=a.tap).tap
    assert RunConfig(method="at", tap="conv2_1").taps == ["conv2_1"]
    assert RunConfig(method="baseline", tap="conv2_1").taps == []


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"beta": -1.0}, "beta=-1.0"),
        ({"beta": float("nan")}, "beta=nan"),
        ({"beta": "1"}, "beta='1'"),
        ({"lam": -0.1}, "lam=-0.1"),
        ({"rho": 1.5}, "rho=1.5"),
        ({"seed": -1}, "seed=-1"),
        ({"seed": 2**64}, f"seed={2**64}"),
        ({"seed": 1.5}, "seed=1.5"),
        ({"tap": "conv9_9", "method": "at"}, "tap='conv9_9'"),
        ({"tap": [], "method": "at"}, "tap=()"),
        ({"method": "magic"}, "method='magic'"),
        ({"model": "complex"}, "model='complex'"),
        ({"setup": "diagonal"}, "setup='diagonal'"),
        ({"profile": "huge"}, "profile='huge'"),
        ({"corpus": "timit"}, "corpus='timit'"),
        ({"corpus": "ravdess"}, "root=None"),
        ({"root": ""}, "root=''"),
        ({"gram": "full"}, "gram='full'"),
        ({"factor": "gender"}, "factor='gender'"),
        ({"orthogonal": "gender"}, "orthogonal='gender'"),
        ({"init_from_orthogonal": "yes"}, "init_from_orthogonal='yes'"),
        ({"lr": 0.0}, "lr=0.0"),
        ({"lr": -1e-3}, "lr=-0.001"),
        ({"lr": float("inf")}, "lr=inf"),
        ({"grad_clip": -1.0}, "grad_clip=-1.0"),
        ({"grad_clip": "1"}, "grad_clip='1'"),
    ],
)
def test_invalid_values_name_the_field_the_value_and_what_is_valid(settings, named):
    with pytest.raises(ValueError, match="expected") as err:
        RunConfig(**settings)
    assert named in str(err.value)


def test_unknown_setting_is_named():
    with pytest.raises(TypeError, match="betta"):
        RunConfig(betta=1.0)
    with pytest.raises(ValueError, match="'betta'"):
        config.validate_field("betta", 1.0)


def test_label_names_method_taps_and_knobs():
    c = RunConfig(setup="confounded", model="quaternion", method="at", tap="conv2_1", beta=10.0,
                  gram="batch", seed=2)  # fmt: skip
    assert c.label() == "[confounded] quaternion at word@conv2_1 β=10 gram=batch seed 2"
    assert c.label(without=("setup", "model", "seed")) == "at word@conv2_1 β=10 gram=batch"
    assert RunConfig(method="cdann", lam=0.3).label() == "[confounded] real cdann word λ=0.3"


def test_lr_and_grad_clip_enter_the_key_only_when_set_and_reach_the_recipe():
    """Settings added after the first records: a record without them keeps its key, and a run
    that sets them is a new run whose recipe carries them."""
    from qat import experiments, rundata

    base = RunConfig(profile="smoke")
    assert "lr" not in base.key_dict() and "grad_clip" not in base.key_dict()
    for name, value in (("lr", 3e-3), ("grad_clip", 1.0)):
        changed = base.replace(**{name: value})
        assert changed.key() != base.key() and changed.key_dict()[name] == value
        assert RunConfig.from_record(changed.key_dict()) == changed
    assert "lr=0.003 clip=1" in base.replace(lr=3e-3, grad_clip=1.0).label()
    profile = rundata.train_config("smoke", 0)
    assert (profile.lr, profile.grad_clip) == (config.PROFILES["smoke"]["lr"], 0.0)
    data = rundata.run_data(base, progress=False)
    parts = experiments._parts(base.replace(lr=3e-3, grad_clip=1.0), data, data.train, None)
    assert (parts.tcfg.lr, parts.tcfg.grad_clip) == (3e-3, 1.0)
    parts = experiments._parts(base, data, data.train, None)
    assert (parts.tcfg.lr, parts.tcfg.grad_clip) == (profile.lr, 0.0)


@pytest.mark.parametrize("method", config.METHODS)
def test_information_regime_is_the_methods_unless_a_placebo_or_the_ceiling(method):
    """A record names what its run used beyond the emotion labels: a placebo network knows
    nothing of the confound (not the orthogonal corpus of its method), and the unconfounded
    baseline is the ceiling."""
    assert RunConfig(method=method).information == config.REGIMES[method]
    for placebo in config.PLACEBOS if method in config.TAP_METHODS else ():
        assert RunConfig(method=method, orthogonal=placebo).information == config.PLACEBO_REGIME
    ceiling = RunConfig(method=method, setup="unconfounded").information
    assert ceiling == (config.CEILING_REGIME if method == "baseline" else config.REGIMES[method])


def test_profile_follows_qat_profile(monkeypatch):
    monkeypatch.setenv("QAT_PROFILE", "paper")
    assert RunConfig().profile == "paper"
    monkeypatch.delenv("QAT_PROFILE")
    assert RunConfig().profile == "cpu"


# ---------------------------------------------------------------- the CLI, built from RunConfig


def test_train_help_lists_every_field_with_its_choices(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(RunConfig):
        assert "--" + field.name.replace("_", "-") in text, field.name
        for choice in field.metadata["choices"] or ():
            assert choice in text, (field.name, choice)
    assert "--force" in text


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["train", "--beta", "-1"], "beta=-1.0"),
        (["train", "--seed", str(2**64)], "seed="),
        (["train", "--method", "at", "--tap", "conv9_9"], "tap='conv9_9'"),
        (["train", "--rho", "2"], "rho=2.0"),
        (["train", "--corpus", "ravdess"], "root=None"),
        (["sweep", "--jobs", "-1"], "jobs=-1"),
        (["sweep", "--taps", "conv1_1,nope"], "tap='nope'"),
        (["sweep", "--models", "real,complex"], "model='complex'"),
        (["demonstration", "--jobs", "0", "--report-only"], "jobs=0"),
        (["demonstration", "--models", "complex", "--report-only"], "model='complex'"),
        (["demonstration", "--stages", "selection,last", "--report-only"], "stages='last'"),
        (["instrument", "--stage", "final", "--models", "complex"], "model='complex'"),
    ],
)
def test_cli_errors_are_one_line_naming_the_field(argv, named, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qat: error:") and named in err and "\n" not in err
    assert "Traceback" not in err


def test_cli_rejects_an_empty_path(capsys):
    with pytest.raises(SystemExit):
        cli.main(["synth", ""])
    assert "empty path" in capsys.readouterr().err


def test_cli_reaches_every_train_ser_setting():
    parser = cli.build_parser()
    argv = ["train", "--rho", "0.95", "--init-from-orthogonal", "--method", "cka",
            "--tap", "conv3_1,penultimate", "--factor", "speaker"]  # fmt: skip
    args = parser.parse_args(argv)
    c = cli.config_from_args(args)
    assert (c.rho, c.init_from_orthogonal, c.tap, c.factor) == (
        0.95, True, ("conv3_1", "penultimate"), "speaker",
    )  # fmt: skip


# ---------------------------------------------------------------- imports only go down


def _imports(path: pathlib.Path, module: str) -> set[str]:
    """Every qat module `path` imports, at module level or inside functions."""
    package = module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {name for name in out if name.startswith("qat")}


def test_no_qat_module_imports_another_in_a_cycle():
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts): p
        for p in (ROOT / "qat").rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }

    def resolve(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: {resolve(n) for n in _imports(p, m)} - {None, m} for m, p in modules.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycle = [*stack[stack.index(n) :], n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_cycle_detector_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from qat import experiments\n    import qat.cli\n")
    assert _imports(f, "qat.x") >= {"qat", "qat.experiments", "qat.cli"}


def test_records_reload_json_identically():
    path = COMMITTED[0]
    assert runs.load_record(path) == json.loads(path.read_text())


def test_ctrl_c_during_qat_train_prints_one_line_naming_the_checkpoint(monkeypatch, capsys):
    from qat import experiments

    def interrupted(*args, **kwargs):
        checkpoint = kwargs["checkpoint"]
        checkpoint.write_bytes(b"a resume point")  # as after one epoch
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments, "fit", interrupted)
    assert cli.main(["train", "--profile", "smoke", "--seed", "7"]) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bars
    assert err.startswith("qat: interrupted: [confounded] real baseline seed 7")
    assert "checkpoint " in err and ".ckpt" in err and "resumes" in err
