"""The production broker config in mosquitto/secure/: logins, the ACL and TLS, run for real.

Each test runs Mosquitto with the repo's secure config, its listeners moved to
free loopback ports and its files into tmp_path, a password file made with
mosquitto_passwd and certificates from a test CA made with openssl.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import aiomqtt
import pytest
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import AdapterRegistry, load_config, running_gateway
from tests.broker import MOSQUITTO, free_port
from tests.conftest import FAST, deep_merge, gateway_process

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import TracebackType

    from gateway import Config
    from tests.conftest import GatewayProcess

ROOT = Path(__file__).resolve().parent.parent
SECURE = ROOT / "mosquitto" / "secure"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
# More client logins: the broker binds client ids to usernames, so programs
# connected at once need a login each (the ACL's `client` block, repeated).
MORE_CLIENTS = ("client2", "client3")
USERS = ("gateway", "client", *MORE_CLIENTS)
DEVICES = [{"id": "light", "type": "simulated.light"}]

# --- certificates -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pki:
    """A test CA, a server certificate it signed, and an unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    other_ca: Path


def openssl(*args: str) -> None:
    """Run openssl, failing the test with its output if it fails."""
    done = subprocess.run([OPENSSL, *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-days", "2", "-subj", f"/CN={name}"),
        *("-keyout", str(key), "-out", str(cert)),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Certificates shared by this module's tests (they are only read)."""
    directory = tmp_path_factory.mktemp("pki")
    ca, ca_key = make_ca(directory, "test-ca")
    other_ca, _ = make_ca(directory, "other-ca")
    cert, key = directory / "server.crt", directory / "server.key"
    openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-days", "2", "-subj", "/CN=localhost"),
        *("-CA", str(ca), "-CAkey", str(ca_key), "-keyout", str(key), "-out", str(cert)),
        *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        *("-addext", "basicConstraints=critical,CA:FALSE"),
        *("-addext", "extendedKeyUsage=serverAuth"),
    )
    return Pki(ca=ca, server_cert=cert, server_key=key, other_ca=other_ca)


def with_more_clients(acl: str) -> str:
    """The ACL, plus its ``user client`` block again for each of ``MORE_CLIENTS``."""
    start = acl.index("user client\n")
    block = acl[start : acl.index("# ---", start)]
    assert "topic write iot/+/command" in block, block
    extra = [block.replace("user client", f"user {name}", 1) for name in MORE_CLIENTS]
    return "\n".join([acl, *extra])


# --- the broker ---------------------------------------------------------------------


class SecureBroker:
    """Mosquitto with mosquitto/secure/'s config and ACL, moved into ``workdir``."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, pki: Pki) -> None:
        """Write the password file, the ACL and the rewritten config; call ``start``."""
        self.port = free_port()
        self.tls_port = free_port()
        self.workdir = workdir
        self.pki = pki
        self.passwords = {user: secrets.token_hex(16) for user in USERS}
        self.passwd_file = workdir / "passwd"
        for index, (user, password) in enumerate(self.passwords.items()):
            create = ["-c"] if index == 0 else []
            subprocess.run(
                [MOSQUITTO_PASSWD, *create, "-b", str(self.passwd_file), user, password],
                check=True,
                capture_output=True,
            )
        self.acl_file = workdir / "acl"
        self.acl_file.write_text(with_more_clients((SECURE / "acl").read_text()))
        self.data_dir = workdir / "data"
        self.data_dir.mkdir()
        self.log_file = workdir / "mosquitto.log"
        self.stdout_file = workdir / "stdout.log"
        self.config_file = workdir / "mosquitto.conf"
        self.config_file.write_text(self.rewrite((SECURE / "mosquitto.conf").read_text()))
        self.process: subprocess.Popen[bytes] | None = None

    def rewrite(self, text: str) -> str:
        """Replace the ports and paths only; every other line is kept as it is."""
        replacements = {
            ("listener", "1883"): f"listener {self.port} {self.host}",
            ("listener", "8883"): f"listener {self.tls_port} {self.host}",
            ("password_file",): f"password_file {self.passwd_file}",
            ("acl_file",): f"acl_file {self.acl_file}",
            ("persistence_location",): f"persistence_location {self.data_dir}/",
            ("cafile",): f"cafile {self.pki.ca}",
            ("certfile",): f"certfile {self.pki.server_cert}",
            ("keyfile",): f"keyfile {self.pki.server_key}",
            ("log_dest", "file"): f"log_dest file {self.log_file}",
        }
        lines = []
        for line in text.splitlines():
            words = tuple(line.split())
            key = words[:1] if words[:1] in replacements else words[:2]
            lines.append(replacements.pop(key, line))
        assert not replacements, f"mosquitto/secure/mosquitto.conf lacks {sorted(replacements)}"
        # As root, mosquitto would drop to user `mosquitto`, who cannot read tmp_path.
        lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Start mosquitto and wait until both listeners accept connections."""
        with self.stdout_file.open("wb") as stdout:
            self.process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config_file)], stdout=stdout, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        waiting = [self.port, self.tls_port]
        while waiting:
            if self.process.poll() is not None:
                pytest.fail(f"mosquitto exited: {self.stdout_file.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"mosquitto is not listening on {waiting}")
            try:
                socket.create_connection((self.host, waiting[0]), timeout=0.5).close()
            except OSError:
                time.sleep(0.01)  # poll interval: nothing to wait on but the port
            else:
                waiting.pop(0)

    def stop(self) -> None:
        """Stop by PID."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def secure_broker(tmp_path: Path, pki: Pki) -> Iterator[SecureBroker]:
    """The repo's secure config running on two free loopback ports."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = SecureBroker(workdir, pki)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


# --- MQTT test clients ------------------------------------------------------------


def mqtt_client(
    broker: SecureBroker,
    username: str | None,
    password: str | None = None,
    *,
    ca: Path | None = None,
) -> aiomqtt.Client:
    """An MQTT 5 client for the plain listener, or the TLS one when ``ca`` is given."""
    tls = aiomqtt.TLSParameters(ca_certs=str(ca)) if ca is not None else None
    return aiomqtt.Client(
        "localhost" if ca is not None else broker.host,
        broker.tls_port if ca is not None else broker.port,
        username=username,
        password=password,
        identifier=f"test-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_params=tls,
        keepalive=5,
    )


@dataclass(frozen=True, slots=True)
class Seen:
    """A message a ``User`` received."""

    topic: str
    payload: bytes
    retain: bool
    correlation_data: bytes | None


@dataclass
class User:
    """One logged-in connection of a broker user: subscribes, records, publishes."""

    client: aiomqtt.Client
    messages: list[Seen] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        """Connect (raising aiomqtt.MqttError if refused) and start recording."""
        await self.client.__aenter__()
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop recording and disconnect."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.client.__aexit__(exc_type, exc, tb)

    async def _read(self) -> None:
        async for message in self.client.messages:
            payload = message.payload
            props = message.properties
            self.messages.append(
                Seen(
                    topic=message.topic.value,
                    payload=payload if isinstance(payload, bytes) else str(payload).encode(),
                    retain=message.retain,
                    correlation_data=getattr(props, "CorrelationData", None) if props else None,
                )
            )
            self._arrived.set()

    async def subscribe(self, *topics: str) -> None:
        """Subscribe at QoS 1; fails the test if the broker refuses any."""
        for topic in topics:
            granted = await self.client.subscribe(topic, qos=1)
            codes = [code if isinstance(code, int) else code.value for code in granted]
            assert all(code < 0x80 for code in codes), (topic, codes)

    async def publish(
        self,
        topic: str,
        payload: str | bytes,
        *,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        """Publish at QoS 1 (the broker acknowledges even what the ACL drops)."""
        properties = None
        if response_topic is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.ResponseTopic = response_topic
            if correlation_data is not None:
                properties.CorrelationData = correlation_data
        await self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)

    async def wait_for(
        self, match: Callable[[Seen], bool], timeout: float = 10, *, count: int = 1
    ) -> Seen:
        """The ``count``-th recorded message that matches, waiting for it if need be."""
        async with asyncio.timeout(timeout):
            while True:
                found = [m for m in self.messages if match(m)]
                if len(found) >= count:
                    return found[count - 1]
                self._arrived.clear()
                await self._arrived.wait()

    def on(self, topic: str) -> list[Seen]:
        """Every message recorded on ``topic``."""
        return [m for m in self.messages if m.topic == topic]


def login(broker: SecureBroker, username: str, *, ca: Path | None = None) -> User:
    """A connection for one of the broker's users, with its password."""
    return User(mqtt_client(broker, username, broker.passwords[username], ca=ca))


def result_for(command_id: str) -> Callable[[Seen], bool]:
    """Matches the result of the command ``command_id`` on its result topic."""

    def match(message: Seen) -> bool:
        return message.topic.endswith("/result") and json.loads(message.payload)["id"] == (
            command_id
        )

    return match


# --- the gateway ------------------------------------------------------------------


def gateway_data(broker: SecureBroker, *, ca: Path | None = None, **sections: Any) -> Any:
    """Config data logging in as ``gateway``, over TLS to ``localhost`` when ``ca`` is given."""
    mqtt: dict[str, Any] = {"host": broker.host, "port": broker.port, "username": "gateway"}
    if ca is not None:
        mqtt |= {"host": "localhost", "port": broker.tls_port, "tls": {"ca_file": str(ca)}}
    data = deep_merge(FAST, {"mqtt": mqtt})
    data["devices"] = DEVICES
    return deep_merge(data, sections)


def write_yaml(path: Path, data: Any) -> Path:
    """Write config data and return the path."""
    path.write_text(yaml.safe_dump(data))
    return path


def gateway_config(broker: SecureBroker, tmp_path: Path, *, ca: Path | None = None) -> Config:
    """A validated config for an in-process gateway, with the gateway user's password."""
    data = gateway_data(broker, ca=ca)
    data["mqtt"]["password"] = broker.passwords["gateway"]
    path = write_yaml(tmp_path / "config.yaml", data)
    return load_config(path, AdapterRegistry.from_entry_points())


async def wait_for_log(
    process: GatewayProcess, pattern: str, *, count: int = 1, timeout: float = 10
) -> list[re.Match[str]]:
    """Poll the process's log until ``count`` lines match ``pattern``; fail if it exits."""
    regex = re.compile(pattern, re.IGNORECASE)
    deadline = time.monotonic() + timeout
    while True:
        found = [m for line in process.log().splitlines() if (m := regex.search(line))]
        if len(found) >= count:
            return found
        assert process.popen.poll() is None, f"the gateway exited:\n{process.log()}"
        assert time.monotonic() < deadline, f"{count} x {pattern!r} not logged:\n{process.log()}"
        await asyncio.sleep(0.05)  # poll interval for the log file, bounded by the deadline


# --- the tests ----------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["plain", "tls"])
async def test_gateway_logs_in_and_answers_the_client_user(
    secure_broker: SecureBroker, tmp_path: Path, pki: Pki, transport: str
) -> None:
    ca = pki.ca if transport == "tls" else None
    config = gateway_config(secure_broker, tmp_path, ca=ca)
    async with login(secure_broker, "client", ca=ca) as client:
        await client.subscribe("iot/#", "replies/client/#")
        async with running_gateway(config, AdapterRegistry.from_entry_points()):
            await client.wait_for(
                lambda m: m.topic == "iot/gateway/status" and m.payload == b"online"
            )
            await client.wait_for(
                lambda m: m.topic == "iot/light/availability" and m.payload == b"online"
            )
            command = {"action": "turn_on", "id": "on-1"}
            await client.publish("iot/light/command", json.dumps(command))
            result = json.loads((await client.wait_for(result_for("on-1"))).payload)
            assert result["status"] == "ok", result
            await client.wait_for(
                lambda m: m.topic == "iot/light/state" and json.loads(m.payload)["power"] == "on"
            )
            # The gateway may answer on the client's own reply topic too.
            await client.publish(
                "iot/light/command",
                json.dumps({"action": "turn_off", "id": "off-1"}),
                response_topic="replies/client/app",
                correlation_data=b"corr-1",
            )
            reply = await client.wait_for(lambda m: m.topic == "replies/client/app")
            assert json.loads(reply.payload)["status"] == "ok"
            assert reply.correlation_data == b"corr-1"
    # It logged in as `gateway` on the listener the config names.
    port = secure_broker.tls_port if ca is not None else secure_broker.port
    broker_log = secure_broker.log_file.read_text()
    # Its client id is its username (use_username_as_clientid), not mqtt.client_id.
    assert re.search(rf"on port {port}\.\n.*as gateway \(.*u'gateway'\)", broker_log), broker_log


# What the MQTT session logs for each failed attempt (the transport's error, then the delay).
REFUSED = (
    r"MQTT: .*(not authori[sz]ed|bad user ?name or password).*; "
    r"reconnecting to 127\.0\.0\.1:\d+ in (?P<delay>\d+\.\d) s"
)
CERTIFICATE = (
    r"MQTT: .*certificate verify failed.*; "
    r"reconnecting to localhost:\d+ in (?P<delay>\d+\.\d) s"
)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        pytest.param("wrong password", REFUSED, id="wrong-password"),
        pytest.param("wrong CA", CERTIFICATE, id="wrong-ca"),
    ],
)
async def test_refused_login_is_logged_and_retried_without_crashing(
    secure_broker: SecureBroker, tmp_path: Path, pki: Pki, case: str, expected: str
) -> None:
    password, wrong = secure_broker.passwords["gateway"], secrets.token_hex(16)
    if case == "wrong password":
        data, password = gateway_data(secure_broker), wrong
    else:
        data = gateway_data(secure_broker, ca=pki.other_ca)
    data["logging"] = {"level": "DEBUG"}
    config_path = write_yaml(tmp_path / "config.yaml", data)
    with gateway_process(config_path, GATEWAY_MQTT__PASSWORD=password) as process:
        lines = await wait_for_log(process, expected, count=3)
        # Backoff between mqtt.reconnect.min_delay and max_delay (FAST: 0.05 to 0.5 s).
        delays = [float(match["delay"]) for match in lines]
        assert all(delay <= 0.5 for delay in delays), delays
        assert process.popen.poll() is None  # still running, still retrying
        process.send_signal(signal.SIGTERM)
        assert await process.wait(15) == 0, process.log()
        log = process.log()
    assert "Traceback" not in log, log
    assert secure_broker.passwords["gateway"] not in log
    assert wrong not in log


