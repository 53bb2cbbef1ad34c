"""Configuration loading, environment overrides, and the check-config / run commands.

None of these needs a broker: configs point at 127.0.0.1:1, where nothing listens,
so ``run`` with a bad config must exit 78 before it ever tries to connect.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from gateway import AdapterRegistry, Config, ConfigError, load_config
from gateway.cli import main
from gateway.config import settings_from_environment, yaml_loader
from gateway.core.steps import MAX_STEPS, Step, StepList, check_steps

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo.yaml"
EXIT_CONFIG = 78
SECRET = "some-unique-secret"  # noqa: S105 - a marker to look for in output
CLI_TIMEOUT = 30

HUB = {"id": "hub", "type": "simulated.switch"}
LIGHT = {"id": "light", "type": "simulated.light", "depends_on": ["hub"]}
SPEAKER = {"id": "speaker", "type": "simulated.speaker"}


def cfg(**sections: Any) -> dict[str, Any]:
    """A valid config aimed at no broker; ``sections`` replace its parts (``mqtt`` merges)."""
    data: dict[str, Any] = {"devices": [HUB, LIGHT, SPEAKER], **sections}
    data["mqtt"] = {"host": "127.0.0.1", "port": 1, **sections.get("mqtt", {})}
    return data


def write(tmp_path: Path, data: object, name: str = "config.yaml") -> Path:
    """Dump ``data`` as YAML into a file."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ``GATEWAY_*`` variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}
    return {**env, **extra}


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m gateway ARGS``: ``run`` as a real process, the rest in-process.

    ``check-config`` runs the same ``main()`` either way; in-process it takes
    milliseconds instead of the half second an interpreter start costs.
    """
    if args and args[0] == "run":
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            env=clean_env(**env),
            cwd=ROOT,
            check=False,
        )
    return run_in_process(list(args), clean_env(**env))


def run_in_process(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``gateway.cli.main(args)`` with exactly ``env``, its output captured."""
    saved = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    os.environ.clear()
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as exc:  # argparse's usage errors
                code = int(exc.code or 0)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def check_config(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``check-config -c PATH``."""
    return cli("check-config", "-c", str(path), **env)


def load(path: Path) -> Config:
    """Load in-process with the installed adapters."""
    return load_config(path, AdapterRegistry.from_entry_points())


def names(text: str, fragment: str) -> bool:
    """Whether ``text`` has ``fragment`` (a literal ``path: message`` start) at a word start."""
    return re.search(rf"(?:^|\s){re.escape(fragment)}", text, re.MULTILINE) is not None


def matches(text: str, pattern: str) -> bool:
    """Whether a line of ``text`` has ``pattern`` (a regex starting with a path)."""
    return re.search(rf"(?:^|\s){pattern}", text, re.MULTILINE) is not None


def assert_rejected(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 78, every fragment named on stderr, nothing claimed OK on stdout."""
    assert result.returncode == EXIT_CONFIG, result
    for fragment in fragments:
        assert names(result.stderr, fragment), (fragment, result.stderr)
    assert "OK" not in result.stdout


@pytest.fixture(autouse=True)
def _no_gateway_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process loads must not see ``GATEWAY_*`` variables from the outer environment."""
    for key in list(os.environ):
        if key.upper().startswith("GATEWAY_"):
            monkeypatch.delenv(key)


# --- invalid configurations, each named by its path -------------------------------------

BAD_CONFIGS = [
    pytest.param(
        cfg(devices=[HUB, {"id": "lamp", "type": "simulated.lamp"}]),
        ["devices[1].type: unknown device type 'simulated.lamp'"],
        id="unknown-device-type",
    ),
    pytest.param(cfg(devices=[{"id": "lamp"}]), ["devices[0].type:"], id="missing-type"),
    pytest.param(
        cfg(devices=[HUB, LIGHT, {**SPEAKER, "latency": -1}]),
        ["devices[2].latency:"],
        id="negative-latency",
    ),
    pytest.param(
        cfg(devices=[{**HUB, "latency": "slow"}]), ["devices[0].latency:"], id="latency-not-number"
    ),
    pytest.param(
        cfg(devices=[{**HUB, "fail_on": "turn_on"}]),
        ["devices[0].fail_on:"],
        id="fail-on-not-list",
    ),
    pytest.param(cfg(mqtt={"port": "abc"}), ["mqtt.port:"], id="port-not-number"),
    pytest.param(cfg(mqtt={"port": 70000}), ["mqtt.port:"], id="port-out-of-range"),
    pytest.param(cfg(mqtt={"protocol": "4"}), ["mqtt.protocol:"], id="bad-protocol"),
    pytest.param(cfg(mqtt={"base_topic": "a/#"}), ["mqtt.base_topic:"], id="wildcard-base-topic"),
    pytest.param(
        cfg(mqtt={"reconnect": {"max_delay": 0}}),
        ["mqtt.reconnect.max_delay:"],
        id="nested-depth-3-value",
    ),
    pytest.param(cfg(gateway={"queue_size": 0}), ["gateway.queue_size:"], id="queue-size-zero"),
    pytest.param(cfg(logging={"level": "LOUD"}), ["logging.level:"], id="bad-log-level"),
    pytest.param(cfg(http={"port": -5}), ["http.port:"], id="bad-http-port"),
    pytest.param(
        cfg(devices=[HUB, {"id": "hub", "type": "simulated.light"}]),
        ["devices[1].id: duplicate device id 'hub'"],
        id="duplicate-id",
    ),
    pytest.param(
        cfg(devices=[{"id": "gateway", "type": "simulated.switch"}]),
        ["devices[0].id: 'gateway' is reserved"],
        id="reserved-id",
    ),
    pytest.param(
        cfg(devices=[HUB, {"id": "Bad Id", "type": "simulated.switch"}]),
        ["devices[1].id:", "'Bad Id'"],
        id="invalid-id",
    ),
    pytest.param(cfg(devices=[{"type": "simulated.switch"}]), ["devices[0].id:"], id="missing-id"),
    pytest.param(
        cfg(devices=[HUB, {**LIGHT, "depends_on": ["hubb"]}]),
        ["devices[1].depends_on: unknown device 'hubb'"],
        id="unknown-dependency",
    ),
    pytest.param(
        cfg(
            devices=[
                {"id": "a", "type": "simulated.switch", "depends_on": ["b"]},
                {"id": "b", "type": "simulated.switch", "depends_on": ["a"]},
            ]
        ),
        ["devices: dependency cycle a -> b -> a"],
        id="dependency-cycle",
    ),
    pytest.param(
        cfg(devices=[{**HUB, "depends_on": ["hub"]}]),
        ["devices: dependency cycle hub -> hub"],
        id="self-dependency",
    ),
    pytest.param(cfg(mqt={"host": "x"}), ["mqt:"], id="unknown-top-level-key"),
    pytest.param(cfg(mqtt={"hots": "x"}), ["mqtt.hots:"], id="unknown-nested-key"),
    pytest.param(
        cfg(mqtt={"reconnect": {"max_dely": 3}}),
        ["mqtt.reconnect.max_dely:"],
        id="unknown-key-depth-3",
    ),
    pytest.param(cfg(gateway={"queue_sise": 3}), ["gateway.queue_sise:"], id="unknown-gw-key"),
    pytest.param(
        cfg(devices=[HUB, {**LIGHT, "colour": "red"}]),
        ["devices[1].colour:"],
        id="unknown-device-field",
    ),
    pytest.param(
        cfg(devices=[{**HUB, "interval": 5}]),
        ["devices[0].interval:"],
        id="sensor-field-on-switch",
    ),
    pytest.param(cfg(devices=["hub"]), ["devices[0]:"], id="device-not-mapping"),
    pytest.param(cfg(devices={"hub": HUB}), ["devices:"], id="devices-not-list"),
    pytest.param(cfg(http="yes"), ["http:"], id="section-not-mapping"),
]


@pytest.mark.parametrize(("data", "fragments"), BAD_CONFIGS)
def test_check_config_rejects_and_names_the_path(
    tmp_path: Path, data: dict[str, Any], fragments: list[str]
) -> None:
    assert_rejected(check_config(write(tmp_path, data)), *fragments)


@pytest.mark.parametrize(("data", "fragments"), BAD_CONFIGS)
def test_load_config_raises_the_same_problems(
    tmp_path: Path, data: dict[str, Any], fragments: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, data))
    for fragment in fragments:
        assert any(names(problem, fragment) for problem in caught.value.problems), (
            fragment,
            caught.value.problems,
        )


def test_control_config_is_valid(tmp_path: Path) -> None:
    """The base every bad case above changes is itself valid, so each case tests one thing."""
    result = check_config(write(tmp_path, cfg()))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_several_problems_are_all_listed(tmp_path: Path) -> None:
    data = cfg(
        mqtt={"hots": "x", "port": "abc"},
        logging={"level": "LOUD"},
        devices=[
            {**HUB, "latency": -1},
            {"id": "lamp", "type": "simulated.lamp"},
            {"id": "Bad Id", "type": "simulated.switch"},
            {**SPEAKER, "depends_on": ["hubb"]},
            {"id": "gateway", "type": "simulated.switch"},
        ],
    )
    result = check_config(write(tmp_path, data))
    assert_rejected(
        result,
        "mqtt.hots:",
        "mqtt.port:",
        "logging.level:",
        "devices[0].latency:",
        "devices[1].type:",
        "devices[2].id:",
        "devices[3].depends_on: unknown device 'hubb'",
        "devices[4].id:",
    )


# --- files that are not a configuration ---------------------------------------------------


def test_missing_file_is_an_error_not_an_empty_config(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    result = check_config(path)
    assert_rejected(result, str(path))


def test_missing_file_raises_in_process(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("mqtt: {port: 1\n", id="unclosed-flow-mapping"),
        pytest.param("mqtt:\n  port: 1\n bad indent: x\n", id="bad-indentation"),
        pytest.param("devices: [\n", id="unclosed-list"),
        pytest.param("mqtt: {host: 'x}\n", id="unclosed-quote"),
    ],
)
def test_invalid_yaml(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    assert_rejected(check_config(path), str(path))


@pytest.mark.parametrize(
    "document",
    [
        pytest.param([HUB], id="list"),
        pytest.param("just a string", id="string"),
        pytest.param(42, id="number"),
    ],
)
def test_document_that_is_not_a_mapping(tmp_path: Path, document: object) -> None:
    path = write(tmp_path, document)
    assert_rejected(check_config(path), str(path))


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_no_config_given(command: str) -> None:
    result = cli(command)
    assert result.returncode == EXIT_CONFIG, result
    assert "GATEWAY_CONFIG" in result.stderr


def test_non_string_top_level_key(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("1: 2\nmqtt: {port: 1}\n", encoding="utf-8")
    result = check_config(path)
    assert result.returncode == EXIT_CONFIG, result
    assert "Traceback" not in result.stderr


# --- scenes --------------------------------------------------------------------------------


def step_at(index: int) -> str:
    """A step's path; ``scenes.morning[N]`` today, ``scenes.morning.steps[N]`` also accepted."""
    return rf"scenes\.morning(?:\.steps)?\[{index}\]"


def scene(*steps: dict[str, Any]) -> dict[str, Any]:
    """A config whose ``morning`` scene has ``steps``."""
    return cfg(scenes={"morning": {"steps": list(steps)}})


ON = {"id": "on", "device": "light", "action": "turn_on"}

BAD_SCENES = [
    pytest.param(
        scene(ON, {"id": "s", "device": "lamp", "action": "turn_on"}),
        rf"{step_at(1)}\.device: unknown device 'lamp'",
        id="unknown-device",
    ),
    pytest.param(
        scene({"id": "s", "device": "light", "action": "fly"}),
        rf"{step_at(0)}(?:\.action)?: unknown action 'fly'",
        id="unknown-action",
    ),
    pytest.param(
        scene({"id": "s", "device": "hub", "action": "set_brightness", "params": {"level": 5}}),
        rf"{step_at(0)}(?:\.action)?: unknown action 'set_brightness'",
        id="action-of-another-type",
    ),
    pytest.param(
        scene(
            {"id": "s", "device": "light", "action": "set_brightness", "params": {"level": 500}}
        ),
        rf"{step_at(0)}\S*: .*params\.level",
        id="param-out-of-range",
    ),
    pytest.param(
        scene({"id": "s", "device": "light", "action": "set_brightness", "params": {}}),
        rf"{step_at(0)}\S*: .*params\.level",
        id="param-missing",
    ),
    pytest.param(
        scene(
            {"id": "s", "device": "light", "action": "set_brightness", "params": {"level": "5"}}
        ),
        rf"{step_at(0)}\S*: .*params\.level",
        id="param-wrong-type-strict",
    ),
    pytest.param(
        scene({"id": "s", "device": "light", "action": "turn_on", "params": {"x": 1}}),
        rf"{step_at(0)}\S*: .*params\.x",
        id="param-unknown",
    ),
    pytest.param(
        scene(ON, {"id": "s", "device": "hub", "action": "turn_on", "after": ["zz"]}),
        rf"{step_at(1)}\.after: unknown step 'zz'",
        id="unknown-after",
    ),
    pytest.param(
        scene(ON, {**ON, "device": "hub"}),
        rf"{step_at(1)}\.id: duplicate step id 'on'",
        id="duplicate-step-id",
    ),
    pytest.param(
        scene(
            {"id": "c1", "device": "light", "action": "turn_on", "after": ["c2"]},
            {"id": "c2", "device": "hub", "action": "turn_on", "after": ["c1"]},
        ),
        r"scenes\.morning(?:\.steps)?: .*cycle c1 -> c2 -> c1",
        id="cycle",
    ),
    pytest.param(
        scene({"id": "c1", "device": "light", "action": "turn_on", "after": ["c1"]}),
        r"scenes\.morning(?:\.steps)?: .*cycle c1 -> c1",
        id="self-cycle",
    ),
    pytest.param(scene(), r"scenes\.morning\.steps:", id="no-steps"),
    pytest.param(
        scene({**ON, "colour": "red"}), r"scenes\.morning\.steps\[0\]\.colour:", id="unknown-field"
    ),
    pytest.param(
        scene({"id": "s", "device": "light"}),
        r"scenes\.morning\.steps\[0\]\.action:",
        id="no-action",
    ),
    pytest.param(
        cfg(scenes={"morning": {"step": [ON]}}), r"scenes\.morning\.step:", id="unknown-scene-key"
    ),
]


@pytest.mark.parametrize(("data", "pattern"), BAD_SCENES)
def test_bad_scene_is_rejected_under_its_name(
    tmp_path: Path, data: dict[str, Any], pattern: str
) -> None:
    result = check_config(write(tmp_path, data))
    assert result.returncode == EXIT_CONFIG, result
    assert matches(result.stderr, pattern), (pattern, result.stderr)


def test_valid_scene_with_dag_is_accepted(tmp_path: Path) -> None:
    data = scene(
        ON,
        {"id": "speaker_on", "device": "speaker", "action": "turn_on"},
        {
            "id": "song",
            "device": "speaker",
            "action": "play",
            "params": {"song": "Imagine"},
            "after": ["speaker_on", "on"],
        },
    )
    config = load(write(tmp_path, data))
    assert [step.id for step in config.settings.scenes["morning"].steps] == [
        "on",
        "speaker_on",
        "song",
    ]


def test_problems_in_several_scenes_are_all_listed(tmp_path: Path) -> None:
    data = cfg(
        scenes={
            "morning": {"steps": [{"id": "s", "device": "lamp", "action": "turn_on"}]},
            "evening": {"steps": [{"id": "s", "device": "light", "action": "fly"}]},
        }
    )
    result = check_config(write(tmp_path, data))
    assert result.returncode == EXIT_CONFIG
    assert matches(result.stderr, r"scenes\.morning\S*: unknown device 'lamp'"), result.stderr
    assert matches(result.stderr, r"scenes\.evening\S*: unknown action 'fly'"), result.stderr


def test_step_problem_path_is_the_real_yaml_path(tmp_path: Path) -> None:
    result = check_config(write(tmp_path, scene({"id": "s", "device": "lamp", "action": "x"})))
    assert names(result.stderr, "scenes.morning.steps[0].device: unknown device 'lamp'")


# --- `run` stops at a bad configuration before connecting ------------------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        pytest.param(cfg(mqtt={"hots": "x"}), "mqtt.hots:", id="unknown-key"),
        pytest.param(
            cfg(devices=[HUB, {**LIGHT, "depends_on": ["hubb"]}]),
            "devices[1].depends_on: unknown device 'hubb'",
            id="unknown-dependency",
        ),
        pytest.param(
            scene({"id": "s", "device": "lamp", "action": "turn_on"}),
            "unknown device 'lamp'",
            id="bad-scene",
        ),
        pytest.param(cfg(devices=[{**HUB, "timeout": 0}]), "devices[0].timeout:", id="timeout"),
    ],
)
def test_run_exits_78_before_connecting(
    tmp_path: Path, data: dict[str, Any], fragment: str
) -> None:
    result = cli("run", "-c", str(write(tmp_path, data)))
    assert_rejected(result, fragment)
    assert "Connection refused" not in result.stderr
    assert "starting" not in result.stderr


