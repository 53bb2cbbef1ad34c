"""The deployment files: Dockerfile, docker-compose.yml, the broker config, the unit's secrets.

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
GITIGNORE = ROOT / ".gitignore"
ENV_EXAMPLE = ROOT / ".env.example"
UNIT_FILE = ROOT / "systemd" / "iot-gateway.service"
SYSTEMD_SOFT_NOFILE = 1024  # systemd's default soft open-file limit for services
BROKER_CONF = ROOT / "mosquitto" / "compose.conf"
HEALTHCHECK_ACL = ROOT / "mosquitto" / "healthcheck.acl"
DEMO_CONFIG = ROOT / "examples" / "demo.yaml"
ENV_PREFIX = "GATEWAY_"
# The two listeners of compose.conf: clients (published) and the healthcheck's.
CLIENT_PORT = "1883"
HEALTH_PORT = "1880"
# Where the mosquitto-passwd service writes the password file (a volume).
AUTH_DIR = "/mosquitto/auth"
# ${NAME:?message}: a variable compose requires (from the environment or .env).
REQUIRED_VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*):\?([^}]*)\}")

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


def env_file_variables(path: Path) -> dict[str, str]:
    """The ``NAME=value`` lines of an env file such as .env.example."""
    pairs = (line.partition("=") for line in path.read_text().splitlines())
    return {
        name.strip(): value.strip()
        for name, equals, value in pairs
        if equals and name.strip() and not name.lstrip().startswith("#")
    }


def interpolated(value: str, variables: dict[str, str]) -> str:
    """What compose makes of ``value`` given ``variables`` (the environment, .env).

    Only ``${NAME:?message}`` is allowed: compose stops with the message when
    NAME is unset or empty, so this raises ``LookupError`` then.
    """

    def required(match: re.Match[str]) -> str:
        name, message = match.groups()
        if not variables.get(name):
            raise LookupError(f"{name}: {message}")
        return variables[name].replace("$", "$$")  # a value is never interpolated

    return uninterpolated(REQUIRED_VARIABLE.sub(required, value))


def example_variables() -> dict[str, str]:
    """The variables compose would read from a .env copied from .env.example."""
    return env_file_variables(ENV_EXAMPLE)


def compose_environment(name: str) -> dict[str, str]:
    """A service's environment as its container gets it, with .env.example's values."""
    variables = example_variables()
    return {
        key: interpolated(value, variables) for key, value in environment(service(name)).items()
    }


def secret_variables(name: str) -> dict[str, str]:
    """A service's secrets: container path -> the variable compose makes it from."""
    declared = compose().get("secrets", {})
    found = {}
    for entry in service(name).get("secrets", []):
        source = entry if isinstance(entry, str) else entry["source"]
        target = source if isinstance(entry, str) else entry.get("target", source)
        path = target if target.startswith("/") else f"/run/secrets/{target}"
        assert set(declared[source]) == {"environment"}, f"{source}: made from a variable"
        found[path] = declared[source]["environment"]
    return found


def container_environment(name: str, secrets_dir: Path) -> dict[str, str]:
    """A service's environment as its container gets it, secrets included.

    Each secret is written into ``secrets_dir`` as compose writes it into the
    container (the variable's value exactly, mode 0444), and a variable naming
    its container path names that file instead.
    """
    env = compose_environment(name)
    variables = example_variables()
    for container_path, variable in secret_variables(name).items():
        host_path = secrets_dir / Path(container_path).name
        host_path.write_text(variables[variable], encoding="utf-8")
        host_path.chmod(0o444)
        env = {
            key: str(host_path) if value == container_path else value for key, value in env.items()
        }
    return env


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


