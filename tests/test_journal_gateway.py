"""The journal in a running gateway: ids durable across restarts, refusals while unwritable."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from tests.conftest import config_data, gateway_process, started
from tests.test_reliability import COUNTER, ids, results_by_id

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from gateway import Config
    from tests.broker import Broker
    from tests.probe import Probe


async def readyz(port: int | None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as response,
    ):
        return response.status, await response.text()


async def ready_again(port: int | None) -> None:
    """Wait until ``/readyz`` says 200 again: the journal recovered by itself."""
    deadline = time.monotonic() + 10
    while (await readyz(port))[0] != 200:
        assert time.monotonic() < deadline, "never recovered"
        await asyncio.sleep(0.1)


def journal_in(make_config: Callable[..., Config], directory: Path) -> Config:
    """One counter, HTTP on, the journal in ``directory``."""
    journal = str(directory / "journal.sqlite3")
    return make_config(devices=[COUNTER], gateway={"journal": journal}, http={"port": 0})


async def without_an_id(probe: Probe, device: str, action: str) -> Any:
    """Send a bare action (the gateway makes its id) and return its result."""
    mark = len(probe.messages)
    await probe.publish(f"iot/{device}/command", action.encode())
    [found] = await probe.wait_for(
        lambda m: m.topic == f"iot/{device}/result" and m.json["id"].startswith("gw-"),
        since=mark,
    )
    return found.json


def unanswered(probe: Probe, sent: list[str]) -> list[str]:
    answered = results_by_id(probe, "c")
    return [cid for cid in sent if cid not in answered]


async def test_a_repeated_id_after_a_restart_is_answered_from_the_journal(
    broker: Broker, probe: Probe, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    path = write_config(config_data(broker, devices=[COUNTER]))
    sent = ids(20)
    with gateway_process(path) as first:
        await probe.wait_for(lambda m: m.topic == "iot/c/availability" and m.payload == b"online")
        for command_id in sent:
            await probe.publish("iot/c/command", {"action": "increment", "id": command_id})
        firsts = [await probe.result("c", command_id) for command_id in sent]
        first.send_signal(signal.SIGTERM)
        assert await first.wait(15) == 0
    mark = len(probe.messages)
    with gateway_process(path):
        await probe.wait_for(
            lambda m: m.topic == "iot/c/availability" and m.payload == b"online", since=mark
        )
        for command_id in sent:
            await probe.publish("iot/c/command", {"action": "increment", "id": command_id})
        repeats = [await probe.result("c", command_id, since=mark) for command_id in sent]
        # Nothing ran again: a command without an id is the counter's first.
        fresh = await probe.command("c", {"action": "increment"})
    assert all(r["duplicate"] for r in repeats)
    assert [r["state"] for r in repeats] == [r["state"] for r in firsts]
    assert fresh["state"] == {"count": 1}


async def test_an_unwritable_journal_refuses_ids_runs_the_rest_and_recovers(
    make_config: Callable[..., Config], probe: Probe, tmp_path: Path
) -> None:
    # As root, permissions stop no write; a directory that is a regular file stops anyone.
    blocker = tmp_path / "journal-dir"
    blocker.write_text("not a directory")
    gateway_settings = {"journal": str(blocker / "journal.sqlite3")}
    config = make_config(devices=[COUNTER], gateway=gateway_settings, http={"port": 0})
    async with started(config, probe) as gateway:
        refused = await probe.command("c", {"action": "increment", "id": "with-id"})
        assert refused["error"]["code"] == "journal_unavailable"
        assert refused["state"] is None
        status, reason = await readyz(gateway.http_port)
        assert status == 503
        assert "journal" in reason
        without_id = await without_an_id(probe, "c", "increment")
        assert without_id["status"] == "ok"
        assert without_id["state"] == {"count": 1}
        blocker.unlink()  # writable again: the gateway notices by itself
        await ready_again(gateway.http_port)
        mark = len(probe.messages)
        await probe.publish("iot/c/command", {"action": "increment", "id": "with-id"})
        ran = await probe.result("c", "with-id", since=mark)
        assert ran["status"] == "ok"  # refused before: not remembered, so it runs now
        assert not ran["duplicate"]
        assert ran["state"] == {"count": 2}
    assert len([r for r in results_by_id(probe, "c")["with-id"] if r["status"] == "ok"]) == 1


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, options: str) -> Iterator[Path]:
    """A real tmpfs, unmounted on exit (mounting needs root: skipped without it)."""
    mount_point.mkdir(exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 300 KB tmpfs."""
    with mounted_tmpfs(tmp_path / "small-disk", "size=300k") as mount_point:
        yield mount_point


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs: not even root writes there until it is remounted."""
    with mounted_tmpfs(tmp_path / "read-only", "size=1m,ro") as mount_point:
        yield mount_point


async def test_a_read_only_directory_refuses_ids_until_it_is_writable(
    make_config: Callable[..., Config], probe: Probe, read_only_dir: Path
) -> None:
    config = journal_in(make_config, read_only_dir)
    async with started(config, probe) as gateway:
        refused = await probe.command("c", {"action": "increment", "id": "early"})
        assert refused["error"]["code"] == "journal_unavailable"
        assert "journal cannot be written" in refused["error"]["message"]
        assert (await readyz(gateway.http_port))[0] == 503
        remount = await asyncio.create_subprocess_exec(
            "mount", "-o", "remount,rw", str(read_only_dir)
        )
        assert await remount.wait() == 0
        await ready_again(gateway.http_port)
        ran = await probe.command("c", {"action": "increment", "id": "early"})  # a resend
        assert ran["status"] == "ok"
        assert ran["state"] == {"count": 1}


async def test_a_full_disk_refuses_ids_until_there_is_room_again(
    make_config: Callable[..., Config], probe: Probe, small_disk: Path
) -> None:
    config = journal_in(make_config, small_disk)
    async with started(config, probe) as gateway:
        ran = await probe.command("c", {"action": "increment", "id": "before"})
        assert ran["status"] == "ok"
        filler = small_disk / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as file:  # ENOSPC ends it
            while True:
                file.write(b"x" * 4096)
                file.flush()
        # The WAL has some room left inside it: commands go on until a commit needs more.
        for n in range(400):
            answer = await probe.command("c", {"action": "increment", "id": f"fill-{n}"})
            if answer["status"] == "error":
                break
        assert answer["error"]["code"] == "journal_unavailable", answer
        assert "full" in answer["error"]["message"]
        status, reason = await readyz(gateway.http_port)
        assert status == 503
        assert "journal" in reason
        assert (await without_an_id(probe, "c", "increment"))["status"] == "ok"
        filler.unlink()  # room again: the gateway notices by itself
        await ready_again(gateway.http_port)
        after = await probe.command("c", {"action": "increment", "id": "after"})
        assert after["status"] == "ok"
        assert not after["duplicate"]


async def test_a_corrupt_journal_at_start_is_moved_aside(
    make_config: Callable[..., Config],
    probe: Probe,
    tmp_path: Path,
    caplog: Any,
) -> None:
    journal = tmp_path / "journal.sqlite3"
    journal.write_bytes(b"garbage, not SQLite " * 500)
    config = make_config(devices=[COUNTER], gateway={"journal": str(journal)})
    async with started(config, probe):
        result = await probe.command("c", {"action": "increment", "id": "after-corruption"})
        assert result["status"] == "ok"
    aside = await asyncio.to_thread(lambda: list(tmp_path.glob("journal.sqlite3.corrupt-*")))
    assert len(aside) == 1
    assert "is corrupt" in caplog.text


async def test_2000_ids_across_5_gateway_kills_each_answered_once_none_run_twice(
    broker: Broker, probe: Probe, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    """A stream cut by five SIGKILLs: every id answered, never two first answers."""
    # A queue for the whole stream: each restart takes everything the broker kept at once.
    devices = [{**COUNTER, "latency": 0.002}]
    path = write_config(config_data(broker, devices=devices, gateway={"queue_size": 5000}))
    sent = ids(2000)

    async def stream() -> None:
        for command_id in sent:
            await probe.publish("iot/c/command", {"action": "increment", "id": command_id})

    publishing = asyncio.create_task(stream())
    for kill in range(5):
        since = len(probe.messages)
        with gateway_process(path) as gateway:
            await probe.wait_for(
                lambda m: m.topic == "iot/c/availability" and m.payload == b"online",
                since=since,
                timeout=15,
            )
            await asyncio.sleep(0.4 + 0.2 * kill)
            gateway.send_signal(signal.SIGKILL)
            await gateway.wait(10)
    await publishing
    with gateway_process(path):
        # The client's side: resend what got no result (the broker redelivers the rest).
        deadline = time.monotonic() + 90
        while missing := unanswered(probe, sent):
            assert time.monotonic() < deadline, f"{len(missing)} ids never answered"
            await asyncio.sleep(2)
            for command_id in unanswered(probe, missing):
                await probe.publish("iot/c/command", {"action": "increment", "id": command_id})
    grouped = results_by_id(probe, "c")
    firsts = {cid: [r for r in grouped[cid] if not r["duplicate"]] for cid in sent}
    twice = {cid: answers for cid, answers in firsts.items() if len(answers) > 1}
    assert not twice, f"answered twice: {twice}"
    codes = collections.Counter(
        "ok" if answers[0]["error"] is None else answers[0]["error"]["code"]
        for answers in firsts.values()
        if answers
    )
    assert set(codes) <= {"ok", "interrupted"}, codes
    # Each run's counter starts at 0 and moves once per command it runs, and its
    # results go out in order: so its ok results count 1, 2, 3, ... with no
    # repeat and no gap (only the last ones can be lost, with the kill). A run's
    # end is where the count starts again: splitting by arrival index would race
    # with the last results of a killed run.
    counts = [
        m.json["state"]["count"]
        for m in probe.messages
        if m.topic == "iot/c/result" and not m.json["duplicate"] and m.json["error"] is None
    ]
    segments: list[list[int]] = []
    for count in counts:
        if not segments or count <= segments[-1][-1]:
            segments.append([])
        segments[-1].append(count)
    for segment in segments:
        assert segment == list(range(1, len(segment) + 1)), segment[:10]
    # Reported with -s -o log_cli=true: 1,996 ok, 4 interrupted, 0 without a first answer.
    logging.getLogger(__name__).info(
        "first answers: %s; answered only as repeats: %d",
        dict(codes),
        sum(not answers for answers in firsts.values()),
    )


async def test_a_step_list_cut_off_by_a_kill_runs_no_step_twice(
    broker: Broker, probe: Probe, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    devices = [
        {"id": "c", "type": "simulated.counter", "latency": 0.05},
        {"id": "d", "type": "simulated.counter", "latency": 3},
    ]
    path = write_config(config_data(broker, devices=devices))
    steps = [
        {"id": "one", "device": "c", "action": "increment"},
        {"id": "two", "device": "d", "action": "increment", "after": ["one"]},
    ]
    command = {"action": "run_steps", "id": "scene-1", "params": {"steps": steps}}
    with gateway_process(path) as first:
        await probe.wait_for(lambda m: m.topic == "iot/d/availability" and m.payload == b"online")
        await probe.publish("iot/gateway/command", command)
        # Step one is done, step two is running: kill.
        await probe.wait_for(lambda m: m.topic == "iot/c/state" and m.json == {"count": 1})
        await asyncio.sleep(0.5)
        first.send_signal(signal.SIGKILL)
        await first.wait(10)
    mark = len(probe.messages)
    with gateway_process(path):
        # The broker delivers the step list again: nothing of it runs again.
        result = await probe.result("gateway", "scene-1", since=mark, timeout=15)
        again = len(probe.messages)
        await probe.publish("iot/gateway/command", command)
        repeat = await probe.result("gateway", "scene-1", since=again)
        counted = await probe.command("c", {"action": "increment"})
    assert result["error"]["code"] == "step_failed"
    assert result["steps"]["one"]["status"] == "ok"
    assert result["steps"]["one"]["duplicate"] is True
    assert result["steps"]["two"]["error"]["code"] == "interrupted"
    assert repeat["duplicate"] is True
    assert counted["state"] == {"count": 1}  # step one did not run again in the second run
