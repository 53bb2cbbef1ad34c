"""The deployment files: Dockerfile, docker-compose.yml and the broker config.

There is no Docker engine here, so the files are checked statically, and what
they run that exists outside Docker (the broker config, the healthchecks, the
gateway's config) is run for real against a private Mosquitto.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union, cast, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel, SecretStr

from gateway import AdapterRegistry, load_config
from gateway.config import CONFIG_ENV_VAR, Settings
from gateway.supervisor import FLUSH_TIMEOUT
from tests.broker import MOSQUITTO, free_port
from tests.conftest import gateway_process

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
MOSQUITTO_CONF = ROOT / "mosquitto" / "mosquitto.conf"
DEMO_CONFIG = ROOT / "examples" / "demo.yaml"
ENV_PREFIX = "GATEWAY_"

# --- reading the files -----------------------------------------------------------


def compose() -> dict[str, Any]:
    """docker-compose.yml as data."""
    return cast("dict[str, Any]", yaml.safe_load(COMPOSE_FILE.read_text()))


def service(name: str) -> dict[str, Any]:
    """One service of docker-compose.yml."""
    return cast("dict[str, Any]", compose()["services"][name])


def volumes(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """A service's volumes as (source, container target), from short or long syntax."""
    pairs = []
    for volume in spec.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        pairs.append((source, target))
    return pairs


def bind_mounts(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """The volumes that mount host paths (the others are named volumes)."""
    return [(s, t) for s, t in volumes(spec) if s.startswith(("./", "../", "/", "~"))]


def environment(spec: dict[str, Any]) -> dict[str, str]:
    """A service's environment, from either the mapping or the list form."""
    env = spec.get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(key): str(value) for key, value in env.items()}


def uninterpolated(value: str) -> str:
    """What compose passes on for ``value``: ``$$`` is a literal ``$``."""
    assert "$" not in value.replace("$$", ""), f"compose would interpolate a $ in {value!r}"
    return value.replace("$$", "$")


def seconds(duration: str) -> float:
    """A compose duration such as ``15s`` or ``1m30s``."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts, f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), one list per stage."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        keyword, _, arguments = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        elif not stages:
            continue  # ARG before the first FROM
        stages[-1].append((keyword.upper(), arguments.strip()))
    return stages


def instruction(stage: list[tuple[str, str]], keyword: str) -> str:
    """The arguments of the stage's last ``keyword`` (the one that takes effect)."""
    found = [arguments for name, arguments in stage if name == keyword]
    assert found, f"no {keyword} in the stage"
    return found[-1]


def exec_form(arguments: str) -> list[str]:
    """A JSON-array (exec form) instruction's arguments; fails on shell form."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        pytest.fail(f"not exec form (a JSON array): {arguments}")
    assert isinstance(value, list)
    assert value
    assert all(isinstance(item, str) for item in value)
    return cast("list[str]", value)


def broker_directives() -> list[list[str]]:
    """mosquitto.conf's directives, comments and blank lines left out."""
    lines = MOSQUITTO_CONF.read_text().splitlines()
    return [line.split() for line in lines if line.strip() and not line.startswith("#")]


# --- settings named by environment variables ------------------------------------