def test_run_with_missing_file_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    assert_rejected(cli("run", "-c", str(path)), str(path))


def test_run_with_invalid_yaml_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("mqtt: {port: 1\n", encoding="utf-8")
    assert_rejected(cli("run", "-c", str(path)), str(path))


# --- environment overrides -----------------------------------------------------------------


def file_for_overrides(tmp_path: Path) -> Path:
    return write(
        tmp_path,
        cfg(
            mqtt={"port": 1, "reconnect": {"min_delay": 0.25, "max_delay": 5}},
            gateway={"queue_size": 10, "command_timeout": 3},
        ),
    )


def test_file_values_without_env(tmp_path: Path) -> None:
    settings = load(file_for_overrides(tmp_path)).settings
    assert settings.mqtt.port == 1
    assert settings.mqtt.reconnect.max_delay == 5
    assert settings.gateway.queue_size == 10
    assert settings.mqtt.password is None


def test_env_overrides_the_file_at_every_depth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_MQTT__PORT", "2883")
    monkeypatch.setenv("GATEWAY_MQTT__RECONNECT__MAX_DELAY", "7.5")
    monkeypatch.setenv("GATEWAY_GATEWAY__QUEUE_SIZE", "42")
    settings = load(file_for_overrides(tmp_path)).settings
    assert settings.mqtt.port == 2883
    assert settings.mqtt.reconnect.max_delay == 7.5
    assert settings.gateway.queue_size == 42
    # Siblings the environment does not mention keep the file's values.
    assert settings.mqtt.host == "127.0.0.1"
    assert settings.mqtt.reconnect.min_delay == 0.25
    assert settings.gateway.command_timeout == 3


