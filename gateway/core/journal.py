"""The durable record of command ids: started and finished, in an embedded SQLite file.

The in-memory ``DedupeWindow`` stays the fast path; this is the record behind
it, so the window holds across a restart or a crash (contract 10). Writes go
to one writer thread in group commits: every record asked for in one pass of
the event loop (and whatever else is waiting when the thread is free) is one
transaction, and each caller's future is resolved once its transaction has
committed. In WAL mode with ``synchronous=NORMAL`` a commit is a ``write()``
into the WAL file, so a record reaches the OS (survives a killed process)
before its future resolves; ``journal_sync: full`` adds an fsync.

When the file cannot be written, ``problem`` says why, every pending and new
record fails with ``JournalUnavailableError``, and the thread retries every
``retry_interval`` seconds, reopening the file, until a write works again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Literal

from gateway.core.dedupe import ENTRY_OVERHEAD
from gateway.core.errors import CommandError, ErrorCode

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from gateway.core.dedupe import Answered

log = logging.getLogger(__name__)

# Rows deleted per transaction when pruning: small enough that no commit stalls.
PRUNE_BATCH = 500
_NOT_OPEN = "not open yet"
# SQLite's result codes for a file that is not (or no longer) a database.
_CORRUPT = ("SQLITE_CORRUPT", "SQLITE_NOTADB")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    device TEXT NOT NULL,
    id TEXT NOT NULL,
    seen REAL NOT NULL,
    payload BLOB,
    code TEXT,
    message TEXT,
    size INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS commands_key ON commands (device, id);
CREATE TABLE IF NOT EXISTS probe (one INTEGER PRIMARY KEY, at REAL NOT NULL);
"""


class JournalUnavailableError(Exception):
    """The journal cannot be written; the message says why."""


# A record: (device, id, Unix time first seen, its answer or None if only started).
Record = tuple[str, str, float, "Answered | None"]
_Batch = tuple[list[Record], list[asyncio.Future[None]]]


