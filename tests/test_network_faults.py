"""Connection faults without a broker restart: a proxy between gateway and broker drops
or black-holes the connection; the gateway notices, reconnects, says `online`, loses nothing.

The gateway reaches the broker only through a ``FaultProxy``; the probe talks to
the broker directly, so it sees what the broker sees (the will, the commands'
fate) while the gateway's side is broken.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from typing import TYPE_CHECKING, Any, Self, TypeAlias

import pytest

from gateway.broker.aiomqtt_transport import CALL_TIMEOUT
from tests.conftest import started
from tests.faultproxy import FaultProxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from gateway import Config
    from tests.broker import Broker
    from tests.probe import Probe, Received

KEEPALIVE = 2
STATUS = "iot/gateway/status"
COMMAND = "iot/c/command"

Stream: TypeAlias = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def ids(count: int) -> list[str]:
    """``count`` fresh command ids."""
    return [uuid.uuid4().hex for _ in range(count)]


def counter_config(make_config: Callable[..., Config], proxy: FaultProxy, **device: Any) -> Config:
    """One counter; the gateway goes through the proxy with a short keepalive."""
    return make_config(
        mqtt={"port": proxy.port, "keepalive": KEEPALIVE},
        gateway={"queue_size": 1000},  # a burst of commands is never `busy`
        devices=[{"id": "c", "type": "simulated.counter", **device}],
    )


def last_online(probe: Probe) -> float:
    """When the probe last saw the gateway say `online`."""
    return [m.at for m in probe.on(STATUS) if m.payload == b"online"][-1]


async def steady(probe: Probe) -> None:
    """Wait until the gateway, after its last `online`, answers a command.

    Results leave only after the announcements, once the connection reads and
    drains: from then on a lost connection is noticed at once.
    """
    since = last_online(probe)
    await probe.wait_for(lambda m: m.topic == "iot/c/result" and m.at > since, timeout=10)


def statuses(probe: Probe) -> list[bytes]:
    """Every gateway status the probe saw, in order."""
    return [m.payload for m in probe.on(STATUS)]


def status_after(payload: bytes, since: float) -> Callable[[Received], bool]:
    """Matches a gateway status ``payload`` recorded after ``since``."""
    return lambda m: m.topic == STATUS and m.payload == payload and m.at > since


async def increment(probe: Probe, command_ids: list[str]) -> None:
    """Publish one `increment` per id, in order."""
    for command_id in command_ids:
        await probe.publish(COMMAND, {"action": "increment", "id": command_id})


async def assert_each_ran_once(probe: Probe, sent: list[str]) -> None:
    """Every id is answered, and the counter, from 0, counted each exactly once."""
    for command_id in sent:
        await probe.result("c", command_id, timeout=20)
    counts: dict[str, set[int]] = collections.defaultdict(set)
    for message in probe.on("iot/c/result"):
        body = message.json
        assert body["status"] == "ok", body
        if not body["duplicate"]:  # a result resent after a lost PUBACK is the same result
            counts[body["id"]].add(body["state"]["count"])
    assert set(counts) == set(sent)
    assert all(len(seen) == 1 for seen in counts.values()), counts  # none ran twice
    # Each increment saw a different count, 1 to N: none was lost or run twice.
    assert sorted(c for seen in counts.values() for c in seen) == list(range(1, len(sent) + 1))
    # Redeliveries (DUP) of commands in hand or just answered are matched, not rerun:
    # no command message gets a second, duplicate result.
    repeats = [m for m in probe.on("iot/c/result") if m.json["duplicate"]]
    assert repeats == []
    final = await probe.wait_for(
        lambda m: m.topic == "iot/c/state" and m.json["count"] == len(sent), timeout=5
    )
    assert final


async def warm_up(probe: Probe) -> list[str]:
    """Run one command; return its id.

    ``started`` returns once the gateway said `online`, the first of its
    announcements; a result comes only after the last one, when the connection
    is read and drained. A fault before that hits the announcements (see
    test_drop_while_announcing_is_noticed_at_once).
    """
    warm = ids(1)
    await increment(probe, warm)
    await probe.result("c", warm[0])
    return warm


class EchoServer:
    """A TCP echo server on a free loopback port, counting the connections it ended."""

    def __init__(self) -> None:
        """Listen once entered."""
        self.ended = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Self:
        """Start listening."""
        self._server = await asyncio.start_server(self._echo, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.ended += 1
            self._changed.set()
            writer.close()

    async def wait_ended(self, count: int) -> None:
        """Wait until ``count`` connections ended on the server's side."""
        async with asyncio.timeout(5):
            while self.ended < count:
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def clients(proxy: FaultProxy) -> AsyncIterator[Callable[[], Awaitable[Stream]]]:
    """Opens client connections through the proxy; closes them all at the end."""
    writers: list[asyncio.StreamWriter] = []

    async def connect() -> Stream:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        writers.append(writer)
        return reader, writer

    try:
        yield connect
    finally:
        for writer in writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def echoes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bool:
    """Whether ``data`` comes back."""
    writer.write(data)
    return await asyncio.wait_for(reader.readexactly(len(data)), 5) == data


