"""``iot-gateway send`` and ``iot-gateway watch``, run as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from tests.broker import Broker, free_port
from tests.conftest import config_data, started

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from gateway import Config
    from tests.probe import Probe

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
CLIENT_PASSWORD = "client-secret"  # noqa: S105 - a test broker's, made here


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``python -m gateway ARGS``; return exit code, stdout, stderr.

    Only ``env``'s ``GATEWAY_*`` variables reach it, none of the caller's.
    """
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=inherited | (env or {}),
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def at(broker: Broker) -> tuple[str, ...]:
    """The options that point a tool at ``broker``."""
    return ("--host", broker.host, "--port", str(broker.port))


async def test_send_prints_the_result_and_exits_by_its_status(
    broker: Broker,
    probe: Probe,
    make_config: Callable[..., Config],
    write_config: Callable[[dict[str, Any]], Path],
) -> None:
    path = write_config(config_data(broker))
    async with started(make_config(), probe):
        code, out, _ = await cli("send", "-c", str(path), "light", "set_brightness", "level=40")
        assert code == 0
        result = json.loads(out)
        assert (result["status"], result["state"]["brightness"]) == ("ok", 40)
        assert result["id"].startswith("cli-")
        code, out, _ = await cli("send", "-c", str(path), "light", "explode")
        assert code == 1
        assert json.loads(out)["error"]["code"] == "unknown_action"


async def test_send_without_a_gateway_exits_69(
    broker: Broker, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    path = write_config(config_data(broker))
    code, _, err = await cli("send", "-c", str(path), "--wait", "0.5", "light", "turn_on")
    assert code == 69
    assert "no result within 0.5 s" in err


async def test_watch_prints_results_state_and_availability(
    broker: Broker, probe: Probe, make_config: Callable[..., Config]
) -> None:
    watcher = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gateway", "watch", *at(broker)), stdout=asyncio.subprocess.PIPE
    )
    assert watcher.stdout is not None
    try:
        async with started(make_config(), probe):
            lines: list[str] = []
            async with asyncio.timeout(15):
                while not any("gateway" in line and "online" in line for line in lines):
                    lines.append((await watcher.stdout.readline()).decode())
                await probe.publish("iot/hub/command", "turn_on")
                while not any(" hub " in line and "result" in line for line in lines):
                    lines.append((await watcher.stdout.readline()).decode())
            result_line = next(line for line in lines if " hub " in line and "result" in line)
            assert "turn_on -> ok" in result_line
            assert any(" hub " in line and "availability" in line for line in lines)
    finally:
        watcher.kill()
        await watcher.wait()


async def test_send_needs_no_config_file_only_flags_or_environment(
    broker: Broker,
    probe: Probe,
    make_config: Callable[..., Config],
    write_config: Callable[[dict[str, Any]], Path],
) -> None:
    nowhere = write_config(config_data(broker, mqtt={"port": free_port()}))
    async with started(make_config(), probe):
        code, out, err = await cli("send", *at(broker), "light", "turn_on")
        assert (code, err) == (0, "")
        assert json.loads(out)["state"]["power"] == "on"
        environment = {"GATEWAY_MQTT__HOST": broker.host, "GATEWAY_MQTT__PORT": str(broker.port)}
        code, out, err = await cli("send", "hub", "toggle", env=environment)
        assert (code, err) == (0, "")
        assert json.loads(out)["state"]["power"] == "on"
        # The flags override the file, whose port nothing listens on.
        override = ("-c", str(nowhere), "--port", str(broker.port))
        code, out, err = await cli("send", *override, "light", "set_brightness", "level=7")
        assert (code, err) == (0, "")
        assert json.loads(out)["state"]["brightness"] == 7