@pytest.mark.parametrize("transport", ["plain", "tls"])
@pytest.mark.parametrize("who", ["anonymous", "unknown user", "wrong password"])
async def test_only_known_users_with_their_password_get_in(
    secure_broker: SecureBroker, pki: Pki, transport: str, who: str
) -> None:
    ca = pki.ca if transport == "tls" else None
    credentials = {
        "anonymous": (None, None),
        "unknown user": ("intruder", secrets.token_hex(8)),
        "wrong password": ("client", secrets.token_hex(8)),
    }
    with pytest.raises(aiomqtt.MqttCodeError) as refused:
        async with mqtt_client(secure_broker, *credentials[who], ca=ca):
            pass
    # MQTT 5 CONNACK: 0x86 bad user name or password, 0x87 not authorized.
    rc = refused.value.rc
    assert rc is not None
    assert (rc if isinstance(rc, int) else rc.value) in {0x86, 0x87}, refused.value
    # The same listener lets a known user in with the right password.
    async with login(secure_broker, "client", ca=ca) as client:
        await client.subscribe("iot/#")


@pytest.mark.parametrize(
    ("topic", "forged"),
    [
        ("iot/light/state", b'{"power": "on", "brightness": 1}'),
        ("iot/light/availability", b"offline"),
        ("iot/gateway/status", b"offline"),
        ("iot/light/result", b'{"id": "forged", "status": "ok"}'),
        ("iot/gateway/devices", b"[]"),
    ],
    ids=["state", "availability", "status", "result", "devices"],
)
async def test_client_user_cannot_publish_what_the_gateway_publishes(
    secure_broker: SecureBroker, tmp_path: Path, topic: str, forged: bytes
) -> None:
    config = gateway_config(secure_broker, tmp_path)
    control = "iot/nodevice/command"
    async with (
        login(secure_broker, "client") as watcher,
        login(secure_broker, "client2") as forger,
    ):
        await watcher.subscribe("iot/#")
        async with running_gateway(config, AdapterRegistry.from_entry_points()):
            await watcher.wait_for(lambda m: m.topic == "iot/light/state")
            await watcher.wait_for(lambda m: m.topic == "iot/light/availability")
            await forger.publish(topic, forged, retain=topic != "iot/light/result")
            # One connection's messages arrive in order: once the control message
            # (which the client user may send) is here, the forged one would be too.
            await forger.publish(control, b"marker")
            await watcher.wait_for(lambda m: m.topic == control)
            assert all(m.payload != forged for m in watcher.on(topic)), watcher.on(topic)
            # And the retained value is still the gateway's.
            expected = watcher.on(topic)[-1].payload if topic != "iot/light/result" else None
            async with login(secure_broker, "client3") as fresh:
                await fresh.subscribe(topic, control)
                await forger.publish(control, b"marker 2")
                await fresh.wait_for(lambda m: m.topic == control)
                retained = [m.payload for m in fresh.on(topic)]
                assert retained == ([expected] if expected is not None else []), retained