async def test_fault_proxy_blackhole_swallows_bytes_closes_and_new_connections() -> None:
    async with (
        EchoServer() as server,
        FaultProxy(server.port) as proxy,
        clients(proxy) as connect,
    ):
        reader, writer = await connect()
        assert await echoes(reader, writer, b"ping")
        [first] = proxy.active

        proxy.blackhole()
        writer.write(b"lost")
        # A connection made during the partition is accepted, and swallowed.
        _, late_writer = await connect()
        late_writer.write(b"lost too")
        await proxy.wait_until(lambda: proxy.accepted == 2)
        late = proxy.connections[1]
        await proxy.wait_until(lambda: first.discarded == 4 and late.discarded == 8)
        assert late.upstream is None  # the server never heard of it
        # A close is hidden from the other side: the server keeps its socket open.
        late_writer.close()
        writer.close()
        await proxy.wait_until(lambda: first.client_closed_at is not None and late.closed)
        assert first.upstream_closed_at is None
        assert not first.closed
        assert server.ended == 0

        await proxy.heal()
        assert await echoes(*await connect(), b"back")
        assert first.blackholed  # healing does not revive a black-holed connection
        assert proxy.accepted == 3


async def test_fault_proxy_refuses_delays_and_drops() -> None:
    async with (
        EchoServer() as server,
        FaultProxy(server.port) as proxy,
        clients(proxy) as connect,
    ):
        reader, writer = await connect()
        assert await echoes(reader, writer, b"ping")
        proxy.blackhole(refuse_new=True)
        with pytest.raises(ConnectionRefusedError):
            await connect()
        writer.write(b"gone")
        await proxy.wait_until(lambda: proxy.connections[0].discarded == 4)
        await proxy.heal()
        last_reader, last_writer = await connect()  # the same port again
        proxy.delay(down=0.2)
        began = time.monotonic()
        assert await echoes(last_reader, last_writer, b"slow")
        assert time.monotonic() - began >= 0.2
        proxy.delay()

        assert proxy.drop(reset=True) == 2
        assert proxy.drop() == 0
        with pytest.raises(ConnectionResetError):
            await last_reader.read()
        await proxy.wait_until(lambda: not proxy.active)
        await server.wait_ended(2)  # the server side of each was closed too
        assert proxy.accepted == 2


async def test_dropped_connections_lose_nothing_and_run_nothing_twice(
    make_config: Callable[..., Config], broker: Broker, probe: Probe
) -> None:
    async with FaultProxy(broker.port) as proxy:
        config = counter_config(make_config, proxy, latency=0.005)
        async with started(config, probe) as gateway:
            sent = ids(200)
            recovered: list[float] = []
            for index, command_id in enumerate(sent):
                if index in {70, 140}:
                    await steady(
                        probe
                    )  # dropping while it announces: see test_drop_while_announcing
                    onlines = statuses(probe).count(b"online")
                    dropped_at = time.monotonic()
                    # A FIN first, then an RST; both close the gateway's side and the broker's.
                    assert proxy.drop(reset=index == 140) == 1
                if index in {100, 170}:  # commands kept coming in the meantime
                    await probe.wait_for(status_after(b"online", dropped_at), timeout=10)
                    assert statuses(probe).count(b"online") == onlines + 1
                    recovered.append(time.monotonic() - dropped_at)
                await probe.publish(COMMAND, {"action": "increment", "id": command_id})
            await assert_each_ran_once(probe, sent)
        # Both drops were seen by the broker (the will) and followed by a new `online`.
        assert statuses(probe)[:5] == [b"online", b"offline", b"online", b"offline", b"online"]
        assert gateway.session.reconnects == 2
        assert proxy.accepted == 3
        assert all(delay < 5 for delay in recovered), recovered