def test_env_sets_a_key_the_file_omits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_LOGGING__FORMAT", "json")
    monkeypatch.setenv("GATEWAY_HOMEASSISTANT__DISCOVERY", "true")
    settings = load(write(tmp_path, cfg())).settings
    assert settings.logging.format == "json"
    assert settings.homeassistant.discovery is True


def test_env_password_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, cfg(mqtt={"password": "from-the-file"}))
    assert load(path).settings.mqtt.password is not None
    monkeypatch.setenv("GATEWAY_MQTT__PASSWORD", SECRET)
    password = load(path).settings.mqtt.password
    assert password is not None
    assert password.get_secret_value() == SECRET
    assert SECRET not in repr(load(path).settings)


@pytest.mark.parametrize(
    ("variable", "value", "path"),
    [
        ("GATEWAY_MQTT__PORT", "abc", "mqtt.port"),
        ("GATEWAY_MQTT__PORT", "0", "mqtt.port"),
        ("GATEWAY_MQTT__RECONNECT__MAX_DELAY", "-1", "mqtt.reconnect.max_delay"),
        ("GATEWAY_GATEWAY__QUEUE_SIZE", "many", "gateway.queue_size"),
        ("GATEWAY_MQTT__RECONNECT", '{"max_delay": 0}', "mqtt.reconnect.max_delay"),
        ("GATEWAY_DEVICES", '[{"id": "hub", "type": "nope"}]', "devices[0].type"),
    ],
)
def test_bad_env_value_exits_78_naming_the_path_and_the_variable(
    tmp_path: Path, variable: str, value: str, path: str
) -> None:
    config = write(tmp_path, cfg())
    assert check_config(config).returncode == 0
    assert_rejected(check_config(config, **{variable: value}), f"{path} (from {variable}):")


