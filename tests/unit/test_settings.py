"""Settings: every core knob reachable from env, flags and `--config` (flag > env > file >
default), bad values exit 2 naming their source, `recal replay -` reads stdin, and the
README's table is the generated one."""

from __future__ import annotations

import argparse
import inspect
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from worker.cli import build_parser, main
from worker.core.errors import ConfigError
from worker.core.pipeline import PipelineConfig
from worker.core.pipeline.monitor_config import COMPONENTS, MonitorConfig
from worker.core.policy import PolicyConfig
from worker.settings import (
    README_TABLE_END,
    README_TABLE_START,
    Settings,
    all_fields,
    env_name,
    flag_name,
    markdown_table,
    settings_from_args,
)
from worker.settings import main as settings_main
from worker.sim.scenario import Scenario
from worker.sim.streamrec import write_jsonl

ROOT = Path(__file__).resolve().parents[2]

# One knob per group, with three valid values (file, env, flag) that differ from the default.
# The first test checks that every group has one, so a new group needs an entry here.
REPRESENTATIVES: dict[str, tuple[str, tuple[str, str, str]]] = {
    "worker": ("session_timeout_s", ("10", "20", "40")),
    "join": ("allowed_lateness_s", ("5", "6", "7")),
    "policy (PolicyConfig)": ("policy_z", ("2.5", "3", "3.5")),
    "monitor (MonitorConfig)": ("monitor_check_every", ("100", "200", "300")),
    "monitor.severity": ("severity_ece_high", ("critical", "warning", "critical")),
    "monitor.calibration_cusum (CalibrationCusum)": ("calibration_cusum_arl0",
                                                     ("1e5", "2e5", "3e5")),
    "monitor.base_rate (BaseRateShift)": ("base_rate_warmup", ("100", "200", "300")),
    "monitor.score_shift (ScoreShift)": ("score_shift_warmup", ("100", "200", "300")),
    "monitor.ece_high (EceHigh)": ("ece_high_threshold", ("0.03", "0.04", "0.05")),
    "monitor.stall (FeedbackStall)": ("stall_window_ms", ("60000", "120000", "180000")),
    "monitor.late_clicks (LateClickRate)": ("late_clicks_acceptable", ("0.03", "0.04", "0.05")),
    "monitor.alerts (AlertLifecycle)": ("alerts_resolve_events", ("4", "5", "6")),
    "monitor.posteriors (PosteriorStore)": ("posteriors_prior_strength", ("11", "12", "13")),
}


def _effective(settings: Settings, name: str) -> Any:
    """The value a setting has where it is used: in the built core config for a core knob."""
    field = {f.name: f for f in all_fields()}[name]
    if not field.target:
        return getattr(settings, name)
    if field.target[0] == "policy":
        return getattr(settings.policy_config(), field.target[1])
    monitor = settings.monitor_config()
    if len(field.target) == 2:
        return getattr(monitor, field.target[1])
    knob, key = field.target[1:]
    if knob == "severity":
        return monitor.severity_of(key)
    # Omitted from the keyword arguments: the component uses its own default.
    return getattr(monitor, knob).get(key, field.default)


def _parse(command: str, argv: list[str]) -> argparse.Namespace:
    extra = ["-", "--out", "unused"] if command == "replay" else []
    return build_parser().parse_args([command, *extra, *argv])


def test_every_group_has_a_representative() -> None:
    assert {f.group for f in all_fields()} == set(REPRESENTATIVES)


@pytest.mark.parametrize("group", sorted(REPRESENTATIVES))
def test_each_group_is_reachable_with_precedence_flag_env_file_default(
    group: str, tmp_path: Path
) -> None:
    name, (in_file, in_env, in_flag) = REPRESENTATIVES[group]
    field = {f.name: f for f in all_fields()}[name]
    kind = field.kind
    config = tmp_path / "settings.json"
    config.write_bytes(orjson.dumps({name: kind(in_file) if kind is not str else in_file}))
    env = {env_name(name): in_env}
    commands = ["worker", "replay"] if field.replay else ["worker"]
    for command in commands:
        flag = [flag_name(name), in_flag]
        cases = [
            ([], {}, field.default),
            (["--config", str(config)], {}, kind(in_file)),
            (["--config", str(config)], env, kind(in_env)),
            (["--config", str(config), *flag], env, kind(in_flag)),
            (flag, {}, kind(in_flag)),
        ]
        for argv, environ, expected in cases:
            settings = settings_from_args(_parse(command, argv), env=environ)
            assert _effective(settings, name) == expected, (command, argv, environ)