def impostor(broker: SecureBroker, client_id: str) -> User:
    """The ``client`` user, connecting with someone else's client id and session."""
    return User(
        aiomqtt.Client(
            broker.host,
            broker.port,
            username="client",
            password=broker.passwords["client"],
            identifier=client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=session_properties(),
            keepalive=5,
        )
    )


def session_properties() -> Properties:
    """CONNECT properties asking for a session that outlives the connection."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    return properties


async def test_another_user_with_the_gateways_client_id_gets_neither_session_nor_commands(
    secure_broker: SecureBroker, tmp_path: Path
) -> None:
    config = gateway_config(secure_broker, tmp_path)
    client_id = config.settings.mqtt.client_id
    registry = AdapterRegistry.from_entry_points()
    async with running_gateway(config, registry), login(secure_broker, "client") as sender:
        await sender.subscribe("iot/#")
        await sender.wait_for(
            lambda m: m.topic == "iot/light/availability" and m.payload == b"online"
        )
    # The gateway is away; commands wait in its persistent session.
    async with login(secure_broker, "client") as sender:
        for index in range(5):
            await sender.publish(
                "iot/light/command", json.dumps({"action": "toggle", "id": f"q{index}"})
            )
    # Another user connects first with the gateway's client id, to take its session.
    thief = impostor(secure_broker, client_id)
    await thief.__aenter__()
    await thief.subscribe("iot/+/result")
    async with running_gateway(config, registry) as gateway:
        for index in range(5):  # every queued command reached the gateway
            await thief.wait_for(result_for(f"q{index}"))
        await thief.__aexit__(None, None, None)
        assert not [m for m in thief.messages if m.topic.endswith("/command")]
        # Connecting again with the gateway's id, while it runs, does not disconnect it.
        async with impostor(secure_broker, client_id) as again:
            await again.subscribe("iot/light/result")
            await again.publish("iot/light/command", json.dumps({"action": "toggle", "id": "n"}))
            await again.wait_for(result_for("n"))
        assert gateway.session.reconnects == 0


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_password_never_appears_in_the_log_even_at_debug(
    secure_broker: SecureBroker, tmp_path: Path, log_format: str
) -> None:
    password = secure_broker.passwords["gateway"]
    data = gateway_data(secure_broker, logging={"level": "DEBUG", "format": log_format})
    config_path = write_yaml(tmp_path / "config.yaml", data)
    async with login(secure_broker, "client") as client:
        await client.subscribe("iot/#")
        with gateway_process(config_path, GATEWAY_MQTT__PASSWORD=password) as process:
            await client.wait_for(
                lambda m: m.topic == "iot/light/availability" and m.payload == b"online"
            )
            await client.publish("iot/light/command", json.dumps({"action": "x", "id": "c1"}))
            result = json.loads((await client.wait_for(result_for("c1"))).payload)
            assert result["error"]["code"] == "unknown_action"
            process.send_signal(signal.SIGTERM)
            assert await process.wait(15) == 0, process.log()
    lines = process.log().splitlines()
    if log_format == "json":
        entries = [json.loads(line) for line in lines]
        assert any(entry["level"] == "DEBUG" for entry in entries)
    else:
        assert any(" DEBUG " in line for line in lines)
    # The client library's packet log, where a login would show, is included.
    assert any("Sending CONNECT" in line for line in lines), lines
    assert not [line for line in lines if password in line]


async def test_reply_topics_are_private_and_denied_replies_are_dropped(
    secure_broker: SecureBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = gateway_config(secure_broker, tmp_path)
    async with login(secure_broker, "client") as client:
        # Granted, but the ACL delivers only the client's own replies/client/...
        await client.subscribe("iot/#", "replies/#")
        async with running_gateway(config, AdapterRegistry.from_entry_points()) as gateway:
            await client.wait_for(
                lambda m: m.topic == "iot/light/availability" and m.payload == b"online"
            )
            reply_topics = {
                "theirs": "replies/gateway/x",  # another user's replies
                "denied": "elsewhere/x",  # the gateway may not write there
                "mine": "replies/client/x",
            }
            for command_id, reply_topic in reply_topics.items():
                command = {"action": "toggle", "id": command_id}
                await client.publish(
                    "iot/light/command", json.dumps(command), response_topic=reply_topic
                )
            # Commands to one device are answered in order, so once the last
            # reply is here, the others have been published (and filtered).
            await client.wait_for(lambda m: m.topic == "replies/client/x")
            for command_id in reply_topics:
                await client.wait_for(result_for(command_id))
            assert [m.topic for m in client.messages if m.topic.startswith("replies/")] == [
                "replies/client/x"
            ]
            # A reply the broker refused does not disturb the gateway's connection.
            await client.publish("iot/light/command", json.dumps({"action": "toggle", "id": "n"}))
            await client.wait_for(result_for("n"))
            assert gateway.session.reconnects == 0
    # The broker's refusal (PUBACK reason "Not authorized") is logged, once.
    refused = [r.getMessage() for r in caplog.records if "refused our message" in r.getMessage()]
    assert len(refused) == 1, refused
    assert "'elsewhere/x'" in refused[0]


async def test_a_wildcard_response_topic_does_not_crash_the_gateway(
    secure_broker: SecureBroker, tmp_path: Path
) -> None:
    config = gateway_config(secure_broker, tmp_path)
    async with login(secure_broker, "client") as client:
        await client.subscribe("iot/#")
        async with running_gateway(config, AdapterRegistry.from_entry_points()):
            await client.wait_for(
                lambda m: m.topic == "iot/light/availability" and m.payload == b"online"
            )
            command = {"action": "toggle", "id": "wild"}
            await client.publish(
                "iot/light/command", json.dumps(command), response_topic="replies/client/#"
            )
            await client.wait_for(result_for("wild"))
            await client.publish("iot/light/command", json.dumps({"action": "toggle", "id": "n"}))
            result = json.loads((await client.wait_for(result_for("n"))).payload)
            assert result["status"] == "ok"


async def test_a_response_topic_cannot_make_the_gateway_write_a_state_topic(
    secure_broker: SecureBroker, tmp_path: Path
) -> None:
    config = gateway_config(secure_broker, tmp_path)
    async with login(secure_broker, "client") as client:
        await client.subscribe("iot/#", "replies/client/#")
        async with running_gateway(config, AdapterRegistry.from_entry_points()):
            await client.wait_for(
                lambda m: m.topic == "iot/light/availability" and m.payload == b"online"
            )
            for command_id, reply_topic in (("a", "iot/light/state"), ("b", "replies/client/x")):
                command = {"action": "toggle", "id": command_id}
                await client.publish(
                    "iot/light/command", json.dumps(command), response_topic=reply_topic
                )
            await client.wait_for(lambda m: m.topic == "replies/client/x")
            states = [json.loads(m.payload) for m in client.on("iot/light/state")]
            assert all(set(state) == {"power", "brightness"} for state in states), states


async def test_home_assistant_discovery_works_under_the_acl(
    secure_broker: SecureBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A per-entity config an earlier version left, under the gateway's login.
    legacy = "homeassistant/light/iot-gateway/light_light/config"
    earlier_config = json.dumps({"unique_id": "iot-gateway_light_light"})
    async with login(secure_broker, "gateway") as earlier:
        await earlier.publish(legacy, earlier_config, retain=True)
    data = gateway_data(secure_broker, homeassistant={"discovery": True})
    data["mqtt"]["password"] = secure_broker.passwords["gateway"]
    path = write_yaml(tmp_path / "ha.yaml", data)
    config = load_config(path, AdapterRegistry.from_entry_points())
    light = "homeassistant/device/iot-gateway_light/config"

    def light_config(message: Seen) -> bool:
        return message.topic == light and bool(message.payload)

    async with login(secure_broker, "client") as home_assistant:  # as the ACL says HA logs in
        await home_assistant.subscribe("homeassistant/#")
        async with running_gateway(config, AdapterRegistry.from_entry_points()):
            # Sooner than the probe's timeout: the gateway read its own probe back.
            await home_assistant.wait_for(light_config, 4)
            await home_assistant.wait_for(lambda m: m.topic == legacy and m.payload == b"")
            migrate = b'{"migrate_discovery": true}'
            assert any(m.topic == legacy and m.payload == migrate for m in home_assistant.messages)
            await home_assistant.publish("homeassistant/status", "online")  # HA's birth
            await home_assistant.wait_for(light_config, count=2)
    assert "did not come back" not in caplog.text