def test_a_file_value_beside_a_variable_is_not_blamed_on_it(tmp_path: Path) -> None:
    config = write(tmp_path, cfg(mqtt={"reconnect": {"min_delay": 0}}))
    result = check_config(config, GATEWAY_MQTT__RECONNECT='{"max_delay": 5}')
    assert_rejected(result, "mqtt.reconnect.min_delay:")
    assert "from GATEWAY" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "meant"),
    [
        ("GATEWAY_MQT__HOST", "GATEWAY_MQTT__HOST"),
        ("GATEWAY_MQTT_HOST", "GATEWAY_MQTT__HOST"),
        ("GATEWAY_MQTT__HOTS", "GATEWAY_MQTT__HOSTS"),
        ("GATEWAY_MQTT__RECONNECT__MAX_DELAI", "GATEWAY_MQTT__RECONNECT__MAX_DELAY"),
        ("GATEWAY_MQTT__HOST__NAME", None),
        ("GATEWAY_DEVICES__0__ID", None),
        ("GATEWAY_", None),
        ("gateway_config", None),
    ],
)
def test_a_variable_that_names_no_setting_is_an_error(
    tmp_path: Path, variable: str, meant: str | None
) -> None:
    result = check_config(write(tmp_path, cfg()), **{variable: "x"})
    assert_rejected(result, f"{variable}: no such setting")
    if meant is not None:
        assert f"did you mean {meant}?" in result.stderr


def test_variables_that_name_settings_are_accepted(tmp_path: Path) -> None:
    scene = {"steps": [{"id": "on", "device": "hub", "action": "turn_on"}]}
    result = check_config(
        write(tmp_path, cfg()),
        GATEWAY_CONFIG=str(tmp_path / "ignored.yaml"),
        gateway_mqtt__host="127.0.0.1",
        GATEWAY_MQTT__TLS="null",
        GATEWAY_HTTP__PORT="0",
        GATEWAY_SCENES__MORNING=json.dumps(scene),
        GATEWAY_LOGGING='{"format": "json"}',
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("variable", "fragment"),
    [("GATEWAY_MQTT__RECONNECT", "mqtt.reconnect"), ("GATEWAY_DEVICES", "devices")],
)
def test_env_value_that_is_not_json_exits_78(tmp_path: Path, variable: str, fragment: str) -> None:
    result = check_config(write(tmp_path, cfg()), **{variable: "not json"})
    assert_rejected(result, fragment)


def test_invalid_file_section_is_not_masked_by_env(tmp_path: Path) -> None:
    data = {"mqtt": "garbage", "devices": [HUB]}
    path = write(tmp_path, data)
    assert_rejected(check_config(path), "mqtt:")
    assert_rejected(check_config(path, GATEWAY_MQTT__PORT="1"), "mqtt:")


def test_gateway_config_env_is_used_without_c(tmp_path: Path) -> None:
    good = write(tmp_path, cfg(), "good.yaml")
    bad = write(tmp_path, cfg(mqtt={"hots": "x"}), "bad.yaml")
    result = cli("check-config", GATEWAY_CONFIG=str(good))
    assert result.returncode == 0, result.stderr
    assert str(good) in result.stdout
    assert_rejected(cli("check-config", GATEWAY_CONFIG=str(bad)), "mqtt.hots:")
    assert_rejected(cli("run", GATEWAY_CONFIG=str(bad)), "mqtt.hots:")