def unwrap_optional(annotation: Any) -> Any:
    """``X | None`` and ``Optional[X]`` are ``X``."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def setting_for(name: str) -> Any:
    """The annotation of the setting a ``GATEWAY_A__B`` variable sets; fails if none."""
    assert name.upper().startswith(ENV_PREFIX), name
    model: type[BaseModel] = Settings
    annotation: Any = None
    for depth, key in enumerate(name[len(ENV_PREFIX) :].lower().split("__")):
        if depth:
            annotation = unwrap_optional(annotation)
            assert isinstance(annotation, type), f"{name}: {key!r} under a non-section"
            assert issubclass(annotation, BaseModel), f"{name}: {key!r} under a non-section"
            model = annotation
        field = model.model_fields.get(key)
        assert field is not None, f"{name}: {model.__name__} has no setting {key!r}"
        annotation = field.annotation
    return unwrap_optional(annotation)


@pytest.mark.parametrize(
    "name",
    [
        "GATEWAY_MQTT__HOST",
        "GATEWAY_MQTT__PASSWORD",
        "GATEWAY_MQTT__RECONNECT__MAX_DELAY",
        "GATEWAY_MQTT__TLS__CA_FILE",
        "GATEWAY_HTTP__PORT",
        "gateway_gateway__shutdown_grace",
    ],
)
def test_setting_for_finds_real_settings(name: str) -> None:
    setting_for(name)


@pytest.mark.parametrize(
    "name",
    [
        "GATEWAY_MQTT__HOSTNAME",
        "GATEWAY_MQTT_HOST",
        "GATEWAY_MQTT__HOST__NAME",
        "GATEWAY_BROKER__HOST",
        "GATEWAY_MQTT__RECONNECT__DELAY",
    ],
)
def test_setting_for_rejects_unknown_names(name: str) -> None:
    with pytest.raises(AssertionError):
        setting_for(name)


# --- docker-compose.yml ---------------------------------------------------------


def test_compose_bind_mounts_exist() -> None:
    mounts = [m for spec in compose()["services"].values() for m in bind_mounts(spec)]
    assert mounts
    for source, target in mounts:
        assert source.startswith("./"), f"{source}: mount repo files by relative path"
        assert (ROOT / source).exists(), f"{source} (mounted at {target}) is not in the repo"


def test_compose_gateway_variables_name_real_settings() -> None:
    names = [
        name
        for spec in compose()["services"].values()
        for name in environment(spec)
        if name.upper().startswith(ENV_PREFIX) and name != CONFIG_ENV_VAR
    ]
    assert names
    for name in names:
        # Secrets come from the untracked env_file, never from the compose file.
        assert setting_for(name) is not SecretStr, f"{name} is a secret: use the env_file"


def test_compose_has_no_accidental_interpolation() -> None:
    # A lone $ (say $SYS) would be replaced by a variable's value, usually empty.
    uninterpolated(json.dumps(compose()))


def test_compose_services_restart_and_have_healthchecks() -> None:
    for name, spec in compose()["services"].items():
        assert spec.get("restart") in {"always", "unless-stopped", "on-failure"}, name
        check = spec.get("healthcheck", {})
        assert not check.get("disable"), name
        assert check.get("test", ["NONE"])[0] in {"CMD", "CMD-SHELL"}, name
        assert seconds(check["timeout"]) < seconds(check["interval"]), name


def test_compose_gateway_waits_for_a_healthy_broker() -> None:
    depends_on = service("gateway")["depends_on"]
    assert depends_on["mosquitto"]["condition"] == "service_healthy"


def test_compose_gateway_stops_cleanly_within_the_grace_period() -> None:
    stop_grace = seconds(service("gateway")["stop_grace_period"])
    settings = load_config(DEMO_CONFIG, AdapterRegistry.from_entry_points()).settings
    # Worst case: running commands get shutdown_grace, then the final results
    # and `offline` get FLUSH_TIMEOUT to reach the broker.
    assert stop_grace > settings.gateway.shutdown_grace + FLUSH_TIMEOUT


def test_compose_env_file_is_optional_and_untracked() -> None:
    for entry in service("gateway").get("env_file", []):
        assert isinstance(entry, dict), "a plain env_file entry is required to exist"
        assert entry["required"] is False
        assert entry["path"] in DOCKERIGNORE.read_text().split(), "keep it out of the image"
        tracked = subprocess.run(
            ["git", "ls-files", "--error-unmatch", entry["path"]],
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
        assert tracked.returncode != 0, f"{entry['path']} holds secrets: do not commit it"


def test_compose_broker_port_matches_its_config() -> None:
    spec = service("mosquitto")
    [listener] = [d for d in broker_directives() if d[0] == "listener"]
    assert listener == ["listener", "1883"], "one listener, every interface, port 1883"
    published = [str(port).split(":")[-1].removesuffix("/tcp") for port in spec["ports"]]
    assert published == ["1883"]
    command = spec["healthcheck"]["test"]
    assert command[command.index("-p") + 1] == "1883"


def test_compose_broker_keeps_data_and_log_on_volumes() -> None:
    spec = service("mosquitto")
    targets = [t for s, t in volumes(spec) if s and (s, t) not in bind_mounts(spec)]
    directives = broker_directives()
    assert ["persistence", "true"] in directives
    [location] = [d[1] for d in directives if d[0] == "persistence_location"]
    [log_file] = [d[2] for d in directives if d[:2] == ["log_dest", "file"]]
    assert ["log_dest", "stdout"] in directives
    for path in (location, log_file):
        assert any(path.startswith(target.rstrip("/") + "/") for target in targets), path


# --- Dockerfile -----------------------------------------------------------------


def test_dockerfile_is_multi_stage_and_ships_only_the_venv() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    runtime = stages[-1]
    copies = [arguments for keyword, arguments in runtime if keyword in {"COPY", "ADD"}]
    assert copies
    assert all(arguments.startswith("--from=") for arguments in copies), copies


def test_dockerfile_runs_as_non_root() -> None:
    user = instruction(dockerfile_stages()[-1], "USER").split(":")[0]
    assert user not in {"root", "0"}


def test_dockerfile_entrypoint_and_cmd_are_exec_form() -> None:
    runtime = dockerfile_stages()[-1]
    entrypoint = exec_form(instruction(runtime, "ENTRYPOINT"))
    cmd = exec_form(instruction(runtime, "CMD"))
    assert entrypoint == ["iot-gateway"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0] in scripts
    assert cmd[0] == "run"
    assert instruction(runtime, "STOPSIGNAL") == "SIGTERM"
    # The config file CMD names is the one compose mounts.
    targets = [target for _, target in bind_mounts(service("gateway"))]
    assert cmd[cmd.index("-c") + 1] in targets


def test_dockerfile_copies_only_files_in_the_build_context() -> None:
    ignored = {line.strip().strip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    for required in (".env", ".git", ".venv", "tests", "**/__pycache__"):
        assert required in ignored, f".dockerignore must exclude {required}"
    sources = [
        source
        for stage in dockerfile_stages()
        for keyword, arguments in stage
        if keyword == "COPY" and not arguments.startswith("--from=")
        for source in arguments.split()[:-1]
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repo"
        assert source.strip("/") not in ignored, f"COPY {source}: excluded by .dockerignore"


# --- running what the files name ------------------------------------------------


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without GATEWAY_* leaking in, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    return {**env, **overrides}


def test_demo_config_passes_check_config_with_the_compose_environment() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "-c", str(DEMO_CONFIG)],
        env=clean_env(**environment(service("gateway"))),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "OK" in completed.stdout


class RepoBroker:
    """Mosquitto run with the repo's config, moved to a free loopback port and tmp_path."""

    def __init__(self, workdir: Path) -> None:
        """Write the rewritten config and start mosquitto with it."""
        self.port = free_port()
        self.data_dir = workdir / "data"
        self.log_file = workdir / "log" / "mosquitto.log"
        self.stdout_file = workdir / "stdout.log"
        self.data_dir.mkdir()
        self.log_file.parent.mkdir()
        config = workdir / "mosquitto.conf"
        config.write_text(self.rewrite(MOSQUITTO_CONF.read_text()))
        with self.stdout_file.open("wb") as stdout:
            self.process = subprocess.Popen(
                [MOSQUITTO, "-c", str(config)], stdout=stdout, stderr=subprocess.STDOUT
            )

    def rewrite(self, text: str) -> str:
        """Point the listener, persistence and log file at this test's port and files."""
        replacements = {
            ("listener",): f"listener {self.port} 127.0.0.1",
            ("persistence_location",): f"persistence_location {self.data_dir}/",
            ("log_dest", "file"): f"log_dest file {self.log_file}",
        }
        lines = []
        for line in text.splitlines():
            words = tuple(line.split())
            key = words[:1] if words[:1] in replacements else words[:2]
            lines.append(replacements.pop(key, line))
        assert not replacements, f"mosquitto.conf lacks {sorted(replacements)}"
        # Started as root, mosquitto drops to the `mosquitto` user, which cannot
        # write to tmp_path; keep whoever runs the tests (ignored unless root).
        lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        return "\n".join(lines) + "\n"

    def wait_until_listening(self, timeout: float = 10) -> None:
        """Poll until a TCP connect succeeds; fail if mosquitto exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"mosquitto exited: {self.stdout_file.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except ConnectionRefusedError:
                time.sleep(0.01)  # poll interval: nothing to wait on but the port
            else:
                return
        pytest.fail("mosquitto did not start listening")

    def stop(self) -> int:
        """SIGTERM by PID (mosquitto saves persistence then) and wait for the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout=10)


