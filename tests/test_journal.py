"""The journal on its own: records, group commits, bounds, corruption and recovery (no broker)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from typing import TYPE_CHECKING

import pytest

from gateway.config import GatewaySettings, Settings
from gateway.core import journal as journal_module
from gateway.core.journal import Journal, JournalUnavailableError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from gateway.core.journal import Record

OK = (b'{"status":"ok"}', None, "")


def journal_at(path: Path, **options: float) -> Journal:
    settings = {"window": 600.0, "max_bytes": 1 << 20, "retry_interval": 0.05, **options}
    return Journal(
        path,
        window=settings["window"],
        max_bytes=int(settings["max_bytes"]),
        retry_interval=settings["retry_interval"],
    )


async def reopened(path: Path, **options: float) -> list[Record]:
    journal = journal_at(path, **options)
    records = await journal.open()
    await journal.close()
    return records


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    opened = journal_at(tmp_path / "journal.sqlite3")
    await opened.open()
    yield opened
    await opened.close()


async def until(condition: object, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not callable(condition) or not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def test_started_and_finished_records_are_read_back_in_order(journal: Journal) -> None:
    await journal.started("c", "a")
    await journal.started("c", "b")
    await journal.finished("c", "b", OK)
    await journal.finished("c", "x", (b"{}", "expired", "too late"))
    await journal.close()
    records = await reopened(journal.path)
    assert [(d, i, a) for d, i, _, a in records] == [
        ("c", "a", None),  # started, never finished: interrupted
        ("c", "b", OK),
        ("c", "x", (b"{}", "expired", "too late")),
    ]


async def test_the_first_record_of_a_pass_is_committed_at_once_and_the_rest_together(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    transactions: list[int] = []
    write = Journal._transaction  # noqa: SLF001 - counting the transactions

    def counted(self: Journal, db: sqlite3.Connection, records: list[Record]) -> None:
        transactions.append(len(records))
        write(self, db, records)

    monkeypatch.setattr(Journal, "_transaction", counted)
    first = journal.started("c", "first")
    assert first.done()  # its caller goes on in this pass, without waiting for the next
    await asyncio.gather(first, *(journal.started("c", f"id-{n}") for n in range(500)))
    assert transactions == [1, 500]
    # Under a load of several per pass, the first of the next pass waits for the
    # others: one transaction for all of them, not a second one.
    second = journal.started("c", "second")
    assert not second.done()
    await second
    # Back to one per pass: the first is committed at once again.
    assert journal.started("c", "third").done()
    assert transactions == [1, 500, 1, 1]


async def test_expired_records_are_not_read_back_and_are_pruned(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = journal_at(path, window=0.2)
    await journal.open()
    await journal.finished("c", "old", OK)
    await asyncio.sleep(0.3)
    assert await reopened(path, window=0.2) == []
    await journal.finished("c", "new", OK)  # its transaction prunes the expired row
    await journal.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT id FROM commands").fetchall() == [("new",)]


async def test_the_byte_budget_forgets_the_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = journal_at(path, max_bytes=20_000)
    await journal.open()
    big = (b"x" * 1000, None, "")
    for n in range(60):
        await journal.finished("c", f"id-{n}", big)
    await journal.close()
    kept = [command_id for _, command_id, _, _ in await reopened(path)]
    assert "id-59" in kept
    assert "id-0" not in kept
    assert len(kept) < 60


async def test_a_corrupt_file_is_moved_aside_and_a_fresh_one_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "journal.sqlite3"
    path.write_bytes(b"this is not a database, " * 200)
    journal = journal_at(path)
    assert await journal.open() == []
    await until(lambda: journal.problem is None)
    await journal.started("c", "a")
    await journal.close()
    assert await asyncio.to_thread(lambda: list(tmp_path.glob("journal.sqlite3.corrupt-*")))
    assert "is corrupt" in caplog.text
    assert [i for _, i, _, _ in await reopened(path)] == ["a"]


async def test_an_unwritable_journal_refuses_then_recovers_by_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Root writes through permissions; a directory that is a regular file stops anyone.
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    journal = journal_at(blocker / "journal.sqlite3")
    assert await journal.open() == []
    await until(lambda: journal.problem is not None)
    with pytest.raises(JournalUnavailableError):
        await journal.started("c", "a")
    blocker.unlink()
    await until(lambda: journal.problem is None)
    await journal.started("c", "a")
    await journal.close()
    assert caplog.text.count("cannot be written") == 1  # logged once, with what to do
    assert "writable again" in caplog.text


async def test_a_failing_write_fails_its_records_and_the_journal_recovers(
    journal: Journal,
) -> None:
    await journal.started("c", "warm")
    # What a full disk does: SQLite cannot grow the file (SQLITE_FULL).
    assert journal._db is not None  # noqa: SLF001 - the test reaches in to fill the disk
    pages = journal._db.execute("PRAGMA page_count").fetchone()[0]  # noqa: SLF001
    journal._db.execute(f"PRAGMA max_page_count={pages}")  # noqa: SLF001
    big = (b"x" * 100_000, None, "")
    with pytest.raises(JournalUnavailableError, match="full"):
        await journal.finished("c", "big", big)
    # The retry reopens the file (a fresh connection: room again).
    await until(lambda: journal.problem is None)
    await journal.finished("c", "big", big)


async def test_a_record_after_close_fails_at_once(journal: Journal) -> None:
    await journal.close()
    with pytest.raises(JournalUnavailableError, match="closed"):
        await journal.started("c", "late")


def test_the_journal_setting_defaults_to_the_state_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert GatewaySettings().journal == tmp_path / "a" / "journal.sqlite3"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert GatewaySettings().journal == tmp_path / "iot-gateway" / "journal.sqlite3"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    expected = tmp_path / ".local" / "state" / "iot-gateway" / "journal.sqlite3"
    assert GatewaySettings().journal == expected
    monkeypatch.setenv("GATEWAY_GATEWAY__JOURNAL", "null")
    assert Settings().gateway.journal is None


@pytest.mark.parametrize(("sync", "on_loop"), [("normal", True), ("full", False)])
async def test_commits_run_on_the_loop_unless_each_one_waits_for_the_disk(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sync: str,
    on_loop: bool,  # noqa: FBT001 - a parameter
) -> None:
    threads: list[str] = []
    write = Journal._transaction  # noqa: SLF001 - seeing where transactions run

    def watched(self: Journal, db: sqlite3.Connection, records: list[Record]) -> None:
        threads.append(threading.current_thread().name)
        write(self, db, records)

    monkeypatch.setattr(Journal, "_transaction", watched)
    journal = Journal(tmp_path / "journal.sqlite3", sync=sync, window=600, max_bytes=1 << 20)  # type: ignore[arg-type]
    await journal.open()
    for n in range(20):
        await journal.started("c", f"id-{n}")
    await journal.close()
    loop_thread = threading.current_thread().name
    assert threads
    assert all((name == loop_thread) is on_loop for name in threads), threads


async def test_the_wal_stays_small_under_a_steady_stream(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "WAL_BYTES_LIMIT", 256 * 1024)  # not 32 MB
    wal = journal.path.with_name(journal.path.name + "-wal")
    largest = 0
    for n in range(3000):  # one commit each, never a pause for a checkpoint
        await journal.finished("c", f"id-{n}", OK)
        if n % 50 == 0:
            largest = max(largest, wal.stat().st_size)
    # Past the limit, a checkpoint alone lets the WAL start over. Without one it
    # would pass 3.5 MB; the file itself holds the records.
    assert largest < 1_500_000, largest
    await journal.close()
    kept = await reopened(journal.path)
    assert [command_id for _, command_id, _, _ in kept[-2:]] == ["id-2998", "id-2999"]


async def test_a_file_found_corrupt_while_running_is_replaced_and_the_journal_recovers(
    journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    await journal.started("c", "warm")
    # The files are damaged under the running gateway, and the next write fails: the
    # retry finds the damage and starts a fresh file.
    size = journal.path.stat().st_size
    journal.path.write_bytes(b"this is not a database. " * (size // 24 + 1))
    journal.path.with_name(journal.path.name + "-wal").write_bytes(b"")
    assert journal._db is not None  # noqa: SLF001 - the test makes the next write fail
    pages = journal._db.execute("PRAGMA page_count").fetchone()[0]  # noqa: SLF001
    journal._db.execute(f"PRAGMA max_page_count={pages}")  # noqa: SLF001
    with pytest.raises(JournalUnavailableError):
        await journal.finished("c", "big", (b"x" * 100_000, None, ""))
    await until(lambda: journal.problem is None)
    await journal.started("c", "after")
    assert list(journal.path.parent.glob("journal.sqlite3.corrupt-*"))
    assert "is corrupt" in caplog.text


async def test_a_file_from_before_the_log_format_keeps_its_records(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(
            "CREATE TABLE commands (device TEXT NOT NULL, id TEXT NOT NULL, seen REAL NOT NULL,"
            " payload BLOB, code TEXT, message TEXT, size INTEGER NOT NULL);"
            "CREATE UNIQUE INDEX commands_key ON commands (device, id);"
        )
        db.execute(
            "INSERT INTO commands VALUES ('c', 'old', ?, NULL, NULL, NULL, 10)", (time.time(),)
        )
    journal = journal_at(path)
    assert [(i, a) for _, i, _, a in await journal.open()] == [("old", None)]
    await journal.finished("c", "old", OK)  # its unique index would refuse this row
    await journal.close()
    assert [(i, a) for _, i, _, a in await reopened(path)] == [("old", OK)]