def test_c_takes_precedence_over_gateway_config(tmp_path: Path) -> None:
    good = write(tmp_path, cfg(), "good.yaml")
    bad = write(tmp_path, cfg(mqtt={"hots": "x"}), "bad.yaml")
    assert check_config(good, GATEWAY_CONFIG=str(bad)).returncode == 0
    assert_rejected(check_config(bad, GATEWAY_CONFIG=str(good)), "mqtt.hots:")


# --- the MQTT password never shows --------------------------------------------------------

SECRET_CASES = [
    pytest.param(cfg(), {"GATEWAY_MQTT__PASSWORD": SECRET}, 0, id="env-valid"),
    pytest.param(cfg(mqtt={"password": SECRET}), {}, 0, id="file-valid"),
    pytest.param(
        cfg(mqtt={"port": "abc", "hots": 1}),
        {"GATEWAY_MQTT__PASSWORD": SECRET},
        EXIT_CONFIG,
        id="env-mqtt-errors",
    ),
    pytest.param(
        cfg(mqtt={"password": SECRET, "port": "abc", "username": ["u"]}),
        {},
        EXIT_CONFIG,
        id="file-mqtt-errors",
    ),
    pytest.param(cfg(mqtt={"password": [SECRET]}), {}, EXIT_CONFIG, id="password-is-a-list"),
    pytest.param(
        cfg(mqtt={"password": {"value": SECRET}}), {}, EXIT_CONFIG, id="password-is-a-mapping"
    ),
    pytest.param(cfg(mqtt={"pasword": SECRET}), {}, EXIT_CONFIG, id="password-key-misspelt"),
    pytest.param(cfg(password=SECRET), {}, EXIT_CONFIG, id="password-at-top-level"),
    pytest.param({"mqtt": [SECRET]}, {}, EXIT_CONFIG, id="mqtt-is-a-list"),
    pytest.param(
        cfg(mqtt={"password": SECRET}, devices=[{"id": "Bad Id", "type": "nope"}]),
        {"GATEWAY_MQTT__PORT": "abc"},
        EXIT_CONFIG,
        id="errors-everywhere",
    ),
    pytest.param(
        cfg(devices=[{**HUB, "latency": -1}]),
        {"GATEWAY_MQTT__PASSWORD": SECRET, "GATEWAY_MQTT__KEEPALIVE": "never"},
        EXIT_CONFIG,
        id="env-error-beside-env-password",
    ),
]


@pytest.mark.parametrize(("data", "env", "code"), SECRET_CASES)
def test_password_never_printed(
    tmp_path: Path, data: dict[str, Any], env: dict[str, str], code: int
) -> None:
    result = check_config(write(tmp_path, data), **env)
    assert result.returncode == code, result
    assert SECRET not in result.stdout
    assert SECRET not in result.stderr


def test_password_never_printed_by_run_with_bad_config(tmp_path: Path) -> None:
    path = write(tmp_path, cfg(mqtt={"password": [SECRET], "port": "abc"}))
    result = cli("run", "-c", str(path), GATEWAY_MQTT__USERNAME="u")
    assert result.returncode == EXIT_CONFIG
    assert SECRET not in result.stdout + result.stderr


def test_password_not_printed_on_a_yaml_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(f'mqtt:\n  port: 1\n  password: "{SECRET}\n', encoding="utf-8")
    result = check_config(path)
    assert result.returncode == EXIT_CONFIG
    assert SECRET not in result.stdout + result.stderr


# --- valid configurations --------------------------------------------------------------------


def test_demo_config_is_valid() -> None:
    result = check_config(DEMO)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert str(DEMO) in result.stdout


def test_demo_config_loads() -> None:
    config = load(DEMO)
    assert [d.id for d in config.devices] == ["hub", "light", "speaker", "sensor"]
    assert config.devices[1].depends_on == ("hub",)
    assert len(config.settings.scenes["morning"].steps) == 3


def test_empty_document_uses_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    config = load(path)
    assert config.devices == ()
    assert config.settings.mqtt.port == 1883


def test_contract_example_protocol_5_is_valid(tmp_path: Path) -> None:
    path = write(tmp_path, cfg(mqtt={"protocol": 5}))
    result = check_config(path)
    assert result.returncode == 0, result.stderr


def test_protocol_as_string_is_valid(tmp_path: Path) -> None:
    for protocol in ("5", "3.1.1"):
        assert load(write(tmp_path, cfg(mqtt={"protocol": protocol}))).settings.mqtt.protocol == (
            protocol
        )


@pytest.mark.parametrize("timeout", [0.5, 2, 120])
def test_device_timeout_accepted(tmp_path: Path, timeout: float) -> None:
    path = write(tmp_path, cfg(devices=[{**HUB, "timeout": timeout}, LIGHT, SPEAKER]))
    assert check_config(path).returncode == 0
    config = load(path)
    assert config.devices[0].timeout == timeout
    assert config.devices[1].timeout is None


@pytest.mark.parametrize("timeout", [0, -1, -0.5, "soon"])
def test_device_timeout_must_be_positive(tmp_path: Path, timeout: object) -> None:
    path = write(tmp_path, cfg(devices=[HUB, {**LIGHT, "timeout": timeout}, SPEAKER]))
    assert_rejected(check_config(path), "devices[1].timeout:")


# --- problems hidden by other problems --------------------------------------------------------


def test_scene_problem_listed_beside_a_section_problem(tmp_path: Path) -> None:
    data = cfg(mqtt={"port": "abc"}, scenes={"morning": {"steps": [{**ON, "device": "lamp"}]}})
    result = check_config(write(tmp_path, data))
    assert_rejected(result, "mqtt.port:")
    assert matches(result.stderr, r"scenes\.morning\S*: unknown device 'lamp'"), result.stderr


