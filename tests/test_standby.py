"""Hot standby with real processes and a real Mosquitto (README "Hot standby")."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import aiomqtt
import pytest

from tests.broker import free_port
from tests.conftest import config_data, gateway_process
from tests.faultproxy import FaultProxy
from tests.test_reliability import COUNTER, ids, results_by_id
from tests.test_security import (
    MOSQUITTO_PASSWD,
    Pki,
    SecureBroker,
    gateway_data,
    login,
    pki,  # noqa: F401 - the fixture, used by shipped_broker
    result_for,
    wait_for_log,
    write_yaml,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from tests.broker import Broker
    from tests.conftest import GatewayProcess
    from tests.probe import Probe, Received

KEEPALIVE = 2
# The bound on a failover: 1.5 keepalives, and 2 s to take over.
FAILOVER_BOUND = 1.5 * KEEPALIVE + 2
STATUS, HEALTH = "iot/gateway/status", "iot/gateway/health"


def instance_config(broker: Broker, tmp_path: Path, name: str, **extra: Any) -> dict[str, Any]:
    """One instance of the group: its name and journal, the group's shared settings."""
    return config_data(
        broker,
        mqtt={"keepalive": KEEPALIVE},
        gateway={
            "instance": name,
            "journal": str(tmp_path / f"journal-{name}.sqlite3"),
            "queue_size": 5000,  # a takeover gets the whole backlog at once
        },
        standby={"enabled": True, "takeover_delay": 0.5},
        devices=[COUNTER],
        **extra,
    )


@contextlib.asynccontextmanager
async def group(
    broker: Broker,
    probe: Probe,
    tmp_path: Path,
    write_config: Callable[[dict[str, Any]], Path],
    *names: str,
    extra: dict[str, dict[str, Any]] | None = None,
) -> AsyncIterator[dict[str, GatewayProcess]]:
    """The named instances as real processes; killed at the end.

    The first is active (with its counter online) before the next starts, and
    each next one is watching before another starts.
    """
    with contextlib.ExitStack() as stack:
        instances = {}
        for name in names:
            sections = (extra or {}).get(name, {})
            path = write_config(instance_config(broker, tmp_path, name, **sections))
            instances[name] = stack.enter_context(gateway_process(path))
            if name == names[0]:
                await first_active(probe, name)
            else:
                await probe.wait_for(is_record(name, "standby"), timeout=15)
        yield instances