def test_defaults_build_exactly_the_core_defaults() -> None:
    settings = Settings.load(env={})
    assert settings == Settings()
    assert settings.policy_config() == PolicyConfig()
    assert settings.monitor_config() == MonitorConfig()
    assert settings.pipeline_config() == PipelineConfig()
    assert (settings.max_message_bytes, settings.max_future_s) == (65536, 3600)


def test_every_core_knob_is_derived_from_the_core_classes() -> None:
    names = {f.name for f in all_fields()}
    for f in PolicyConfig.__dataclass_fields__:
        # recalibrate_every is the process-level setting of the same name.
        assert f"policy_{f}" in names or f in names, f
    components = dict(COMPONENTS)
    for f in MonitorConfig.__dataclass_fields__:
        if f in components:
            for arg in inspect.signature(components[f]).parameters:
                assert f"{f}_{arg}" in names or (f, arg) == ("base_rate", "reference"), (f, arg)
        elif f != "severity":
            assert f"monitor_{f}" in names, f
    assert Settings.load(env={"RECAL_RECALIBRATE_EVERY": "77"}).policy_config() \
        .recalibrate_every == 77


def test_lists_optionals_and_json_knobs_parse() -> None:
    settings = Settings.load(env={
        "RECAL_POLICY_METHODS": "platt, temperature",
        "RECAL_POLICY_HALF_LIFE_MS": "none",
        "RECAL_CALIBRATION_CUSUM_TEMPERATURES": "2,0.5",
        "RECAL_ALERTS_PER_KIND": '{"ece_high": {"resolve_events": 9}}',
        "RECAL_MONITOR_SEGMENT_SCOPES": "off",
    })
    policy, monitor = settings.policy_config(), settings.monitor_config()
    assert policy.methods == ("platt", "temperature")
    assert policy.half_life_ms is None
    assert tuple(monitor.calibration_cusum["temperatures"]) == (2.0, 0.5)
    assert monitor.alerts["per_kind"] == {"ece_high": {"resolve_events": 9}}
    assert monitor.segment_scopes is False