async def test_blackhole_is_noticed_by_keepalive_and_loses_nothing(
    make_config: Callable[..., Config], broker: Broker, probe: Probe
) -> None:
    async with FaultProxy(broker.port) as proxy:
        config = counter_config(make_config, proxy, latency=0.2)
        async with started(config, probe) as gateway:
            warm = ids(3)
            await increment(probe, warm)
            await probe.result("c", warm[-1])
            [first] = proxy.active
            # Some commands are still queued or running when the partition begins:
            # their results go into the hole.
            running = ids(4)
            await increment(probe, running)
            await probe.result("c", running[0])

            began = time.monotonic()
            # Reconnect attempts are refused until it heals (the next test has them
            # swallowed instead).
            proxy.blackhole(refuse_new=True)
            # The broker still sends these to the dead connection; they are lost in the hole.
            into_hole = ids(4)
            await increment(probe, into_hole)

            # The broker stops hearing the gateway: after 1.5 x keepalive it drops
            # the connection and publishes the will.
            await probe.wait_for(status_after(b"offline", began), timeout=3 * KEEPALIVE + 5)
            broker_noticed = time.monotonic() - began
            # Sent while the broker holds the gateway's session offline.
            while_offline = ids(4)
            await increment(probe, while_offline)

            # The gateway gets no PINGRESP and gives up on the connection.
            await proxy.wait_until(
                lambda: first.client_closed_at is not None, timeout=3 * KEEPALIVE + 5
            )
            assert first.client_closed_at is not None
            gateway_noticed = first.client_closed_at - began
            assert proxy.accepted == 1

            await proxy.heal()
            healed = time.monotonic()
            await probe.wait_for(status_after(b"online", healed), timeout=3 * KEEPALIVE + 5)
            recovered = time.monotonic() - healed
            await assert_each_ran_once(probe, warm + running + into_hole + while_offline)
            await proxy.wait_until(lambda: first.upstream_closed_at is not None)
        assert broker_noticed < 2 * KEEPALIVE + 3, broker_noticed
        # A PINGREQ after at most a keepalive, then a keepalive without PINGRESP.
        assert gateway_noticed < 3 * KEEPALIVE + 2, gateway_noticed
        # The next attempt comes within the reconnect backoff's max_delay (0.5 s).
        assert recovered < KEEPALIVE + 1, recovered
        assert statuses(probe)[:3] == [b"online", b"offline", b"online"]
        assert gateway.session.reconnects == 1
        assert proxy.accepted == 2


async def test_reconnect_attempt_swallowed_by_partition_is_given_up_within_keepalive(
    make_config: Callable[..., Config], broker: Broker, probe: Probe
) -> None:
    async with (
        FaultProxy(broker.port) as proxy,
        started(counter_config(make_config, proxy), probe),
    ):
        warm = await warm_up(probe)
        [first] = proxy.active
        began = time.monotonic()
        proxy.blackhole()
        sent = ids(3)
        await increment(probe, sent)
        # Partitioned until the gateway noticed and its next attempt was swallowed.
        await proxy.wait_until(lambda: proxy.accepted == 2, timeout=3 * KEEPALIVE + 5)
        assert first.client_closed_at is not None
        assert first.client_closed_at - began < 3 * KEEPALIVE + 2
        swallowed = proxy.connections[1]
        await proxy.heal()
        healed = time.monotonic()
        # paho closes the silent attempt's socket after a keepalive...
        await proxy.wait_until(
            lambda: swallowed.client_closed_at is not None, timeout=KEEPALIVE + 2
        )
        # ...so with a short backoff the gateway is back well within twice that.
        await probe.wait_for(status_after(b"online", healed), timeout=2 * KEEPALIVE + 2)
        await assert_each_ran_once(probe, warm + sent)