@pytest.fixture
def repo_broker(tmp_path: Path) -> Iterator[RepoBroker]:
    """The repo's mosquitto.conf running on a free port, stopped after the test."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = RepoBroker(workdir)
    try:
        broker.wait_until_listening()
        yield broker
    finally:
        if broker.process.poll() is None:
            broker.process.kill()
            broker.process.wait(timeout=10)


def run_healthcheck(
    name: str, env: dict[str, str] | None = None, **options: str
) -> subprocess.CompletedProcess[str]:
    """Run a compose healthcheck here; ``options`` replace (or add) its ``-x`` values."""
    test = service(name)["healthcheck"]["test"]
    assert test[0] == "CMD"
    command = [uninterpolated(arg) for arg in test[1:]]
    for flag, value in options.items():
        if f"-{flag}" in command:
            command[command.index(f"-{flag}") + 1] = value
        else:
            command += [f"-{flag}", value]
    if command[0] == "python":  # the venv's python, first on the image's PATH
        command[0] = sys.executable
    else:
        command[0] = shutil.which(command[0]) or pytest.fail(f"{command[0]} not installed")
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=15, check=False
    )


def test_mosquitto_conf_runs_and_passes_its_healthcheck(repo_broker: RepoBroker) -> None:
    check = run_healthcheck("mosquitto", p=str(repo_broker.port), h="127.0.0.1")
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip().endswith("seconds")
    assert repo_broker.stop() == 0
    assert "mosquitto version" in repo_broker.log_file.read_text()
    assert "mosquitto version" in repo_broker.stdout_file.read_text()
    assert (repo_broker.data_dir / "mosquitto.db").exists(), "persistence was not saved"


def test_gateway_healthcheck_follows_the_gateway_status(
    repo_broker: RepoBroker, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    shutil.copy(DEMO_CONFIG, config)
    # As in the container: the image's GATEWAY_CONFIG and the compose environment,
    # with the broker here instead of the `mosquitto` service.
    env = clean_env(
        **{
            **environment(service("gateway")),
            CONFIG_ENV_VAR: str(config),
            "GATEWAY_MQTT__HOST": "127.0.0.1",
            "GATEWAY_MQTT__PORT": str(repo_broker.port),
        }
    )
    with gateway_process(config, **env) as gateway:
        deadline = time.monotonic() + 30
        while run_healthcheck("gateway", env).returncode != 0:
            assert gateway.popen.poll() is None, gateway.log()
            assert time.monotonic() < deadline, "never healthy"
        gateway.send_signal(signal.SIGTERM)
        assert gateway.popen.wait(seconds(service("gateway")["stop_grace_period"])) == 0
    check = run_healthcheck("gateway", env)
    assert check.returncode == 1, check.stderr  # `offline` is retained now
