"""The durable record of command ids: started and finished, in an embedded SQLite file.

The in-memory ``DedupeWindow`` stays the fast path; this is the record behind
it, so the window holds across a restart or a crash (contract 10). Records go
in group commits: the first record asked for in a pass of the event loop is
committed at once, so its caller goes on without waiting; the others asked for
in that pass go in one transaction at the start of the next. Each caller is
told once its record has committed.

In WAL mode with ``synchronous=NORMAL`` (``journal_sync: normal``) a commit is
a ``write()`` into the WAL file, which reaches the OS (survives a killed
process) without waiting for the disk, so it is done on the event loop itself:
handing it to a thread cost more (each hand-over waits for the GIL) than the
write. What can wait for the disk runs on the journal's thread instead: WAL
checkpoints (they fsync), reopening the file, and with ``journal_sync: full``
every commit (each one fsyncs).

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
from typing import TYPE_CHECKING, Literal, TypeAlias

from gateway.core.dedupe import ENTRY_OVERHEAD
from gateway.core.errors import CommandError, ErrorCode

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from gateway.core.dedupe import Answered

log = logging.getLogger(__name__)

# Rows deleted per transaction when pruning: small enough that no commit stalls.
PRUNE_BATCH = 100
# Commits on the event loop between WAL checkpoints, run by the thread beside them
# (a checkpoint fsyncs: the loop never waits for one).
CHECKPOINT_EVERY = 200
# A checkpoint beside commits cannot let the WAL start over while commits keep
# coming; past this size, one runs with the loop's commits held (handed to the
# thread) for its duration, so the WAL starts over. Each such checkpoint delays
# the commands arriving meanwhile (by up to its two fsyncs): at 1,000 commands/s
# a limit of 32 MB makes that one pause in about 15 s.
WAL_BYTES_LIMIT = 32 * 1024 * 1024
# Pages of a new file. A commit writes at least one whole page into the WAL, and
# a record is about 100 to 300 bytes: 1 KB pages write a quarter of what the
# default 4 KB do, so the WAL grows (and needs that pause) four times less often.
PAGE_SIZE = 1024
# Room a write must find before the journal counts as writable (see ``_probe``).
PROBE_ROOM = 8 * 1024
# A WAL that grew past this (a burst of large results) is cut back to it once copied.
WAL_SIZE_LIMIT = 8 * 1024 * 1024
_NOT_OPEN = "not open yet"
_INSERT = (
    "INSERT INTO commands (device, id, seen, payload, code, message, size) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
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
-- An append-only log, read only at start: ids are looked up in memory, so no index
-- (files from before had a unique one, which forbade the finished row).
DROP INDEX IF EXISTS commands_key;
CREATE TABLE IF NOT EXISTS probe (one INTEGER PRIMARY KEY, at REAL NOT NULL);
"""


class JournalUnavailableError(Exception):
    """The journal cannot be written; the message says why."""