async def test_drop_while_announcing_is_noticed_at_once(
    make_config: Callable[..., Config], broker: Broker, probe: Probe
) -> None:
    async with (
        FaultProxy(broker.port) as proxy,
        started(counter_config(make_config, proxy), probe) as gateway,
    ):
        warm = await warm_up(probe)
        # A slow link from the broker: each announcement waits 0.3 s for its PUBACK.
        proxy.delay(down=0.3)
        cut = time.monotonic()
        assert proxy.drop() == 1
        await probe.wait_for(status_after(b"online", cut), timeout=5)
        # The broker has `online`; the gateway waits for its PUBACK, then announces
        # the rest. Cut the connection in the middle of that.
        cut = time.monotonic()
        assert proxy.drop() == 1
        assert proxy.accepted == 2
        # A FIN is seen at once: reconnecting over the slow link takes about a second.
        await probe.wait_for(status_after(b"online", cut), timeout=3)
        proxy.delay()
        sent = ids(3)
        await increment(probe, sent)
        await assert_each_ran_once(probe, warm + sent)
    assert proxy.accepted == 3
    assert gateway.session.reconnects >= 1  # counted once the announcements are out


async def test_commands_in_hand_run_once_after_a_drop_loses_a_puback(
    make_config: Callable[..., Config], broker: Broker, probe: Probe
) -> None:
    async with (
        FaultProxy(broker.port) as proxy,
        started(counter_config(make_config, proxy, latency=0.3), probe),
    ):
        await warm_up(probe)
        [conn] = proxy.active
        # A slow link to the broker: what the gateway sends waits 0.2 s in the proxy.
        proxy.delay(up=0.2)
        first = ids(1)[0]
        await probe.publish(COMMAND, {"action": "increment", "id": first})
        for _ in range(3):  # no ids: only the redelivery matching keeps these from rerunning
            await probe.publish(COMMAND, {"action": "increment"})
        # Once `first` is answered, the gateway acknowledges it; the others are in hand,
        # queued or running. Cut the connection while that PUBACK is held up.
        await probe.result("c", first)
        await proxy.wait_until(lambda: conn.held_up >= 4)  # a PUBACK is 4 bytes
        assert proxy.drop() == 1
        proxy.delay()
        # Commands to one device run in order: the last result comes after the rest.
        last = await probe.command("c", {"action": "increment"}, timeout=10)
        assert last["state"]["count"] == 6


async def test_a_link_too_slow_for_the_output_fills_the_socket_and_loses_nothing(
    make_config: Callable[..., Config], broker: Broker, probe: Probe
) -> None:
    """More to send than the socket buffers hold: writes wait for the socket, then go on."""
    # A program echoing each song into the state: simulated speakers take at
    # most 255 characters.
    play = {
        "argv": ["/usr/bin/printf", '{{"playing": "%s"}}', "{song}"],
        "params": {"song": {"type": "str", "max": 65536}},
        "state_from_stdout": True,
    }
    devices = [{"id": "speaker", "type": "command", "actions": {"play": play}}]
    async with FaultProxy(broker.port, client_receive_buffer=65536) as proxy:
        config = make_config(
            mqtt={"port": proxy.port}, gateway={"queue_size": 100}, devices=devices
        )
        async with started(config, probe):
            # The proxy passes on 64 KB every 0.02 s; the answers below are 6 MB
            # (each result and state carries a 60 KB song), more than the
            # kernel's socket buffers hold, so the gateway's writes must wait.
            proxy.delay(up=0.02)
            songs = {uuid.uuid4().hex: uuid.uuid4().hex * 1900 for _ in range(50)}
            since = len(probe.messages)
            for command_id, song in songs.items():
                play = {"action": "play", "params": {"song": song}, "id": command_id}
                await probe.publish("iot/speaker/command", play)
            results = await probe.wait_for(
                lambda m: m.topic == "iot/speaker/result",
                count=len(songs),
                timeout=30,
                since=since,
            )
            assert {r.json["id"]: r.json["state"]["playing"] for r in results} == songs
            states = await probe.wait_for(
                lambda m: m.topic == "iot/speaker/state", count=len(songs), since=since
            )
            assert states[-1].json["playing"] == list(songs.values())[-1]