def test_duplicate_of_an_invalid_device_is_reported(tmp_path: Path) -> None:
    data = cfg(devices=[{**HUB, "latency": -1}, {"id": "hub", "type": "simulated.light"}])
    assert_rejected(
        check_config(write(tmp_path, data)),
        "devices[0].latency:",
        "devices[1].id: duplicate device id 'hub'",
    )


def test_dependency_on_an_invalid_device_is_not_called_unknown(tmp_path: Path) -> None:
    data = cfg(devices=[{**HUB, "latency": -1}, LIGHT])
    result = check_config(write(tmp_path, data))
    assert_rejected(result, "devices[0].latency:")
    assert "unknown device 'hub'" not in result.stderr


# --- deep and cyclic graphs -------------------------------------------------------------


def check_config_process(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``iot-gateway check-config -c PATH`` as its own process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=clean_env(**env),
        cwd=ROOT,
        check=False,
    )


def step_chain(count: int, *, cycle: bool = False) -> list[dict[str, Any]]:
    """Steps s0 after s1 after s2 ...: listed last one first; ``cycle``: the last after s0."""
    steps = [{**ON, "id": f"s{i}", "after": [f"s{i + 1}"]} for i in range(count - 1)]
    return [*steps, {**ON, "id": f"s{count - 1}", "after": ["s0"] if cycle else []}]


def device_chain(count: int) -> list[dict[str, Any]]:
    """d0 <- d1 <- ... <- d(count - 1), each depending on the one before."""
    devices = [{"id": f"d{i}", "type": "simulated.switch"} for i in range(count)]
    return [{**d, "depends_on": [f"d{i - 1}"]} if i else d for i, d in enumerate(devices)]


@pytest.mark.parametrize("cycle", [False, True], ids=["chain", "cycle"])
def test_a_thousand_step_scene_is_refused_in_one_line(tmp_path: Path, *, cycle: bool) -> None:
    result = check_config_process(write(tmp_path, scene(*step_chain(1000, cycle=cycle))))
    assert_rejected(result, "scenes.morning.steps: at most 256 steps")
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_the_longest_scene_allowed_may_be_a_chain(tmp_path: Path) -> None:
    config = load(write(tmp_path, scene(*step_chain(256))))
    assert len(config.settings.scenes["morning"].steps) == 256


def test_a_cycle_through_the_longest_scene_is_named(tmp_path: Path) -> None:
    result = check_config(write(tmp_path, scene(*step_chain(256, cycle=True))))
    assert_rejected(result, "scenes.morning.steps: cycle s0 -> s1 -> s2 -> ")
    assert " -> s255 -> s0\n" in result.stderr


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_chain_of_500_devices_is_refused_naming_where_it_is_too_deep(
    tmp_path: Path, command: str
) -> None:
    path = write(tmp_path, cfg(devices=device_chain(500)))
    # `run` as a process too: a traceback there ended the run with exit 1.
    result = cli("run", "-c", str(path)) if command == "run" else check_config_process(path)
    assert_rejected(
        result,
        "devices[65].depends_on: a chain of dependencies deeper than 64 (d65 -> ... -> d0)",
    )
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_a_chain_64_dependencies_deep_is_allowed(tmp_path: Path) -> None:
    config = load(write(tmp_path, cfg(devices=device_chain(65))))
    assert config.devices[-1].depends_on == ("d63",)


def test_each_place_a_chain_gets_too_deep_is_named_once(tmp_path: Path) -> None:
    devices = [
        *device_chain(66),
        {"id": "x", "type": "simulated.switch", "depends_on": ["d64"]},  # 65: too deep
        {"id": "y", "type": "simulated.switch", "depends_on": ["x", "d65"]},  # above both
    ]
    result = check_config(write(tmp_path, cfg(devices=devices)))
    problems = result.stderr.splitlines()
    assert [p.split(":")[1] for p in problems] == [
        " devices[65].depends_on",
        " devices[66].depends_on",
    ]


def test_every_dependency_cycle_is_listed(tmp_path: Path) -> None:
    def switch(device_id: str, *depends_on: str) -> dict[str, Any]:
        return {"id": device_id, "type": "simulated.switch", "depends_on": list(depends_on)}

    devices = [
        HUB,
        switch("a", "b"),
        switch("b", "a"),
        switch("self", "self"),
        switch("c1", "hub", "c2"),
        switch("c2", "c3"),
        switch("c3", "c1"),
        switch("after", "a", "c1"),  # waits on two cycles, is on none
    ]
    result = check_config(write(tmp_path, cfg(devices=devices)))
    assert_rejected(result)
    assert result.stderr.splitlines() == [
        "config error: devices: dependency cycle a -> b -> a",
        "config error: devices: dependency cycle self -> self",
        "config error: devices: dependency cycle c1 -> c2 -> c3 -> c1",
    ]


def test_every_step_cycle_is_listed(tmp_path: Path) -> None:
    steps = [
        {**ON, "id": "x", "after": ["y"]},
        {**ON, "id": "y", "after": ["x"]},
        {**ON, "id": "z", "after": ["z"]},
    ]
    result = check_config(write(tmp_path, scene(*steps)))
    assert result.stderr.splitlines() == [
        "config error: scenes.morning.steps: cycle x -> y -> x",
        "config error: scenes.morning.steps: cycle z -> z",
    ]


# --- YAML that PyYAML accepts but a configuration must not ------------------------------

TWO_MQTT = """\
mqtt:
  host: 127.0.0.1
  port: 1
  tls: {ca_file: /etc/ssl/ca.pem}
devices: []
mqtt:
  host: 127.0.0.1
"""


