"""One instance of a standby group: watch while standby, serve while active (README "Hot standby").

A watcher connection of its own (client id ``<client_id>-<instance>``,
persistent session) reads the group's retained topics into a ``RoleMachine``
and, while standby, every result into the journal, so ids the active answered
are not run again after a failover. When the machine says it is this
instance's turn, it says ``taking_over``, closes the journal and hands over to
``serve_active`` (the gateway proper, with the shared client id), which
returns why it stepped down, or None after a clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from typing import TYPE_CHECKING, Any

from gateway.broker.aiomqtt_transport import watcher_client
from gateway.broker.standby import PeerState, RoleMachine
from gateway.core.backoff import Backoff
from gateway.core.errors import ErrorCode
from gateway.core.journal import Journal

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from gateway.broker.aiomqtt_transport import ToolClient
    from gateway.config import Settings
    from gateway.core.messages import Inbound
    from gateway.core.topics import Topics

log = logging.getLogger(__name__)

# Answers the dispatcher does not remember (contract 3: refused before queueing,
# or the journal failed): a repeat of such an id may run.
NOT_REMEMBERED = frozenset(
    code.value
    for code in (
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.INVALID_JSON,
        ErrorCode.INVALID_COMMAND,
        ErrorCode.RETAINED_COMMAND,
        ErrorCode.UNKNOWN_DEVICE,
        ErrorCode.UNKNOWN_ACTION,
        ErrorCode.INVALID_PARAMS,
        ErrorCode.DEVICE_UNAVAILABLE,
        ErrorCode.DEPENDENCY_UNAVAILABLE,
        ErrorCode.JOURNAL_UNAVAILABLE,
        ErrorCode.BUSY,
    )
)


class StandbyGroup:
    """This instance's part in the group, from start to exit."""

    def __init__(self, settings: Settings, topics: Topics, *, version: str) -> None:
        """Nothing connects until ``run``."""
        self._settings = settings
        self._topics = topics
        self._version = version
        self.instance = settings.gateway.instance
        self.roles = RoleMachine(
            self.instance, takeover_delay=settings.standby.takeover_delay, now=time.monotonic()
        )
        self._record_topic = topics.standby_record(self.instance)
        self._news = asyncio.Event()  # something was seen: look at the turn again
        self._stop = asyncio.Event()
        self._client: ToolClient | None = None
        self._rewatching = False  # the watcher was told to connect again
        self._tasks: asyncio.TaskGroup | None = None  # run()'s, for records said in passing
        self._journal: Journal | None = None
        self._since = time.time()  # of the current role, for the record
        self.watching = asyncio.Event()
        """Set once the watcher has read the group's retained topics (a standby is up)."""
        self.exit_active: Callable[[int | None], None] | None = None
        """While active: the gateway's own signal handler."""

    # -- lifecycle ------------------------------------------------------------------

    def handle_exit(self, sig: int | None = None) -> None:
        """Signal handler: the active drains as usual; a standby just leaves."""
        name = signal.Signals(sig).name if sig else "request"
        if not self._stop.is_set():
            log.info("%s received: leaving the standby group", name)
        self._stop.set()
        self._news.set()
        if self.exit_active is not None:
            self.exit_active(sig)

    async def run(self, serve_active: Callable[[], Awaitable[str | None]]) -> None:
        """Watch, take over when it is this instance's turn, step down, until a signal."""
        log.info(
            "standby: instance %s joins the group of client id %s as standby",
            self.instance,
            self._settings.mqtt.client_id,
        )
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            watcher = tasks.create_task(self._watch_forever(), name="standby-watcher")
            try:
                await self._open_journal()
                while await self._wait_for_turn():
                    reason = await self._serve(serve_active)
                    if reason is None or self._stop.is_set():
                        break
                    log.warning(self.roles.stepped_down(reason, time.monotonic()))
                    self._since = time.time()
                    self._rewatch()  # what it saw may be stale: the broker may be cut off
                    await self._open_journal()
            finally:
                await self._leave()
                watcher.cancel()

    async def _serve(self, serve_active: Callable[[], Awaitable[str | None]]) -> str | None:
        if self._journal is not None:  # every result seen so far is in it
            await self._journal.close()
            self._journal = None
        log.info(self.roles.became_active(time.monotonic()))
        self._since = time.time()
        return await serve_active()

    def not_ready_reason(self) -> str:
        """What a standby's ``/readyz`` says: it serves nothing, the active does."""
        active = self.roles.active_instance()
        if active is None:
            return f"standby: instance {self.instance} is waiting for its turn; no active instance"
        return f"standby: instance {active} is active"

    async def _wait_for_turn(self) -> bool:
        """Until it is this instance's turn (True), or a signal (False)."""
        while not self._stop.is_set():
            now = time.monotonic()
            if self.roles.may_take_over(now):
                # Say so, then look once more: a peer may have been quicker.
                if not await self._say(PeerState.TAKING_OVER.value):
                    self._rewatch()  # unheard: blind until the watcher is back
                    continue
                if self.roles.may_take_over(time.monotonic()):
                    return True
                await self._say(self.roles.record())
                continue
            self._news.clear()
            wait = self.roles.takeover_at() - now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if wait == float("inf") else max(wait, 0)):
                    await self._news.wait()
        return False

    def active_connected(self) -> None:
        """The gateway connected with the shared client id: its record says ``active``."""
        if self._tasks is not None:
            self._tasks.create_task(self._say(self.roles.record()), name="standby-record")

    async def _leave(self) -> None:
        """Clear the record (a clean disconnect sends no will) and close the journal."""
        with contextlib.suppress(ConnectionError):
            if self._client is not None:
                await self._client.publish(self._record_topic, b"", retain=True)
        if self._journal is not None:
            await self._journal.close()
            self._journal = None

    # -- the watcher ----------------------------------------------------------------

    async def _watch_forever(self) -> None:
        settings = self._settings
        mqtt = settings.mqtt
        login = (
            settings.standby.username or mqtt.username,
            _secret(settings.standby.password) or _secret(mqtt.password),
        )
        backoff = Backoff(mqtt.reconnect.min_delay, mqtt.reconnect.max_delay)
        while True:
            try:
                async with watcher_client(
                    mqtt,
                    client_id=f"{mqtt.client_id}-{self.instance}",
                    login=login,
                    will_topic=self._record_topic,
                ) as client:
                    await self._watch(client, backoff)
            except ConnectionError as exc:
                self._client = None
                self.roles.watching(connected=False, now=time.monotonic())
                if self._rewatching:  # asked for: connect again at once
                    self._rewatching = False
                    log.info("standby: the watcher reconnects to read the group's topics anew")
                    continue
                delay = backoff.next_delay()
                log.warning("standby: watcher: %s; again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
            else:  # pragma: no cover - the messages end only with the connection
                return

    async def _watch(self, client: ToolClient, backoff: Backoff) -> None:
        topics = self._topics
        for topic_filter in (topics.status, topics.health, topics.standby_records, topics.results):
            await client.subscribe(topic_filter)
        backoff.reset()
        self._client = client
        await self._say(self.roles.record())
        self.roles.watching(connected=True, now=time.monotonic())
        self.watching.set()
        self._news.set()
        async for message in client.messages():
            self._seen(message)

    def _rewatch(self) -> None:
        """Decide nothing until the watcher has connected again and read everything anew."""
        self.roles.watching(connected=False, now=time.monotonic())
        if self._client is not None:
            self._rewatching = True
            self._client.disconnect()

    async def _say(self, role: str) -> bool:
        """Publish this instance's retained record (``role``, since, version).

        Whether the broker acknowledged it: the watcher's connection works.
        """
        if self._client is None:
            return False
        record = {
            "instance": self.instance,
            "role": role,
            "since": round(self._since, 3),
            "version": self._version,
        }
        try:
            await self._client.publish(
                self._record_topic, json.dumps(record).encode(), retain=True
            )
        except ConnectionError:
            return False
        return True

    def _seen(self, message: Inbound) -> None:
        topics, now = self._topics, time.monotonic()
        topic, text = message.topic, message.payload.decode(errors="replace")
        if topic == topics.status:
            self.roles.saw_status(text or None, now)
        elif topic == topics.health:
            self.roles.saw_health(_field(text, "instance"), now)
        elif topic.startswith(topics.standby_record("")):
            state = _field(text, "role")
            peer = None if state is None else _peer_state(state)
            self.roles.saw_peer(topic.rsplit("/", 1)[1], peer, now)
        elif topic.endswith("/result") and self._journal is not None:
            self._learn(topic, message.payload)
            return
        self._news.set()

    # -- learning answered ids ------------------------------------------------------

    async def _open_journal(self) -> None:
        gateway = self._settings.gateway
        if gateway.journal is None:
            return
        self._journal = Journal(
            gateway.journal,
            sync=gateway.journal_sync,
            window=gateway.dedupe_window,
            max_bytes=gateway.dedupe_max_bytes,
        )
        await self._journal.open()

    def _learn(self, topic: str, payload: bytes) -> None:
        """Record an answered id, as the active's dispatcher remembers it."""
        try:
            result = json.loads(payload)
        except ValueError:
            return
        if not isinstance(result, dict) or result.get("duplicate"):
            return
        command_id, error = result.get("id"), result.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        if not isinstance(command_id, str) or code in NOT_REMEMBERED:
            return
        message = error.get("message", "") if isinstance(error, dict) else ""
        device = topic[len(self._topics.base) + 1 : -len("/result")]
        if self._journal is not None:
            done = self._journal.finished(device, command_id, (payload, code, str(message)))
            done.add_done_callback(_retrieved)


def _retrieved(future: asyncio.Future[None]) -> None:
    """A learned record that failed is only a repeat that may run again; the journal logs why."""
    if not future.cancelled():
        future.exception()


def _field(text: str, key: str) -> str | None:
    try:
        data: Any = json.loads(text)
    except ValueError:
        return None
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _peer_state(role: str) -> PeerState | None:
    try:
        return PeerState(role)
    except ValueError:
        return None


def _secret(value: Any) -> str | None:  # noqa: ANN401 - a SecretStr or None
    return None if value is None else str(value.get_secret_value())