async def test_commands_reaching_a_connect_given_up_on_run_once(
    make_config: Callable[..., Config], broker: Broker, probe: Probe
) -> None:
    """A CONNACK later than the gateway waits: what follows it is left to the next connection.

    The client library gives up on the attempt (after CALL_TIMEOUT, below the
    keepalive) but leaves its socket reading until the keepalive; commands the
    broker sends there must not run, since the broker delivers them again,
    unacknowledged, to the next connection.
    """
    async with FaultProxy(broker.port) as proxy:
        config = make_config(
            # Paho itself closes a silent socket after a keepalive: make it longer.
            mqtt={"port": proxy.port, "keepalive": 2 * CALL_TIMEOUT},
            devices=[{"id": "c", "type": "simulated.counter"}],
        )
        async with started(config, probe):
            warm = await warm_up(probe)
            proxy.delay(down=CALL_TIMEOUT + 0.5)  # longer than the gateway waits for a CONNACK
            sent = ids(3)
            await increment(probe, sent)
            [first] = proxy.active
            await proxy.wait_until(lambda: first.held_down > 0)  # the commands, held
            proxy.drop()
            # The next attempt: its CONNACK and the commands again (DUP) are held too.
            await proxy.wait_until(
                lambda: proxy.accepted == 2 and proxy.connections[1].held_down > 0
            )
            given_up = proxy.connections[1]
            proxy.delay(down=0)  # the attempt after it goes through at once
            # The broker closes the given-up connection when the next one takes the
            # session over, after the held CONNACK and commands reached the gateway.
            await proxy.wait_until(lambda: given_up.closed, timeout=CALL_TIMEOUT + 5)
            assert given_up.bytes_down > 0  # they reached the given-up attempt
            # Answers go out in order: a command after them is answered after every
            # answer to them, a duplicate one included.
            last = await probe.command("c", {"action": "increment"})
            await assert_each_ran_once(probe, [*warm, *sent, last["id"]])


async def test_a_backlog_that_takes_longer_than_the_timeout_to_arrive_is_waited_for(
    make_config: Callable[..., Config], broker: Broker, probe: Probe
) -> None:
    # The SUBACK comes behind everything the broker queued for the session. A slow
    # link makes that take longer than the client's timeout (1.5 x keepalive = 3 s):
    # while messages keep coming, the gateway waits instead of reconnecting (which
    # would start the backlog over, and under steady load never end).
    async with FaultProxy(broker.port) as proxy:
        config = make_config(
            mqtt={"port": proxy.port, "keepalive": KEEPALIVE},
            gateway={"queue_size": 5000},
            devices=[{"id": "c", "type": "simulated.counter"}],
        )
        async with started(config, probe) as gateway:
            proxy.blackhole(refuse_new=True)
            assert proxy.drop() == 1
            await probe.wait_for(lambda m: m.topic == STATUS and m.payload == b"offline")
            backlog = ids(2500)  # about 210 KB: four chunks of the proxy's
            await increment(probe, backlog)
            proxy.delay(down=1.5)  # each chunk from the broker
            healed = time.monotonic()
            await proxy.heal()
            # Subscribed (after the backlog), it says so.
            await probe.wait_for(status_after(b"online", healed), timeout=30)
            took = time.monotonic() - healed
            proxy.delay()  # the results' acknowledgements at full speed again
            await probe.result("c", backlog[-1], timeout=30)  # they run in order
            first_runs = [
                m.json for m in probe.on("iot/c/result") if not m.json["duplicate"]
            ]  # (a result resent after a lost PUBACK is a duplicate)
            assert sorted(r["id"] for r in first_runs) == sorted(backlog)  # each once
            assert [r["state"]["count"] for r in first_runs] == list(range(1, 2501))
        assert took > 1.5 * KEEPALIVE, took  # the backlog did outlast the timeout
        assert gateway.session.reconnects == 1
        assert proxy.accepted == 2