def write_text(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(params=["libyaml", "python"])
def yaml_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each check runs on libyaml's parser and on PyYAML's own (used when libyaml is absent)."""
    if request.param == "python":
        monkeypatch.setattr(yaml_loader, "_Loader", yaml_loader._PythonLoader)  # noqa: SLF001


@pytest.mark.usefixtures("yaml_parser")
def test_a_second_section_is_an_error_not_a_silent_replacement(tmp_path: Path) -> None:
    path = write_text(tmp_path, TWO_MQTT)
    result = check_config(path)
    assert_rejected(result, f"{path}: duplicate key 'mqtt' at line 6")
    assert result.stderr.count("\n") == 1, result.stderr


@pytest.mark.usefixtures("yaml_parser")
def test_duplicate_keys_at_any_depth_are_all_listed(tmp_path: Path) -> None:
    text = """\
mqtt:
  host: 127.0.0.1
  port: 1
  reconnect: {min_delay: 1, min_delay: 2}
  port: 2
devices:
  - {id: hub, type: simulated.switch}
  - id: light
    type: simulated.light
    id: lamp
scenes:
  morning:
    steps:
      - {id: on, device: light, action: turn_on, params: {}, params: {}}
"""
    path = write_text(tmp_path, text)
    assert_rejected(
        check_config(path),
        f"{path}: duplicate key 'min_delay' at line 4",
        f"{path}: duplicate key 'port' at line 5",
        f"{path}: duplicate key 'id' at line 10",
        f"{path}: duplicate key 'params' at line 14",
    )


@pytest.mark.usefixtures("yaml_parser")
def test_merge_keys_may_override_what_they_merge(tmp_path: Path) -> None:
    text = """\
mqtt: {host: 127.0.0.1, port: 1}
devices:
  - &switch {id: hub, type: simulated.switch, latency: 0.5}
  - {<<: *switch, id: hall, latency: 0}
"""
    config = load(write_text(tmp_path, text))
    assert [(d.id, d.model_dump()["latency"]) for d in config.devices] == [
        ("hub", 0.5),
        ("hall", 0),
    ]


def http_device_with_body(body: str) -> str:
    """A config whose one device is an HTTP device with an action sending ``body`` (YAML)."""
    return (
        "mqtt: {host: 127.0.0.1, port: 1}\n"
        "devices:\n"
        "  - id: laugh\n"
        "    type: http\n"
        "    base_url: http://127.0.0.1:1\n"
        "    actions:\n"
        "      laugh:\n"
        "        path: /laugh\n"
        "        body:\n" + "".join(f"          {line}\n" for line in body.splitlines())
    )


def billion_laughs(levels: int) -> str:
    """Each level a list of nine aliases of the one before: 9**levels strings from ~0.6 KB."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        aliases = ", ".join([f"*l{level - 1}"] * 9)
        lines.append(f"l{level}: &l{level} [{aliases}]")
    return "\n".join(lines)


def test_an_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    body = billion_laughs(9)
    assert len(body) < 600
    path = write_text(tmp_path, http_device_with_body(body))
    # Before: pydantic copied the body's 387 million strings (past 60 s and 1.8 GB).
    result = check_config_process(path)
    assert_rejected(result, f"{path}: aliases expand the document by more than 1,000,000 nodes")


@pytest.mark.usefixtures("yaml_parser")
def test_an_alias_bomb_is_refused_by_either_parser(tmp_path: Path) -> None:
    path = write_text(tmp_path, http_device_with_body(billion_laughs(9)))
    assert_rejected(check_config(path), f"{path}: aliases expand the document by more than")


def test_a_few_aliases_in_a_body_are_fine(tmp_path: Path) -> None:
    config = load(write_text(tmp_path, http_device_with_body(billion_laughs(3))))
    assert config.devices[0].id == "laugh"


@pytest.mark.usefixtures("yaml_parser")
def test_an_alias_of_a_long_string_counts_its_length(tmp_path: Path) -> None:
    copies = ", ".join(["*big"] * 1000)
    body = f"big: &big {'x' * 100_000}\ncopies: [{copies}]"
    path = write_text(tmp_path, http_device_with_body(body))
    assert_rejected(check_config(path), f"{path}: aliases expand the document by more than")


@pytest.mark.usefixtures("yaml_parser")
def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    path = write_text(tmp_path, http_device_with_body("loop: &loop [1, *loop]"))
    assert_rejected(check_config(path), f"{path}: an alias inside its own anchor at line 10")


def test_a_template_merged_into_many_devices_is_fine(tmp_path: Path) -> None:
    template = "{id: s0, type: simulated.switch, latency: 0.5, fail_on: [toggle], timeout: 3}"
    devices = "".join(f"  - {{<<: *switch, id: s{i}}}\n" for i in range(1, 10_000))
    text = f"mqtt: {{host: 127.0.0.1, port: 1}}\ndevices:\n  - &switch {template}\n{devices}"
    config = load(write_text(tmp_path, text))
    assert len(config.devices) == 10_000
    assert config.devices[-1].model_dump()["fail_on"] == ("toggle",)


# --- files the configuration names ------------------------------------------------------


@pytest.mark.parametrize("key", ["ca_file", "cert_file", "key_file"])
def test_a_missing_tls_file_is_named(tmp_path: Path, key: str) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here", encoding="utf-8")
    missing = tmp_path / "missing.pem"
    tls = {"ca_file": str(ca), key: str(missing)}
    result = check_config(write(tmp_path, cfg(mqtt={"tls": tls})))
    assert_rejected(result, f"mqtt.tls.{key}: cannot read {missing}: No such file or directory")


def test_a_tls_file_that_is_a_directory_is_named(tmp_path: Path) -> None:
    result = check_config(write(tmp_path, cfg(mqtt={"tls": {"ca_file": str(tmp_path)}})))
    assert_rejected(result, f"mqtt.tls.ca_file: cannot read {tmp_path}: Is a directory")


def test_a_tls_file_from_a_variable_names_the_variable(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    result = check_config(write(tmp_path, cfg()), GATEWAY_MQTT__TLS__CA_FILE=str(missing))
    assert_rejected(result, "mqtt.tls.ca_file (from GATEWAY_MQTT__TLS__CA_FILE): cannot read")


def test_readable_tls_files_pass(tmp_path: Path) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x", encoding="utf-8")
    tls = {f"{n}_file": str(tmp_path / f"{n}.pem") for n in ("ca", "cert", "key")}
    assert check_config(write(tmp_path, cfg(mqtt={"tls": tls}))).returncode == 0


def test_tls_files_are_checked_beside_other_problems(tmp_path: Path) -> None:
    data = cfg(mqtt={"tls": {"ca_file": str(tmp_path / "missing.pem")}}, logging={"level": "X"})
    assert_rejected(check_config(write(tmp_path, data)), "mqtt.tls.ca_file:", "logging.level:")


# --- mqtt.password_file -----------------------------------------------------------------


def password_file(tmp_path: Path, content: bytes, name: str = "mqtt-password") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("content", "password"),
    [
        (SECRET.encode(), SECRET),
        (f"{SECRET}\n".encode(), SECRET),
        (f"{SECRET}\r\n".encode(), SECRET),
        (f"{SECRET}\n\n".encode(), f"{SECRET}\n"),
        (b" spaced out ", " spaced out "),
        ("pässwörd\n".encode(), "pässwörd"),
    ],
)
def test_the_password_is_the_files_text_less_one_newline(
    tmp_path: Path, content: bytes, password: str
) -> None:
    path = password_file(tmp_path, content)
    settings = load(write(tmp_path, cfg(mqtt={"password_file": str(path)}))).settings
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == password
    assert SECRET not in repr(settings)


def test_the_password_file_from_a_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = password_file(tmp_path, f"{SECRET}\n".encode())
    monkeypatch.setenv("GATEWAY_MQTT__PASSWORD_FILE", str(path))
    password = load(write(tmp_path, cfg())).settings.mqtt.password
    assert password is not None
    assert password.get_secret_value() == SECRET


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "is empty"),
        (b"\n", "is empty"),
        (b"\xff\xfe", "not UTF-8 text"),
        (b"x" * 65536, "longer than MQTT's 65,535 bytes"),
    ],
)
def test_a_password_file_that_holds_no_password_is_refused(
    tmp_path: Path, content: bytes, why: str
) -> None:
    path = password_file(tmp_path, content)
    result = check_config(write(tmp_path, cfg(mqtt={"password_file": str(path)})))
    assert_rejected(result, "mqtt.password_file:")
    assert why in result.stderr