def directives(path: Path) -> list[list[str]]:
    """A mosquitto config's (or ACL's) directives, comments and blank lines left out."""
    lines = path.read_text().splitlines()
    return [line.split() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def broker_directives() -> list[list[str]]:
    """compose.conf's directives."""
    return directives(BROKER_CONF)


def listener_settings() -> dict[str, list[list[str]]]:
    """compose.conf's listeners by port, each with the directives that follow it."""
    listeners: dict[str, list[list[str]]] = {}
    current: list[list[str]] | None = None
    for directive in broker_directives():
        if directive[0] == "listener":
            current = listeners.setdefault(directive[1], [directive])
        elif current is not None:
            current.append(directive)
    return listeners


def listener_option(port: str, option: str) -> str:
    """The value of one per-listener option of compose.conf's listener on ``port``."""
    found = [d[1] for d in listener_settings()[port] if d[0] == option]
    assert len(found) == 1, f"listener {port}: {option} set {len(found)} times"
    return found[0]


def host_file(name: str, target: str) -> Path:
    """The repo file that ``name``'s compose bind mounts put at container path ``target``."""
    for source, mounted in bind_mounts(service(name)):
        if target == mounted or target.startswith(mounted.rstrip("/") + "/"):
            return ROOT / source / Path(target).relative_to(mounted)
    pytest.fail(f"{target} is not mounted from the repo in service {name}")


def passwd_script() -> str:
    """The shell script the mosquitto-passwd service runs (after compose's $$ escapes)."""
    command = service("mosquitto-passwd")["command"]
    assert command[:2] == ["sh", "-ec"], command
    return uninterpolated(command[2])


def one_shot_services() -> set[str]:
    """Services that others wait on to complete, instead of to be healthy."""
    return {
        name
        for spec in compose()["services"].values()
        for name, condition in spec.get("depends_on", {}).items()
        if condition.get("condition") == "service_completed_successfully"
    }


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
    assert "GATEWAY_MQTT__USERNAME" in names
    for name in names:
        setting_for(name)


def test_compose_secrets_come_from_the_environment_only() -> None:
    for service_name, spec in compose()["services"].items():
        for name, value in environment(spec).items():
            secret = name.upper().startswith(ENV_PREFIX) and setting_for(name) is SecretStr
            if secret or ("PASSWORD" in name.upper() and not name.upper().endswith("_FILE")):
                # Interpolated by compose from the environment or .env: never a
                # value written here (and so never in the image either).
                assert REQUIRED_VARIABLE.fullmatch(value), f"{service_name}: {name}={value!r}"
    assert environment(service("gateway"))["GATEWAY_MQTT__USERNAME"] == "gateway"
    # The gateway gets its own password, not the client's (no env_file either),
    # and only as a secret made from the variable.
    assert REQUIRED_VARIABLE.findall(json.dumps(service("gateway"))) == []
    assert list(secret_variables("gateway").values()) == ["MQTT_GATEWAY_PASSWORD"]
    assert "env_file" not in service("gateway")


def test_compose_gateway_password_is_a_secret_file_not_a_variable() -> None:
    for spec in compose()["services"].values():
        assert not any(
            setting_for(n) is SecretStr for n in environment(spec) if n.startswith(ENV_PREFIX)
        )
    [secret_path] = secret_variables("gateway")
    assert environment(service("gateway"))["GATEWAY_MQTT__PASSWORD_FILE"] == secret_path
    assert setting_for("GATEWAY_MQTT__PASSWORD_FILE") is Path
    # Every declared secret is given to a service, and each comes from a
    # variable in .env.example that compose requires (with the message saying
    # so) before it creates anything: a secret's own error is less helpful.
    used = {v for name in compose()["services"] for v in secret_variables(name).values()}
    assert len(used) == len(compose()["secrets"])
    required = {
        name
        for spec in compose()["services"].values()
        for value in environment(spec).values()
        for name, _ in REQUIRED_VARIABLE.findall(value)
    }
    assert used <= required
    assert used <= set(example_variables())


def test_compose_required_variables_are_in_env_example() -> None:
    values = [
        value
        for spec in compose()["services"].values()
        for value in environment(spec).values()
        if REQUIRED_VARIABLE.search(value)
    ]
    names = {name for value in values for name, _ in REQUIRED_VARIABLE.findall(value)}
    assert names == {"MQTT_GATEWAY_PASSWORD", "MQTT_CLIENT_PASSWORD", "MQTT_WATCHER_PASSWORD"}
    assert set(example_variables()) == names
    assert all(example_variables().values())
    for value in values:
        # Unset, compose stops with a message that says what to do.
        with pytest.raises(LookupError, match=r"set MQTT_\w+ in \.env \(see \.env\.example\)"):
            interpolated(value, {})


def test_env_file_is_ignored_untracked_and_has_an_example() -> None:
    assert ".env" in GITIGNORE.read_text().split()
    assert ".env" in DOCKERIGNORE.read_text().split(), "keep it out of the image"
    for path, ignored in ((".env", True), (".env.example", False)):
        check = subprocess.run(
            ["git", "check-ignore", "-q", path], cwd=ROOT, capture_output=True, check=False
        )
        assert (check.returncode == 0) is ignored, f"{path} ignored by git: {not ignored}"
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", ".env"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    assert tracked.returncode != 0, ".env holds secrets: do not commit it"


def test_compose_has_no_accidental_interpolation() -> None:
    # A lone $ (say $SYS) would be replaced by a variable's value, usually empty.
    uninterpolated(REQUIRED_VARIABLE.sub("", json.dumps(compose())))


def test_compose_services_restart_and_have_healthchecks() -> None:
    one_shot = one_shot_services()
    assert one_shot == {"mosquitto-passwd"}
    for name, spec in compose()["services"].items():
        if name in one_shot:
            # Runs to completion once per `up`; restarting it would loop.
            assert spec.get("restart", "no") == "no", name
            continue
        assert spec.get("restart") in {"always", "unless-stopped", "on-failure"}, name
        check = spec.get("healthcheck", {})
        assert not check.get("disable"), name
        assert check.get("test", ["NONE"])[0] in {"CMD", "CMD-SHELL"}, name
        assert seconds(check["timeout"]) < seconds(check["interval"]), name


def test_compose_gateway_waits_for_a_healthy_broker() -> None:
    depends_on = service("gateway")["depends_on"]
    assert depends_on["mosquitto"]["condition"] == "service_healthy"


def test_compose_broker_waits_for_its_password_file() -> None:
    depends_on = service("mosquitto")["depends_on"]
    assert depends_on["mosquitto-passwd"]["condition"] == "service_completed_successfully"
    password_file = listener_option(CLIENT_PORT, "password_file")
    assert password_file == f"{AUTH_DIR}/passwd"
    # Both services mount the same named volume there; the broker read-only.
    [writer] = [s for s, t in volumes(service("mosquitto-passwd")) if t == AUTH_DIR]
    [reader] = [
        volume
        for volume in service("mosquitto")["volumes"]
        if isinstance(volume, str) and volume.split(":")[1] == AUTH_DIR
    ]
    assert writer in compose()["volumes"]
    assert reader == f"{writer}:{AUTH_DIR}:ro"
    assert service("mosquitto-passwd")["image"] == service("mosquitto")["image"]
    script = passwd_script()
    assert f"{AUTH_DIR}/passwd" in script
    # Every user the ACL names gets a password.
    acl = host_file("mosquitto", listener_option(CLIENT_PORT, "acl_file"))
    users = [d[1] for d in directives(acl) if d[0] == "user"]
    assert users == ["gateway", "client", "watcher", "standby-a", "standby-b"]
    for user in users:
        assert re.search(rf"mosquitto_passwd .*-b \S+ {user} ", script), user


def test_compose_gateway_stops_cleanly_within_the_grace_period() -> None:
    stop_grace = seconds(service("gateway")["stop_grace_period"])
    settings = load_config(DEMO_CONFIG, AdapterRegistry.from_entry_points()).settings
    # Worst case: running commands get shutdown_grace, then the final results
    # and `offline` get FLUSH_TIMEOUT to reach the broker.
    assert stop_grace > settings.gateway.shutdown_grace + FLUSH_TIMEOUT


def test_compose_broker_listeners_match_its_config() -> None:
    spec = service("mosquitto")
    assert ["per_listener_settings", "true"] in broker_directives()
    listeners = listener_settings()
    assert set(listeners) == {CLIENT_PORT, HEALTH_PORT}
    # Clients: every interface (the compose network), logins and the ACL only.
    assert listeners[CLIENT_PORT][0] == ["listener", CLIENT_PORT]
    assert listener_option(CLIENT_PORT, "allow_anonymous") == "false"
    assert host_file("mosquitto", listener_option(CLIENT_PORT, "acl_file")) == (
        ROOT / "mosquitto" / "secure" / "acl"
    )
    # The healthcheck: loopback in the container, anonymous, $SYS read-only.
    assert listeners[HEALTH_PORT][0] == ["listener", HEALTH_PORT, "127.0.0.1"]
    assert listener_option(HEALTH_PORT, "allow_anonymous") == "true"
    health_acl = host_file("mosquitto", listener_option(HEALTH_PORT, "acl_file"))
    assert health_acl == HEALTHCHECK_ACL
    assert directives(health_acl) == [["topic", "read", "$SYS/#"]]
    # Only the clients' port is published, on the host's loopback.
    assert [str(port) for port in spec["ports"]] == [f"127.0.0.1:{CLIENT_PORT}:{CLIENT_PORT}"]
    command = spec["healthcheck"]["test"]
    assert command[command.index("-p") + 1] == HEALTH_PORT
    assert command[command.index("-h") + 1] == "127.0.0.1"
    assert "-u" not in command
    assert "-P" not in command
    assert ["set_tcp_nodelay", "true"] in broker_directives()
    assert ["max_inflight_messages", "0"] in broker_directives()


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
    # Each on its own writable volume, not on the read-only password volume.
    for path in (location, log_file):
        assert not path.startswith(AUTH_DIR + "/"), path


# --- systemd unit ---------------------------------------------------------------


def unit_service_settings() -> dict[str, list[str]]:
    """The unit's [Service] keys, each with every value it is given."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT_FILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_passes_the_password_as_a_credential_file() -> None:
    service_settings = unit_service_settings()
    [credential] = service_settings["LoadCredential"]
    name, _, source = credential.partition(":")
    assert source.startswith("/etc/iot-gateway/")
    variables = dict(
        item.partition("=")[::2]
        for value in service_settings["Environment"]
        for item in value.split()
    )
    # %d is systemd's credentials directory, where the credential appears.
    assert variables["GATEWAY_MQTT__PASSWORD_FILE"] == f"%d/{name}"
    assert setting_for("GATEWAY_MQTT__PASSWORD_FILE") is Path
    assert not [v for v in variables if setting_for_or_none(v) is SecretStr]


def setting_for_or_none(name: str) -> Any:
    """``setting_for``, or None for a variable that is no ``GATEWAY_`` setting."""
    return setting_for(name) if name.upper().startswith(ENV_PREFIX) else None


def test_unit_raises_the_open_file_limit() -> None:
    [limit] = unit_service_settings()["LimitNOFILE"]
    soft, _, hard = limit.partition(":")
    assert int(soft) > SYSTEMD_SOFT_NOFILE
    assert int(hard or soft) == int(soft)


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


def test_demo_config_passes_check_config_with_the_compose_environment(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "-c", str(DEMO_CONFIG)],
        env=clean_env(**container_environment("gateway", tmp_path)),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "OK" in completed.stdout


def write_password_file(directory: Path) -> Path:
    """Run the mosquitto-passwd service's script here, writing into ``directory``."""
    script = passwd_script().replace(AUTH_DIR, str(directory))
    # The image's mosquitto user is whoever runs the tests (and the broker) here.
    me = f"{os.geteuid()}:{os.getegid()}"
    script = script.replace("chown mosquitto:mosquitto", f"chown {me}")
    completed = subprocess.run(
        ["sh", "-ec", script],
        env={"PATH": os.environ["PATH"], **compose_environment("mosquitto-passwd")},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    password_file = directory / "passwd"
    assert password_file.stat().st_mode & 0o077 == 0, "the password file is readable by others"
    assert [path.name for path in directory.iterdir()] == ["passwd"]
    text = password_file.read_text()
    for password in example_variables().values():
        assert password not in text, "a password is stored in clear"
    return password_file


class RepoBroker:
    """Mosquitto run with the repo's config, moved to free loopback ports and tmp_path."""

    def __init__(self, workdir: Path) -> None:
        """Write the rewritten config and the password file and start mosquitto."""
        self.port = free_port()
        self.health_port = free_port()
        self.data_dir = workdir / "data"
        self.log_file = workdir / "log" / "mosquitto.log"
        self.stdout_file = workdir / "stdout.log"
        self.data_dir.mkdir()
        self.log_file.parent.mkdir()
        auth_dir = workdir / "auth"
        auth_dir.mkdir()
        self.password_file = write_password_file(auth_dir)
        config = workdir / "mosquitto.conf"
        config.write_text(self.rewrite(BROKER_CONF.read_text()))
        with self.stdout_file.open("wb") as stdout:
            self.process = subprocess.Popen(
                [MOSQUITTO, "-c", str(config)], stdout=stdout, stderr=subprocess.STDOUT
            )

    def rewrite(self, text: str) -> str:
        """Point listeners, persistence, log, password and ACL files at this test's."""
        replacements = {
            ("listener", CLIENT_PORT): f"listener {self.port} 127.0.0.1",
            ("listener", HEALTH_PORT): f"listener {self.health_port} 127.0.0.1",
            ("persistence_location",): f"persistence_location {self.data_dir}/",
            ("log_dest", "file"): f"log_dest file {self.log_file}",
            ("password_file",): f"password_file {self.password_file}",
        }
        lines = []
        for line in text.splitlines():
            words = tuple(line.split())
            if words[:1] == ("acl_file",):
                # The repo file compose mounts at that path.
                lines.append(f"acl_file {host_file('mosquitto', words[1])}")
                continue
            key = words[:1] if words[:1] in replacements else words[:2]
            lines.append(replacements.pop(key, line))
        assert not replacements, f"compose.conf lacks {sorted(replacements)}"
        # Started as root, mosquitto drops to the `mosquitto` user, which cannot
        # write to tmp_path; keep whoever runs the tests (ignored unless root).
        lines.insert(0, f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        return "\n".join(lines) + "\n"

    def wait_until_listening(self, timeout: float = 10) -> None:
        """Poll until TCP connects succeed; fail if mosquitto exits or times out."""
        deadline = time.monotonic() + timeout
        for port in (self.port, self.health_port):
            while True:
                if self.process.poll() is not None:
                    pytest.fail(f"mosquitto exited: {self.stdout_file.read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail("mosquitto did not start listening")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                except ConnectionRefusedError:
                    time.sleep(0.01)  # poll interval: nothing to wait on but the port
                else:
                    break

    def stop(self) -> int:
        """SIGTERM by PID (mosquitto saves persistence then) and wait for the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout=10)


@pytest.fixture
def repo_broker(tmp_path: Path) -> Iterator[RepoBroker]:
    """The repo's compose.conf running on free ports, stopped after the test."""
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


def mqtt(tool: str, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """Run mosquitto_pub or mosquitto_sub against 127.0.0.1:``port``."""
    executable = shutil.which(tool) or pytest.fail(f"{tool} not installed")
    return subprocess.run(
        [executable, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )


def login(user: str) -> list[str]:
    """mosquitto_pub/sub options to log in as ``user`` with .env.example's password."""
    return ["-u", user, "-P", example_variables()[f"MQTT_{user.upper()}_PASSWORD"]]


def test_mosquitto_conf_runs_and_passes_its_healthcheck(repo_broker: RepoBroker) -> None:
    check = run_healthcheck("mosquitto", p=str(repo_broker.health_port))
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip().endswith("seconds")
    assert repo_broker.stop() == 0
    assert "mosquitto version" in repo_broker.log_file.read_text()
    assert "mosquitto version" in repo_broker.stdout_file.read_text()
    assert (repo_broker.data_dir / "mosquitto.db").exists(), "persistence was not saved"


def test_broker_refuses_anonymous_and_wrong_passwords(repo_broker: RepoBroker) -> None:
    topic = ["-t", "iot/gateway/status", "-C", "1", "-W", "3"]
    anonymous = mqtt("mosquitto_sub", repo_broker.port, *topic)
    assert anonymous.returncode != 0
    assert "not authorised" in anonymous.stderr.lower(), anonymous.stderr
    wrong = mqtt("mosquitto_sub", repo_broker.port, "-u", "gateway", "-P", "wrong", *topic)
    assert wrong.returncode != 0
    assert "not authorised" in wrong.stderr.lower(), wrong.stderr
    # The healthcheck's anonymous access is for its own listener only.
    sys_topic = ["-t", "$SYS/broker/uptime", "-C", "1", "-W", "3"]
    assert mqtt("mosquitto_sub", repo_broker.port, *sys_topic).returncode != 0


def test_broker_accepts_the_compose_users_within_the_acl(repo_broker: RepoBroker) -> None:
    published = mqtt(
        "mosquitto_pub",
        repo_broker.port,
        *login("gateway"),
        *["-t", "iot/gateway/status", "-r", "-q", "1", "-m", "online"],
    )
    assert published.returncode == 0, published.stderr
    read = mqtt(
        "mosquitto_sub",
        repo_broker.port,
        *login("client"),
        *["-t", "iot/gateway/status", "-C", "1", "-W", "3"],
    )
    assert read.returncode == 0, read.stderr
    assert read.stdout.strip() == "online"
    # The healthcheck listener is anonymous, but reads $SYS only.
    anonymous = mqtt("mosquitto_sub", repo_broker.health_port, "-t", "iot/#", "-C", "1", "-W", "2")
    assert anonymous.stdout == ""
    assert anonymous.returncode != 0
    # And may not write: a faked status is dropped.
    faked = mqtt(
        "mosquitto_pub",
        repo_broker.health_port,
        *["-t", "iot/gateway/status", "-r", "-q", "1", "-m", "offline"],
    )
    assert faked.returncode == 0, faked.stderr  # the broker drops it silently
    read = mqtt(
        "mosquitto_sub",
        repo_broker.port,
        *login("client"),
        *["-t", "iot/gateway/status", "-C", "1", "-W", "3"],
    )
    assert read.stdout.strip() == "online"


def test_gateway_healthcheck_follows_the_gateway_status(
    repo_broker: RepoBroker, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    shutil.copy(DEMO_CONFIG, config)
    # As in the container: the image's GATEWAY_CONFIG and the compose environment
    # (username, and the password file of the secret made from a .env copied from
    # .env.example), with the broker here instead of the `mosquitto` service.
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    compose_env = container_environment("gateway", secrets_dir)
    password_file = Path(compose_env["GATEWAY_MQTT__PASSWORD_FILE"])
    assert password_file.read_text() == example_variables()["MQTT_GATEWAY_PASSWORD"]
    assert not [name for name in compose_env if name.endswith("PASSWORD")]
    env = clean_env(
        **{
            **compose_env,
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
    assert "gateway" in repo_broker.log_file.read_text()  # it logged in as gateway