@pytest.mark.parametrize(
    ("argv", "env", "config", "expected"),
    [
        (["--policy-holdout-fraction", "1.5"], {}, None,
         "policy_holdout_fraction (--policy-holdout-fraction): holdout_fraction must be"),
        ([], {"RECAL_POLICY_Z": "abc"}, None, "policy_z (RECAL_POLICY_Z) must be float"),
        ([], {"RECAL_STALL_WINDOW_MS": "-5"}, None, "stall_window_ms (RECAL_STALL_WINDOW_MS): "),
        ([], {}, {"calibration_cusum_arl0": 0}, "calibration_cusum_arl0 (config file "),
        (["--severity-ece-high", "loud"], {}, None,
         "severity_ece_high (--severity-ece-high) must be one of warning, critical"),
        # A constraint between two knobs names the one that breaks it.
        (["--policy-train-buffer", "500"], {}, None,
         "policy_train_buffer (--policy-train-buffer): train_buffer (500) must be >= "
         "recent_window (1000)"),
        ([], {"RECAL_SESSION_TIMEOUT_S": "1"}, None,
         "session_timeout_s (RECAL_SESSION_TIMEOUT_S) must be in [6, 1800] seconds"),
    ],
)
def test_a_bad_value_exits_2_naming_its_source(
    argv: list[str], env: dict[str, str], config: dict[str, Any] | None, expected: str,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if config is not None:
        (tmp_path / "c.json").write_bytes(orjson.dumps(config))
        argv = [*argv, "--config", str(tmp_path / "c.json")]
    rc = main(["replay", str(events), "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("recal: configuration error: ")
    assert expected in err
    assert not (tmp_path / "out").exists()


def test_the_worker_rejects_a_bad_core_knob_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker", "--monitor-check-every", "0"]) == 2
    assert "monitor_check_every (--monitor-check-every): check_every must be an integer >= 1" in (
        capsys.readouterr().err
    )
    typo = tmp_path / "c.json"
    typo.write_bytes(orjson.dumps({"policy_zz": 1}))
    with pytest.raises(ConfigError, match="unknown settings: policy_zz"):
        Settings.load(env={}, config_file=typo)


def test_describe_masks_secrets_and_lists_every_setting() -> None:
    settings = Settings(sasl_password="hunter2", ssl_keyfile="/k.pem")
    described = settings.describe()
    assert set(described) == {f.name for f in all_fields()}
    assert described["sasl_password"] == described["ssl_keyfile"] == "***"
    assert "hunter2" not in repr(described)
    assert described["policy_z"] == 2.0 and described["recalibrate_every"] == 1000


def test_help_lists_the_flags_of_both_commands() -> None:
    subcommands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    replay_help = subcommands["replay"].format_help()
    for flag in ("--attribution-window", "--allowed-lateness", "--recalibrate-every",
                 "--config", "--policy-z", "--stall-window-ms", "--severity-feedback-stall",
                 "--posteriors-prior-strength", "--monitor-check-every"):
        assert flag in replay_help
    assert "--bootstrap-servers" not in replay_help
    worker_help = subcommands["worker"].format_help()
    for f in all_fields():
        assert flag_name(f.name) in worker_help


def test_replay_passes_the_policy_and_monitor_configs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import replay

    seen: list[Any] = []
    real = replay.Pipeline

    def spy(config: Any) -> Any:
        seen.append(config)
        return real(config)

    monkeypatch.setattr(replay, "Pipeline", spy)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"")
    assert main(["replay", str(events), "--out", str(tmp_path / "out"),
                 "--stall-window-ms", "120000", "--policy-z", "3", "--recalibrate-every",
                 "50"]) == 0
    config, = seen
    assert config.monitor.stall == {"window_ms": 120000}
    assert (config.policy.z, config.policy.recalibrate_every) == (3.0, 50)


def test_readme_holds_the_generated_settings_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = README_TABLE_START, README_TABLE_END
    assert start in readme and end in readme
    between = readme.split(start, 1)[1].split(end, 1)[0]
    assert between == markdown_table(), (
        "README.md's settings table is stale; regenerate it with "
        "`python -m worker.settings --update-readme README.md`"
    )
    for f in all_fields():
        assert f"`{env_name(f.name)}`" in between


def test_the_generator_prints_and_updates_the_table(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "worker.settings", "--markdown"], cwd=ROOT, check=True,
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.stdout == markdown_table() and not out.stderr
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{README_TABLE_START}| stale |\n{README_TABLE_END}\nafter\n")
    assert settings_main(["--update-readme", str(readme)]) == 0
    assert readme.read_text() == (
        f"# x\n{README_TABLE_START}{markdown_table()}{README_TABLE_END}\nafter\n")
    readme.write_text("no markers\n")
    assert settings_main(["--update-readme", str(readme)]) == 1
    assert readme.read_text() == "no markers\n"


def test_replay_from_stdin_equals_replay_from_the_file(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    write_jsonl(
        Scenario(n_events=4_000, n_users=200, n_items=100, seed=5, events_per_second=5,
                 malformed_share=0.01, attribution_window_ms=300_000),
        events, manifest=False,
    )
    flags = ["--attribution-window", "300", "--recalibrate-every", "200"]
    assert main(["replay", str(events), "--out", str(tmp_path / "file"), *flags]) == 0
    # A real process reading a real stdin pipe.
    with open(events, "rb") as stdin:
        done = subprocess.run(
            [sys.executable, "-m", "worker.cli", "replay", "-", "--out",
             str(tmp_path / "stdin"), *flags],
            stdin=stdin, capture_output=True, cwd=ROOT, timeout=300,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    assert done.returncode == 0, done.stderr.decode()
    for name in ("feedback", "calibrators", "alerts", "posteriors"):
        from_file = (tmp_path / "file" / f"{name}.jsonl").read_bytes()
        assert from_file == (tmp_path / "stdin" / f"{name}.jsonl").read_bytes(), name
    assert (tmp_path / "file" / "calibrators.jsonl").stat().st_size > 0
    # Dead letters differ only in their source (the file's name, or "-").
    letters = [orjson.loads(x) for x in (tmp_path / "stdin" / "dlq.jsonl").read_bytes()
               .splitlines()]
    assert letters and {dl["source_topic"] for dl in letters} == {"replay:-"}
    summary = orjson.loads(done.stdout)
    assert summary["lines"] == len(events.read_bytes().splitlines())


def test_replay_dash_reads_sys_stdin_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = (b'{"type":"impression","impression_id":"i1","user_id":"u","model_id":"m",'
            b'"ts":1767225600000,"score":0.5}\n')
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(line)))
    assert main(["replay", "-", "--out", str(tmp_path / "out")]) == 0
    summary = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    assert summary["lines"] == 1


def test_the_clock_guard_is_configurable_and_defaults_to_the_window() -> None:
    default = Settings.load(env={}).pipeline_config()
    assert (default.max_clock_jump_ms, default.clock_confirmations) == (None, 3)
    tuned = Settings.load(
        env={"RECAL_MAX_CLOCK_JUMP_S": "120", "RECAL_CLOCK_CONFIRMATIONS": "5"}
    ).pipeline_config()
    assert (tuned.max_clock_jump_ms, tuned.clock_confirmations) == (120_000, 5)
    with pytest.raises(ConfigError):
        Settings.load(env={"RECAL_MAX_CLOCK_JUMP_S": "0"})