def test_an_unreadable_password_file_is_refused_by_check_config_and_run(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    path = write(tmp_path, cfg(mqtt={"password_file": str(missing)}))
    line = f"mqtt.password_file: cannot read {missing}: No such file or directory"
    assert_rejected(check_config(path), line)
    assert_rejected(cli("run", "-c", str(path)), line)
    from_variable = check_config(write(tmp_path, cfg()), GATEWAY_MQTT__PASSWORD_FILE=str(tmp_path))
    assert_rejected(
        from_variable,
        f"mqtt.password_file (from GATEWAY_MQTT__PASSWORD_FILE): cannot read {tmp_path}",
    )


@pytest.mark.parametrize(
    ("mqtt", "env"),
    [
        pytest.param({"password": "x", "password_file": "PATH"}, {}, id="both-in-the-file"),
        pytest.param(
            {"password_file": "PATH"}, {"GATEWAY_MQTT__PASSWORD": "x"}, id="env-password"
        ),
        pytest.param({"password": "x"}, {"GATEWAY_MQTT__PASSWORD_FILE": "PATH"}, id="env-file"),
    ],
)
def test_password_and_password_file_together_are_refused(
    tmp_path: Path, mqtt: dict[str, str], env: dict[str, str]
) -> None:
    path = str(password_file(tmp_path, SECRET.encode()))
    mqtt = {key: value.replace("PATH", path) for key, value in mqtt.items()}
    env = {key: value.replace("PATH", path) for key, value in env.items()}
    result = check_config(write(tmp_path, cfg(mqtt=mqtt)), **env)
    assert_rejected(result, "mqtt.password_file")
    assert "set either password or password_file" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_the_password_files_content_is_never_printed(tmp_path: Path) -> None:
    path = password_file(tmp_path, SECRET.encode() + b"\xff")
    data = cfg(mqtt={"password_file": str(path), "port": "abc"}, devices=[{"id": "Bad Id"}])
    result = check_config(write(tmp_path, data))
    assert_rejected(result, "mqtt.password_file:", "mqtt.port:", "devices[0].id:")
    assert SECRET not in result.stdout + result.stderr


# --- the environment alone, for tools run without a file --------------------------------


def test_settings_from_the_environment_alone_read_the_password_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_MQTT__PORT", "2883")
    monkeypatch.setenv("GATEWAY_MQTT__PASSWORD_FILE", str(password_file(tmp_path, b"pw\n")))
    settings = settings_from_environment()
    assert settings.mqtt.port == 2883
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "pw"


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("GATEWAY_MQTT_PORT", "1", "GATEWAY_MQTT_PORT: no such setting"),
        ("GATEWAY_MQTT__PORT", "x", "mqtt.port (from GATEWAY_MQTT__PORT): "),
        ("GATEWAY_MQTT__TLS", "x", "mqtt.tls (from GATEWAY_MQTT__TLS): must be JSON"),
        ("GATEWAY_MQTT__PASSWORD_FILE", "/nonexistent", "mqtt.password_file (from GATEWAY_"),
    ],
)
def test_settings_from_the_environment_alone_name_every_problem(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        settings_from_environment()
    assert [p for p in caught.value.problems if p.startswith(problem)], caught.value.problems


# --- step lists: the length first -------------------------------------------------------


def test_a_step_list_over_the_limit_is_refused_before_its_steps_are_looked_at() -> None:
    garbage = [{"no": "step"}] * (MAX_STEPS + 1)
    with pytest.raises(ValidationError) as caught:
        TypeAdapter(StepList).validate_python(garbage)
    assert [e["msg"] for e in caught.value.errors()] == [f"at most {MAX_STEPS} steps"]
    steps = [Step(id=f"s{i}", device="nowhere", action="x") for i in range(MAX_STEPS + 1)]
    registry = AdapterRegistry.from_entry_points()
    assert check_steps(steps, {}, registry, where="params.steps") == [
        "params.steps: at most 256 steps"
    ]