# A record: (device, id, Unix time first seen, its answer or None if only started).
Record = tuple[str, str, float, "Answered | None"]
# Told, on the event loop, once its record is durable: None, or why it is not.
Durable: TypeAlias = "Callable[[str | None], None]"
# A future is told by getting that as its result.
_Waiter: TypeAlias = "Durable | asyncio.Future[str | None]"
_Batch = tuple[list[Record], list[_Waiter]]
# What the thread is asked to do besides writing a batch.
_STOP, _RETRY, _CHECKPOINT, _CHECKPOINT_ALONE = "stop", "retry", "checkpoint", "alone"


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
        self._checkpointer: sqlite3.Connection | None = None  # the thread's own
        self._bytes = 0  # the sizes of the rows held, for the byte budget
        self._pending: list[Record] = []
        self._waiters: list[_Waiter] = []
        self._flush_scheduled = False
        self._first_committed = False  # this pass's first record was committed at once
        self._several_per_pass = False  # the last pass that asked for records asked for more
        # Commits on the loop (normal), or on the thread (full: each one fsyncs).
        self._commit_on_loop = sync == "normal"
        self._commits_since_checkpoint = 0
        self._expiry_check_at = 0.0  # when to look for expired rows next
        # Items the thread has been given and not yet handed back. While it holds
        # any, the file is the thread's: the loop hands its commits over too.
        self._with_thread = 0
        self._closed = False
        self._batches: queue.SimpleQueue[_Batch | str] = queue.SimpleQueue()
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
        self._closed = True
        self.problem = "closed"  # a record asked for now fails at once, not never
        self._hand_over(_STOP)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def started(self, device: str, command_id: str) -> asyncio.Future[None]:
        """Record that the command is about to run; resolved once durable."""
        return self._future_of((device, command_id, time.time(), None))

    async def start(self, device: str, command_id: str) -> str | None:
        """``started``, lighter: None once durable, or why it cannot be.

        A record committed at once (see ``_first_commits_now``) needs no future.
        Otherwise its transaction is queued ahead of this task's next step, so
        after one yield it is usually written, and the task goes on in that same
        pass instead of waiting for its future's wake-up in the pass after.
        """
        if self.problem is not None:
            return self.problem
        record = (device, command_id, time.time(), None)
        if self._first_commits_now():
            return self._commit_first(record)
        assert self._loop is not None  # noqa: S101 - open() came first
        written: asyncio.Future[str | None] = self._loop.create_future()
        self._queue(record, written)
        await asyncio.sleep(0)
        return await written  # done already, unless the thread has the file

    def finished(self, device: str, command_id: str, answered: Answered) -> asyncio.Future[None]:
        """Record the command's result; resolved once durable."""
        return self._future_of((device, command_id, time.time(), answered))

    def finish_then(self, device: str, command_id: str, answered: Answered, then: Durable) -> None:
        """Record the command's result; call ``then`` as soon as it is durable (or not).

        ``then`` may be called before this returns (the record was committed at once).
        """
        self._add((device, command_id, time.time(), answered), then)

    def _future_of(self, record: Record) -> asyncio.Future[None]:
        assert self._loop is not None  # noqa: S101 - open() came first
        future = self._loop.create_future()

        def settle(error: str | None) -> None:
            if future.done():  # its caller gave up
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(JournalUnavailableError(error))
                future.exception()  # a caller that gave up must not log "never retrieved"

        self._add(record, settle)
        return future

    def _add(self, record: Record, then: Durable) -> None:
        if self.problem is not None:
            then(self.problem)
        elif self._first_commits_now():
            then(self._commit_first(record))
        else:
            self._queue(record, then)

    def _queue(self, record: Record, waiter: _Waiter) -> None:
        """For the transaction at the start of the next pass."""
        self._pending.append(record)
        self._waiters.append(waiter)
        if not self._flush_scheduled:
            self._schedule_flush()

    def _first_commits_now(self) -> bool:
        """While records come one per pass, the first of a pass is committed at once.

        Its caller goes on in this pass instead of waiting behind everything else
        that is ready: each such wait cost a command about 0.5 ms at 1,000
        commands/s. Records asked for later in the pass go in one transaction at
        the start of the next. Under a load that brings several per pass, all of
        them wait for that one transaction: a commit of its own for the first
        cost more than the wait (4% more CPU per command, measured in-process).
        """
        return not self._flush_scheduled and not self._several_per_pass and self._may_commit_here()

    def _commit_first(self, record: Record) -> str | None:
        self._schedule_flush()  # for the records that come later in this pass
        self._first_committed = True
        return self._commit_here([record])

    def _schedule_flush(self) -> None:
        assert self._loop is not None  # noqa: S101 - open() came first
        self._flush_scheduled = True
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._several_per_pass = self._first_committed + len(self._pending) > 1
        self._first_committed = False
        if not self._pending:
            return
        records, waiters = self._pending, self._waiters
        self._pending, self._waiters = [], []
        if self._may_commit_here():
            self._committed(waiters, self._commit_here(records))
        else:
            self._hand_over((records, waiters))

    def _may_commit_here(self) -> bool:
        """The loop may commit: ``normal`` sync, the file open, the thread not using it."""
        return self._commit_on_loop and self._db is not None and not self._with_thread

    def _commit_here(self, records: list[Record]) -> str | None:
        """Commit on the event loop (a write into the WAL, no fsync); why not, if it failed."""
        assert self._db is not None  # noqa: S101 - _may_commit_here said so
        error = self._commit(self._db, records)
        if error is not None:
            self._set_problem(error)
            self._hand_over(_RETRY)  # the thread reopens the file
        else:
            self._commits_since_checkpoint += 1
            if self._commits_since_checkpoint >= CHECKPOINT_EVERY:
                self._commits_since_checkpoint = 0
                self._batches.put(_CHECKPOINT)  # on its own connection: not handed over
        return error

    def _hand_over(self, item: _Batch | str) -> None:
        self._with_thread += 1
        self._batches.put(item)

    def _handed_back(
        self,
        items: int,
        waiters: list[_Waiter] | None = None,
        error: str | None = None,
    ) -> None:
        """The thread is done with ``items`` (and with the file): runs on the loop."""
        self._with_thread -= items
        if waiters is not None:
            self._set_problem(error)
            self._committed(waiters, error)

    def _committed(self, waiters: list[_Waiter], error: str | None) -> None:
        for then in waiters:
            if isinstance(then, asyncio.Future):  # from ``start``
                if not then.done():  # else its caller gave up
                    then.set_result(error)
                continue
            try:
                then(error)
            except Exception:  # one waiter's bug must not keep the others waiting
                log.exception("journal: a caller failed on its record being written")

    def _set_problem(self, problem: str | None) -> None:
        if problem == self.problem or self._closed:
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
            db = self._connect_or_replace()
        except (sqlite3.Error, OSError) as exc:
            self._report_from_thread(_describe(exc))
            return []
        self._db = db
        self._report_from_thread(None)
        return self._load(db)

    def _connect_or_replace(self) -> sqlite3.Connection:
        """Open the file; one found corrupt (at start or later) is replaced by a fresh one."""
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise
            self._move_aside(exc)
            return self._connect()

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
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # only a new file takes it
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._sync.upper()}")
            if self._commit_on_loop:
                db.execute("PRAGMA wal_autocheckpoint=0")  # the thread checkpoints
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")  # after a burst
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
        """Real writes, with room to spare, before the file counts as writable.

        Opening a read-only file succeeds, writing it does not. And on a nearly
        full disk a write of one page can fit in the WAL's last block while the
        next commit does not: without the spare room the journal would flap
        between writable and not with each command.
        """
        db.execute("INSERT OR REPLACE INTO probe VALUES (1, zeroblob(?))", (PROBE_ROOM,))
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
        total = 0
        rows = db.execute(
            "SELECT device, id, seen, payload, code, message, size FROM commands "
            "WHERE seen >= ? ORDER BY rowid",
            (cutoff,),
        )
        # A command's started row, then its finished row: one record, first seen at
        # its start, answered by the finished row.
        merged: dict[tuple[str, str], Record] = {}
        for device, command_id, seen, payload, code, message, size in rows:
            total += size
            first = merged.get((device, command_id))
            if first is None:
                answered = None if payload is None else (payload, code, message)
                merged[device, command_id] = (device, command_id, seen, answered)
            elif payload is not None:
                merged[device, command_id] = (*first[:3], (payload, code, message))
        self._bytes = total
        return list(merged.values())

    def _write_loop(self) -> None:
        assert self._loop is not None  # noqa: S101 - open() set it
        while not self._loop.is_closed():
            try:
                first = self._batches.get(timeout=None if self._db else self._retry)
            except queue.Empty:
                self._reopen()
                continue
            # Group commit: whatever else is waiting now is done in the same round.
            items = [first]
            while _STOP not in items and not self._batches.empty():
                items.append(self._batches.get())
            self._do(items)
            if _STOP in items:
                break
        self._close_checkpointer()
        if self._db is not None:
            self._db.close()
            self._db = None

    def _do(self, items: list[_Batch | str]) -> None:
        """One round of the thread: the batches in one commit, then the checkpoint.

        The loop is told once all is done: until then the file is the thread's.
        """
        batches = [item for item in items if isinstance(item, tuple)]
        waiters = [then for batch in batches for then in batch[1]] if batches else None
        error = None
        if batches or _RETRY in items:
            error = self._write([record for batch in batches for record in batch[0]])
            waiters = waiters or []
        if _CHECKPOINT_ALONE in items:
            self._checkpoint_alone()
        elif _CHECKPOINT in items:
            self._checkpoint_beside()
        handed_over = sum(item != _CHECKPOINT for item in items)
        if handed_over:
            self._to_loop(self._handed_back, handed_over, waiters, error)

    def _write(self, records: list[Record]) -> str | None:
        """Commit a batch, reopening the file first if need be; the problem, if any."""
        error = None
        if self._db is None:
            error = self._open_again()
        if self._db is not None and records:
            error = self._commit(self._db, records)
        return error

    def _commit(self, db: sqlite3.Connection, records: list[Record]) -> str | None:
        """Write ``records`` in one transaction; on failure, close the file and say why."""
        try:
            self._transaction(db, records)
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(sqlite3.Error):
                db.close()
            self._db = None
            return _describe(exc)
        return None

    def _checkpoint_beside(self) -> None:
        """Copy the WAL into the file on a connection of the thread's own.

        The loop goes on committing meanwhile. Once the load pauses, the WAL starts
        over; if it keeps growing, the loop is asked for a checkpoint alone.
        """
        try:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(self.path, isolation_level=None)
            frames = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
            page_size = self._checkpointer.execute("PRAGMA page_size").fetchone()[0]
        except sqlite3.Error as exc:  # the next commit says whether the file still works
            log.debug("journal %s: checkpoint failed: %s", self.path, exc)
            self._close_checkpointer()
            return
        if frames * page_size > WAL_BYTES_LIMIT:
            self._to_loop(self._hand_over, _CHECKPOINT_ALONE)

    def _checkpoint_alone(self) -> None:
        """With the loop's commits held: the whole WAL is copied, so it starts over."""
        if self._db is None:
            return
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.debug("journal %s: checkpoint failed: %s", self.path, exc)

    def _close_checkpointer(self) -> None:
        if self._checkpointer is not None:
            with contextlib.suppress(sqlite3.Error):
                self._checkpointer.close()
            self._checkpointer = None

    def _transaction(self, db: sqlite3.Connection, records: list[Record]) -> None:
        rows = [_row(*record) for record in records]
        self._bytes += sum(row[-1] for row in rows)
        if len(rows) == 1 and not self._prune_due():
            # One statement is a transaction of its own: no BEGIN and COMMIT to run.
            db.execute(_INSERT, rows[0])
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(_INSERT, rows)
            self._prune(db)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def _prune_due(self) -> bool:
        return self._bytes > self._max_bytes or time.time() >= self._expiry_check_at

    def _prune(self, db: sqlite3.Connection) -> None:
        """Forget expired rows, and the oldest beyond the byte budget, a batch at a time."""
        now = time.time()
        if now >= self._expiry_check_at:
            # Rows are in time order: look at the oldest alone, and when it is due,
            # read only the oldest batch, never the whole table.
            self._expiry_check_at = now + min(1.0, self._window / 4)
            cutoff = now - self._window
            oldest = db.execute("SELECT seen FROM commands ORDER BY rowid LIMIT 1").fetchone()
            if oldest is not None and oldest[0] < cutoff:
                self._delete_oldest(db, cutoff)
                self._expiry_check_at = now  # more may be due: look again next commit
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
        """Try the file again (it may be writable by now), and say how it went."""
        self._report_from_thread(self._open_again())

    def _open_again(self) -> str | None:
        """Open the file again; the problem if it still cannot be written."""
        self._close_checkpointer()  # it may hold a file since moved aside
        try:
            db = self._connect_or_replace()
            total = db.execute("SELECT COALESCE(SUM(size), 0) FROM commands").fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            return _describe(exc)
        self._db, self._bytes = db, int(total)
        return None


def _row(
    device: str, command_id: str, seen: float, answered: Answered | None
) -> tuple[str, str, float, bytes | None, str | None, str | None, int]:
    """A record as a row of the log; its size counts toward the byte budget."""
    size = ENTRY_OVERHEAD + len(device) + len(command_id)
    if answered is None:  # started
        return (device, command_id, seen, None, None, None, size)
    payload, code, message = answered
    return (device, command_id, seen, payload, code, message, size + len(payload) + len(message))


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
        if (problem := await journal.start(device, command_id)) is None:
            return None
        return CommandError(
            ErrorCode.JOURNAL_UNAVAILABLE, f"the journal cannot be written ({problem}); {refused}"
        )

    return started