async def http_get(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` from an instance's HTTP server, retried while it (re)binds."""
    async with asyncio.timeout(10), aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"http://127.0.0.1:{port}{path}") as response:
                    return response.status, await response.text()
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)


def is_record(name: str, role: str) -> Callable[[Received], bool]:
    topic = f"iot/gateway/standby/{name}"
    return lambda m: m.topic == topic and bool(m.payload) and m.json["role"] == role


def is_active(name: str) -> Callable[[Received], bool]:
    return lambda m: m.topic == HEALTH and bool(m.payload) and m.json["instance"] == name


async def first_active(probe: Probe, name: str, *, timeout: float = 15) -> None:
    """``name`` is active, the other instances are watching."""
    await probe.wait_for(is_active(name), timeout=timeout)
    await probe.wait_for(lambda m: m.topic == "iot/c/availability" and m.payload == b"online")


async def all_answered(probe: Probe, sent: list[str], *, timeout: float) -> None:
    """Wait until every id in ``sent`` has a result on ``iot/c/result`` (one pass)."""
    waiting = set(sent)

    def answers_last(message: Received) -> bool:
        if message.topic == "iot/c/result":
            waiting.discard(message.json["id"])
        return not waiting

    await probe.wait_for(answers_last, timeout=timeout)


def last_counts(probe: Probe, start: int, end: int | None = None) -> int:
    """The counter's last published count among the messages in ``start:end``."""
    counts = [m.json["count"] for m in probe.messages[start:end] if m.topic == "iot/c/state"]
    return counts[-1] if counts else 0


async def test_the_active_killed_mid_stream_the_standby_answers_every_id_once(
    broker: Broker, probe: Probe, tmp_path: Path, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    sent = ids(2000)
    async with group(broker, probe, tmp_path, write_config, "a", "b") as instances:

        async def stream() -> None:
            for command_id in sent:
                await probe.publish("iot/c/command", {"action": "increment", "id": command_id})

        streaming = asyncio.create_task(stream())
        await probe.result("c", sent[500], timeout=30)
        instances["a"].send_signal(signal.SIGKILL)
        killed_at, kill_mark = time.monotonic(), len(probe.messages)
        await instances["a"].wait(10)
        takeover = await probe.wait_for(is_active("b"), since=kill_mark, timeout=FAILOVER_BOUND)
        b_mark = probe.messages.index(takeover[0])
        await probe.wait_for(lambda m: m.topic == "iot/c/result", since=b_mark, timeout=10)
        answered_in = time.monotonic() - killed_at
        await streaming
        await all_answered(probe, sent, timeout=30)
    assert answered_in < FAILOVER_BOUND, answered_in
    grouped = results_by_id(probe, "c")
    firsts = {cid: [r for r in grouped[cid] if not r["duplicate"]] for cid in sent}
    assert all(len(answers) == 1 for answers in firsts.values()), "an id answered twice, or never"
    failed = [a[0]["error"] for a in firsts.values() if a[0]["status"] != "ok"]
    assert not failed, failed[:3]
    ok = len(sent)
    # Each instance's counter counted what it ran: a's states all came before b's
    # health said it is active, b's after.
    executions = last_counts(probe, 0, b_mark) + last_counts(probe, b_mark)
    # A command a ran whose result died with it runs again on b (README "Hot standby").
    assert 0 <= executions - ok <= 1, (executions, ok)
    print(f"standby answered {answered_in:.2f} s after the SIGKILL; {executions - ok} ran twice")  # noqa: T201


async def test_a_planned_handover_sigterm_then_the_standby_answers(
    broker: Broker, probe: Probe, tmp_path: Path, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    port = free_port()
    http = {"host": "127.0.0.1", "port": port}
    extra = {"b": {"http": http}}
    async with group(broker, probe, tmp_path, write_config, "a", "b", extra=extra) as instances:
        # A standby is alive, not ready: probes send traffic to the active.
        assert (await http_get(port, "/healthz"))[0] == 200
        status, body = await http_get(port, "/readyz")
        assert (status, json.loads(body)["reason"]) == (503, "standby: instance a is active")
        metrics = (await http_get(port, "/metrics"))[1]
        assert "iot_gateway_active 0.0" in metrics
        before = await probe.command("c", {"action": "increment"})
        instances["a"].send_signal(signal.SIGTERM)
        stopped_at, mark = time.monotonic(), len(probe.messages)
        sent = ids(50)
        for command_id in sent:  # they wait in the session for the next active
            await probe.publish("iot/c/command", {"action": "increment", "id": command_id})
        assert await instances["a"].wait(10) == 0
        took_over = await probe.wait_for(is_active("b"), since=mark, timeout=FAILOVER_BOUND)
        handover = time.monotonic() - stopped_at
        results = [await probe.result("c", cid, since=mark) for cid in sent]
        assert "now active" in instances["b"].log()
        assert (await http_get(port, "/readyz"))[0] == 200
        metrics = (await http_get(port, "/metrics"))[1]
        assert "iot_gateway_active 1.0" in metrics
        assert 'iot_gateway_role_changes_total{role="active"} 1.0' in metrics
    assert before["status"] == "ok"
    errors = [r for r in results if r["status"] != "ok"]
    assert not errors, errors
    # a answered what it took before the signal, b the rest: each counter counted once.
    b_mark = probe.messages.index(took_over[0])
    by_b = {m.json["id"] for m in probe.messages[b_mark:] if m.topic == "iot/c/result"}
    by_a = [r["state"]["count"] for r in results if r["id"] not in by_b]
    assert by_a == list(range(2, 2 + len(by_a)))
    by_b_counts = [r["state"]["count"] for r in results if r["id"] in by_b]
    assert by_b_counts == list(range(1, len(by_b_counts) + 1))
    assert by_b_counts, "b answered nothing"
    assert handover < FAILOVER_BOUND
    print(f"planned handover took {handover:.2f} s")  # noqa: T201


async def test_an_active_whose_session_is_taken_over_steps_down(
    broker: Broker, probe: Probe, tmp_path: Path, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    async with group(broker, probe, tmp_path, write_config, "a", "b") as instances:
        mark = len(probe.messages)
        # An instance x, as a member would: its record first, then the shared client id.
        x_record = "iot/gateway/standby/x"
        await probe.publish(x_record, {"instance": "x", "role": "taking_over"}, retain=True)
        async with aiomqtt.Client(
            broker.host, broker.port, identifier="iot-gateway", protocol=aiomqtt.ProtocolVersion.V5
        ) as intruder:
            await intruder.publish(STATUS, b"online", qos=1, retain=True)
            health = {"instance": "x", "role": "active"}
            await intruder.publish(HEALTH, json.dumps(health).encode(), qos=1, retain=True)
            await probe.wait_for(is_record("a", "standby"), since=mark, timeout=10)
            await asyncio.sleep(3 * 0.5 * 2)  # every standby's turn, twice over
            # Nobody took the session back: the intruder still holds it.
            assert not [m for m in probe.messages[mark:] if is_active("a")(m) or is_active("b")(m)]
            await intruder.publish(STATUS, b"offline", qos=1, retain=True)
            await intruder.publish(x_record, b"", qos=1, retain=True)
        # x is gone: exactly one instance takes over. Having seen x active, a is
        # an ordinary standby again, so it goes first by name.
        await probe.wait_for(is_active("a"), since=mark, timeout=FAILOVER_BOUND)
        await asyncio.sleep(2)  # b's turn, and more
        actives = {
            m.json["instance"] for m in probe.messages[mark:] if m.topic == HEALTH and m.payload
        }
        assert actives == {"x", "a"}
        # Mosquitto 2.0 closes the socket before its 0x8E can be read: any reason will do.
        assert "instance a stepped down to standby" in instances["a"].log()
        assert "now active" not in instances["b"].log()


@pytest.fixture
def shipped_broker(tmp_path: Path, pki: Pki) -> Iterator[SecureBroker]:  # noqa: F811
    """mosquitto/secure/ as shipped, with the pair's watcher logins (the gateway's password)."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = SecureBroker(workdir, pki)
    for user in ("standby-a", "standby-b"):
        broker.passwords[user] = broker.passwords["gateway"]
        passwd = [MOSQUITTO_PASSWD, "-b", str(broker.passwd_file), user, broker.passwords[user]]
        subprocess.run(passwd, check=True, capture_output=True)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


async def test_a_pair_on_the_shipped_broker_with_a_watcher_login_each(
    shipped_broker: SecureBroker, tmp_path: Path
) -> None:
    """Client ids are logins there: each watcher logs in as itself, the active as `gateway`."""
    broker = shipped_broker

    def instance(name: str) -> Path:
        data = gateway_data(
            broker,
            mqtt={"keepalive": KEEPALIVE, "password": broker.passwords["gateway"]},
            gateway={"instance": name, "journal": str(tmp_path / f"journal-{name}.sqlite3")},
            standby={"enabled": True, "takeover_delay": 0.5, "username": f"standby-{name}"},
        )
        return write_yaml(tmp_path / f"{name}.yaml", data)

    async with login(broker, "client") as client:
        await client.subscribe("iot/#")
        with gateway_process(instance("a")) as a, gateway_process(instance("b")) as b:
            await client.wait_for(lambda m: m.topic == HEALTH and b'"instance": "a"' in m.payload)
            await client.wait_for(
                lambda m: m.topic.endswith("/standby/b") and b"standby" in m.payload
            )
            a.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            await client.wait_for(
                lambda m: m.topic == HEALTH and b'"instance": "b"' in m.payload,
                timeout=FAILOVER_BOUND,
            )
            await client.publish("iot/light/command", json.dumps({"action": "turn_on", "id": "1"}))
            result = json.loads((await client.wait_for(result_for("1"))).payload)
            answered_in = time.monotonic() - killed_at
            assert "not authorized" not in b.log().lower(), b.log()
    assert result["status"] == "ok", result
    assert answered_in < FAILOVER_BOUND


def logged_at(process: GatewayProcess, fragment: str) -> list[float]:
    """When ``process`` logged lines containing ``fragment`` (Unix time, from the log)."""
    times = []
    for line in process.log().splitlines():
        if fragment in line:
            # Naive local time: both logs come from this host's clock.
            stamp = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")  # noqa: DTZ007
            times.append(stamp.timestamp())
    return times


async def test_a_partitioned_active_steps_down_and_stays_standby_once_healed(
    broker: Broker, probe: Probe, tmp_path: Path, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    """a is cut off (a black hole): b takes over, a steps down within the bound."""
    async with FaultProxy(broker.port) as proxy:
        a_data = instance_config(broker, tmp_path, "a")
        a_data["mqtt"]["port"] = proxy.port
        with gateway_process(write_config(a_data)) as a:
            await first_active(probe, "a")
            with gateway_process(write_config(instance_config(broker, tmp_path, "b"))) as b:
                await probe.wait_for(is_record("b", "standby"))
                proxy.blackhole()
                cut_at, mark = time.monotonic(), len(probe.messages)
                # The broker hears nothing from a: after 1.5 keepalives (Mosquitto 2.0
                # checks every few seconds: 7-8 s here), a's wills.
                await probe.wait_for(is_active("b"), since=mark, timeout=20)
                failover = time.monotonic() - cut_at
                answer = await probe.command("c", {"action": "increment"})
                assert answer["status"] == "ok"
                await wait_for_log(a, "instance a stepped down", timeout=2 * FAILOVER_BOUND)
                await proxy.heal()
                # a's watcher comes back, sees b active, and a stays standby.
                await probe.wait_for(is_record("a", "standby"), since=mark, timeout=20)
                await asyncio.sleep(3 * 0.5 * 2)  # every turn, twice over
                assert len(logged_at(a, "is now active")) == 1
                assert len(logged_at(b, "is now active")) == 1
                [stepped_down] = logged_at(a, "stepped down")
                [took_over] = logged_at(b, "is now active")
    # Both were active at once no longer than the bound (README "Hot standby").
    overlap = stepped_down - took_over
    assert overlap < 1.5 * KEEPALIVE + 2, overlap
    print(f"b took over {failover:.2f} s after the cut; a stepped down {overlap:.2f} s after")  # noqa: T201


# Both started at the same moment, this many times (STANDBY_START_RUNS=20 for the 20).
START_RUNS = int(os.environ.get("STANDBY_START_RUNS", "3"))


@pytest.mark.parametrize("run", range(START_RUNS))
async def test_two_started_together_one_active_one_standby(
    broker: Broker,
    probe: Probe,
    tmp_path: Path,
    write_config: Callable[[dict[str, Any]], Path],
    run: int,
) -> None:
    del run
    paths = [write_config(instance_config(broker, tmp_path, name)) for name in "ab"]
    with gateway_process(paths[0]) as a, gateway_process(paths[1]) as b:
        await probe.wait_for(lambda m: m.topic == HEALTH and bool(m.payload), timeout=15)
        await probe.wait_for(lambda m: m.topic.startswith("iot/gateway/standby/"), timeout=15)
        await asyncio.sleep(3 * 0.5 * 2)  # every turn, twice over
        actives = {m.json["instance"] for m in probe.on(HEALTH) if m.payload}
        takeovers = len(logged_at(a, "is now active")) + len(logged_at(b, "is now active"))
    assert len(actives) == 1, actives
    assert takeovers == 1


async def test_three_instances_killing_the_active_promotes_exactly_one(
    broker: Broker, probe: Probe, tmp_path: Path, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    async with group(broker, probe, tmp_path, write_config, "a", "b", "c") as instances:
        mark = len(probe.messages)
        instances["a"].send_signal(signal.SIGKILL)
        await probe.wait_for(is_active("b"), since=mark, timeout=FAILOVER_BOUND)
        await asyncio.sleep(3 * 0.5 * 2)  # c's turn, and more
        answer = await probe.command("c", {"action": "increment"})
        actives = {
            m.json["instance"] for m in probe.messages[mark:] if m.topic == HEALTH and m.payload
        }
        assert "now active" not in instances["c"].log()
        # A standby told to stop leaves at once, and clears its record.
        instances["c"].send_signal(signal.SIGTERM)
        assert await instances["c"].wait(10) == 0
        await probe.wait_for(lambda m: m.topic == "iot/gateway/standby/c" and not m.payload)
    assert actives == {"b"}
    assert answer["status"] == "ok"


async def test_after_a_broker_restart_exactly_one_instance_is_active_again(
    broker: Broker, probe: Probe, tmp_path: Path, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    """The active loses the broker and steps down; one of the two takes over afterwards.

    Mosquitto publishes the active's will as it shuts down, so after the restart
    the status is `offline`: b goes first, a (stepped down) a turn later, and
    sees b. Had the status stayed `online` (naming a), a would come back.
    """
    async with group(broker, probe, tmp_path, write_config, "a", "b") as instances:
        broker.stop()
        broker.start()
        mark = len(probe.messages)
        # Seen only once the probe is back too: a command sent before may be lost.
        await probe.wait_for(lambda m: m.topic == HEALTH and bool(m.payload), since=mark)
        answer = await probe.command("c", {"action": "increment"}, timeout=20)
        await asyncio.sleep(3 * 0.5 * 2)  # every turn, twice over
        actives = {  # the retained one from before the restart aside
            m.json["instance"]
            for m in probe.messages[mark:]
            if m.topic == HEALTH and m.payload and not m.retain
        }
        assert "stepped down" in instances["a"].log()
        takeovers = sum(len(logged_at(p, "is now active")) for p in instances.values())
    assert answer["status"] == "ok"
    assert len(actives) == 1, actives
    assert takeovers == 2  # a at first, then one of them