class Journal:
    """Started and finished records of commands with ids, in one SQLite file."""

    def __init__(  # noqa: PLR0913 - each is a separate setting
        self,
        path: Path,
        *,
        sync: Literal["normal", "full"] = "normal",
        window: float,
        max_bytes: int,
        retry_interval: float = 1.0,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        """Nothing is opened until ``open``."""
        self.path = path
        self._sync = sync
        self._window = window
        self._max_bytes = max_bytes
        self._retry = retry_interval
        self._on_change = on_change
        self._db: sqlite3.Connection | None = None
        self._bytes = 0  # the sizes of the rows held, for the byte budget
        self._pending: list[Record] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flush_scheduled = False
        self._batches: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.problem: str | None = _NOT_OPEN
        """Why the journal cannot be written now, or None when it can."""

    # -- the event loop's side --------------------------------------------------------

    async def open(self) -> list[Record]:
        """Open (or create) the file and return what it holds, oldest first.

        A corrupt file is moved aside and a fresh one started; a file that cannot
        be opened leaves the journal unavailable, retried in the background.
        """
        self._loop = asyncio.get_running_loop()
        loaded = await asyncio.to_thread(self._open_and_load)
        self._thread = threading.Thread(target=self._write_loop, name="journal", daemon=True)
        self._thread.start()
        self._on_change()
        return loaded

    async def close(self) -> None:
        """Write what is pending, then stop the thread and close the file."""
        self._flush()
        self._batches.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        self.problem = "closed"  # a record asked for now fails at once, not never

    def started(self, device: str, command_id: str) -> asyncio.Future[None]:
        """Record that the command is about to run; resolved once durable."""
        return self._add((device, command_id, time.time(), None))

    def finished(self, device: str, command_id: str, answered: Answered) -> asyncio.Future[None]:
        """Record the command's result; resolved once durable."""
        return self._add((device, command_id, time.time(), answered))

    def _add(self, record: Record) -> asyncio.Future[None]:
        assert self._loop is not None  # noqa: S101 - open() came first
        future = self._loop.create_future()
        if self.problem is not None:
            future.set_exception(JournalUnavailableError(self.problem))
            return future
        self._pending.append(record)
        self._waiters.append(future)
        if not self._flush_scheduled:
            # One transaction for everything asked for in this pass of the loop.
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending:
            self._batches.put((self._pending, self._waiters))
            self._pending, self._waiters = [], []

    def _committed(self, waiters: list[asyncio.Future[None]], error: str | None) -> None:
        for waiter in waiters:
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(JournalUnavailableError(error))
                waiter.exception()  # a caller that gave up must not log "never retrieved"

    def _set_problem(self, problem: str | None) -> None:
        if problem == self.problem:
            return
        if problem is None:
            if self.problem != _NOT_OPEN:
                log.warning("journal %s: writable again; commands with ids run again", self.path)
        elif self.problem in (None, _NOT_OPEN):
            log.error(
                "journal %s cannot be written (%s): commands with ids are refused "
                "journal_unavailable until it can. Free disk space, or make the file and "
                "its directory writable by the gateway (or set gateway.journal); "
                "the gateway retries by itself",
                self.path,
                problem,
            )
        self.problem = problem
        self._on_change()

    # -- the writer thread ------------------------------------------------------------

    def _open_and_load(self) -> list[Record]:
        try:
            db = self._connect()
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                self._report_from_thread(_describe(exc))
                return []
            try:
                self._move_aside(exc)
                db = self._connect()
            except (sqlite3.Error, OSError) as again:
                self._report_from_thread(_describe(again))
                return []
        except OSError as exc:
            self._report_from_thread(_describe(exc))
            return []
        self._db = db
        self._report_from_thread(None)
        return self._load(db)

    def _report_from_thread(self, problem: str | None) -> None:
        self._to_loop(self._set_problem, problem)

    def _to_loop(self, callback: Callable[..., None], *args: object) -> None:
        assert self._loop is not None  # noqa: S101 - open() set it
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(callback, *args)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._sync.upper()}")
            db.executescript(_SCHEMA)
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")  # noqa: TRY301
            self._probe(db)
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _probe(db: sqlite3.Connection) -> None:
        """A real write: opening a read-only file succeeds, writing it does not."""
        db.execute("INSERT OR REPLACE INTO probe VALUES (1, ?)", (time.time(),))

    def _move_aside(self, exc: BaseException) -> None:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                self.path.with_name(self.path.name + suffix).rename(
                    aside.with_name(aside.name + suffix)
                )
        log.error(
            "journal %s is corrupt (%s): moved aside to %s and started a fresh one; "
            "ids remembered before are forgotten, so a resent one may run again",
            self.path,
            exc,
            aside,
        )

    def _load(self, db: sqlite3.Connection) -> list[Record]:
        cutoff = time.time() - self._window
        loaded: list[Record] = []
        total = 0
        rows = db.execute(
            "SELECT device, id, seen, payload, code, message, size FROM commands "
            "WHERE seen >= ? ORDER BY rowid",
            (cutoff,),
        )
        for device, command_id, seen, payload, code, message, size in rows:
            total += size
            answered = None if payload is None else (payload, code, message)
            loaded.append((device, command_id, seen, answered))
        self._bytes = total
        return loaded

    def _write_loop(self) -> None:
        assert self._loop is not None  # noqa: S101 - open() set it
        while not self._loop.is_closed():
            try:
                batch = self._batches.get(timeout=None if self._db else self._retry)
            except queue.Empty:
                self._reopen()
                continue
            if batch is None:
                break
            records, waiters = batch
            stop = False
            # Group commit: whatever else is waiting goes into the same transaction.
            while not self._batches.empty():
                more = self._batches.get()
                if more is None:
                    stop = True
                    break
                records += more[0]
                waiters += more[1]
            self._write(records, waiters)
            if stop:
                break
        if self._db is not None:
            self._db.close()
            self._db = None

    def _write(self, records: list[Record], waiters: list[asyncio.Future[None]]) -> None:
        error = None
        if self._db is None:
            self._reopen()
        if self._db is None:
            error = self.problem or "not open"
        else:
            try:
                self._transaction(self._db, records)
            except (sqlite3.Error, OSError) as exc:
                error = _describe(exc)
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None
                self._report_from_thread(error)
        self._to_loop(self._committed, waiters, error)

    def _transaction(self, db: sqlite3.Connection, records: list[Record]) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            for device, command_id, seen, answered in records:
                self._put(db, device, command_id, seen, answered)
            self._prune(db)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def _put(
        self,
        db: sqlite3.Connection,
        device: str,
        command_id: str,
        seen: float,
        answered: Answered | None,
    ) -> None:
        size = ENTRY_OVERHEAD + len(device) + len(command_id)
        if answered is None:
            db.execute(
                "INSERT OR IGNORE INTO commands (device, id, seen, size) VALUES (?, ?, ?, ?)",
                (device, command_id, seen, size),
            )
            self._bytes += size
            return
        payload, code, message = answered
        size += len(payload) + len(message)
        db.execute(
            "INSERT INTO commands (device, id, seen, payload, code, message, size) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device, id) DO UPDATE SET "
            "payload = excluded.payload, code = excluded.code, message = excluded.message, "
            "size = excluded.size",
            (device, command_id, seen, payload, code, message, size),
        )
        self._bytes += size

    def _prune(self, db: sqlite3.Connection) -> None:
        """Forget expired rows, and the oldest beyond the byte budget, a batch at a time."""
        cutoff = time.time() - self._window
        # Rows are in time order: look at the oldest alone, and when it is due, read
        # only the oldest batch, never the whole table.
        oldest = db.execute("SELECT seen FROM commands ORDER BY rowid LIMIT 1").fetchone()
        if oldest is not None and oldest[0] < cutoff:
            self._delete_oldest(db, cutoff)
        if self._bytes > self._max_bytes:
            self._delete_oldest(db, None)

    def _delete_oldest(self, db: sqlite3.Connection, cutoff: float | None) -> None:
        """Delete up to a batch of the oldest rows (only those older than ``cutoff``)."""
        cutoff = float("inf") if cutoff is None else cutoff
        freed = db.execute(
            "DELETE FROM commands WHERE rowid IN (SELECT rowid FROM commands "
            "ORDER BY rowid LIMIT ?) AND seen < ? RETURNING size",
            (PRUNE_BATCH, cutoff),
        ).fetchall()
        self._bytes -= sum(size for (size,) in freed)

    def _reopen(self) -> None:
        """Try the file again (it may be writable by now)."""
        try:
            db = self._connect()
            total = db.execute("SELECT COALESCE(SUM(size), 0) FROM commands").fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            self._report_from_thread(_describe(exc))
            return
        self._db, self._bytes = db, int(total)
        self._report_from_thread(None)


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(_CORRUPT) or str(exc).startswith("quick_check")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def durable_start(
    journal: Journal, device: str, command_id: str, *, refused: str
) -> Callable[[], Awaitable[CommandError | None]]:
    """What a device's worker awaits before calling the adapter: the "started" record.

    While the journal cannot be written, the answer is ``journal_unavailable``,
    its message ending with ``refused`` (what did not happen, what to do).
    """

    async def started() -> CommandError | None:
        try:
            await journal.started(device, command_id)
        except JournalUnavailableError as exc:
            return CommandError(
                ErrorCode.JOURNAL_UNAVAILABLE, f"the journal cannot be written ({exc}); {refused}"
            )
        return None

    return started