async def test_send_as_the_gateways_own_user_warns(
    broker: Broker, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    path = write_config(config_data(broker, mqtt={"username": "gateway"}))
    send = ("send", "-c", str(path), "--wait", "0.1", "light", "turn_on")
    as_gateway, with_flag, with_environment = await asyncio.gather(
        cli(*send),
        cli(*send, "--username", "client"),
        cli(*send, env={"GATEWAY_MQTT__USERNAME": "client"}),
    )
    code, _, err = as_gateway
    assert code == 69
    warning, no_result = err.splitlines()
    assert warning.startswith("iot-gateway send: warning: 'gateway' is the gateway's own user")
    assert "use_username_as_clientid" in warning
    assert no_result == "iot-gateway send: no result within 0.1 s"
    for code, _, err in (with_flag, with_environment):
        assert (code, err) == (69, "iot-gateway send: no result within 0.1 s\n")


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker where user ``client`` (password ``CLIENT_PASSWORD``) may only read iot/#."""
    workdir = tmp_path / "acl-broker"
    workdir.mkdir()
    passwd, acl = workdir / "passwd", workdir / "acl"
    subprocess.run(
        [MOSQUITTO_PASSWD, "-c", "-b", str(passwd), "client", CLIENT_PASSWORD],
        check=True,
        capture_output=True,
    )
    acl.write_text("user client\ntopic read iot/#\n")
    # tests.broker's max_queued_messages 0 makes mosquitto 2.0 drop the connection
    # after a refusal's PUBACK (its queue is then "over quota"); production
    # brokers queue thousands (mosquitto/secure/mosquitto.conf).
    settings = f"password_file {passwd}\nacl_file {acl}\nmax_queued_messages 1000"
    server = Broker(workdir, extra=settings)
    server.start()
    yield server
    server.kill()


async def test_send_says_when_the_broker_refuses_the_command(acl_broker: Broker) -> None:
    code, out, err = await cli(
        "send",
        *at(acl_broker),
        "--username",
        "client",
        "light",
        "turn_on",
        env={"GATEWAY_MQTT__PASSWORD": CLIENT_PASSWORD},
    )
    assert (code, out) == (69, "")
    assert err == (
        "iot-gateway send: the broker refused the publish to iot/light/command:"
        " Not authorized; check the username and the broker's ACL\n"
    )


async def test_send_over_mqtt_3_says_a_refusal_may_be_why_no_result_came(
    acl_broker: Broker,
) -> None:
    code, _, err = await cli(
        *("send", *at(acl_broker), "--username", "client", "--wait", "0.1", "light", "turn_on"),
        env={"GATEWAY_MQTT__PASSWORD": CLIENT_PASSWORD, "GATEWAY_MQTT__PROTOCOL": "3.1.1"},
    )
    assert code == 69
    assert err == (
        "iot-gateway send: no result within 0.1 s"
        " (or the broker's ACL refused the command: MQTT 3.1.1 cannot say)\n"
    )


FORGED = {"id": "(the command's)", "device": "speaker", "action": "turn_on", "status": "ok"}


@pytest.mark.parametrize(
    "forged",
    [
        json.dumps(FORGED | {"action": "turn_off"}),
        json.dumps(FORGED | {"device": "light"}),
        "not JSON, nor a result",
    ],
    ids=["other-action", "other-device", "not-json"],
)
async def test_send_prints_only_its_own_devices_result_for_its_action(
    broker: Broker, probe: Probe, make_config: Callable[..., Config], forged: str
) -> None:
    # The speaker takes 1.5 s to answer: time to slip a forged result in first.
    speaker = {"id": "speaker", "type": "simulated.speaker", "latency": 1.5}
    async with started(make_config(devices=[speaker]), probe):
        sending = asyncio.create_task(cli("send", *at(broker), "speaker", "turn_on"))
        command = (await probe.wait_topic("iot/speaker/command"))[0].json
        forged = forged.replace("(the command's)", command["id"])
        await probe.publish("iot/speaker/result", forged)
        code, out, err = await sending
    # The broker passed the forgery on first, to the tool as to the probe.
    forgery, answer = probe.on("iot/speaker/result")
    assert forgery.text == forged
    assert (code, err) == (0, "")
    assert json.loads(out) == answer.json
    assert (answer.json["id"], answer.json["state"]["power"]) == (command["id"], "on")


async def test_send_into_a_reader_that_leaves_early_prints_no_traceback(
    broker: Broker, probe: Probe, make_config: Callable[..., Config]
) -> None:
    async with started(make_config(), probe):
        # `send ... | true`: the reader is gone before the result is printed.
        shell = f"{sys.executable} -m gateway send {' '.join(at(broker))} light toggle | true"
        done = await asyncio.create_subprocess_shell(
            f"set -o pipefail; {shell}",
            executable="/bin/bash",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        )
        out, err = await asyncio.wait_for(done.communicate(), 30)
    assert out == b""
    assert done.returncode == 0  # pipefail: send's own status, the result's (ok)
    assert b"Traceback" not in err, err.decode()
    assert b"BrokenPipe" not in err, err.decode()
