"""Property-based fuzzing (hypothesis) of command payloads, topics, MQTT 5 properties and configs.

The properties are the contract's promises about bad input:

- ``parse_command`` returns a well-formed ``Command`` or raises ``InvalidCommandError``
  (``invalid_json``/``invalid_command``), never anything else; results are valid JSON.
- Every command message gets exactly one result on ``{base}/{device}/result`` (and one on
  its Response Topic, with its Correlation Data); any other topic gets nothing.
- Every configuration either loads or is refused with ``ConfigError`` naming a path;
  ``check-config`` exits 0 or 78, never with a traceback.

Every test is derandomized (the same examples each run) and keeps no example database,
so the suite is deterministic. The named regression tests pin the minimal examples
hypothesis found for bugs since fixed.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import inspect
import json
import math
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, assume, event, given, settings
from hypothesis import strategies as st
from pydantic_settings import BaseSettings

from gateway import AdapterRegistry, ConfigError, load_config
from gateway.config import (
    Backoff,
    GatewaySettings,
    HomeAssistantSettings,
    HttpSettings,
    LoggingSettings,
    MqttSettings,
    Settings,
    Tls,
)
from gateway.core.commands import Command, InvalidCommandError, Result, parse_command
from gateway.core.device_runner import Status
from gateway.core.errors import CommandError, ErrorCode
from gateway.core.events import EventStream
from gateway.core.messages import Inbound, Outbound
from gateway.core.runtime import Core
from gateway.core.steps import Scene, Step
from gateway.core.topics import Topics
from tests.conftest import started
from tests.probe import Probe

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from pydantic import BaseModel

    from gateway import Config
    from tests.broker import Broker

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = AdapterRegistry.from_entry_points()
BASE = "iot"
MAX_PAYLOAD = 400  # max_payload_bytes in the fuzzed gateways, so payload_too_large is reachable
EXIT_CONFIG = 78
RESULT_KEYS = {"id", "device", "action", "status", "error", "state", "duplicate", "duration_ms"}
ERROR_CODES = {code.value for code in ErrorCode}
# The codes decided on arrival, before a command reaches its device, in the contract's order.
ARRIVAL_CODES = [
    ErrorCode.PAYLOAD_TOO_LARGE,
    ErrorCode.INVALID_JSON,
    ErrorCode.INVALID_COMMAND,
    ErrorCode.RETAINED_COMMAND,
    ErrorCode.UNKNOWN_DEVICE,
    ErrorCode.UNKNOWN_ACTION,
]
GATEWAY_ACTIONS = ("describe", "run_scene", "run_steps")


def hypothesis_settings(max_examples: int, **options: Any) -> settings:
    """Deterministic settings: derandomized, no database, no deadline, no explain phase."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow],
        **options,
    )


PURE = hypothesis_settings(300)
# For the known bugs: stop at the first distinct error, shrunk to a minimal example.
BUG = hypothesis_settings(100, report_multiple_bugs=False)


# -- helpers and oracles (written from the contract, not from the code) --------------------


def valid_id(value: object) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 128


def finite_number(value: object) -> bool:
    """A JSON number: every integer is finite, however large; a float must be finite."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def strict_json(payload: bytes) -> Any:
    """Parse as RFC 8259 JSON: UTF-8, and no NaN or Infinity."""
    return json.loads(payload.decode("utf-8"), parse_constant=reject_constant)


def to_json_bytes(value: Any, *, ascii_only: bool) -> bytes:
    """``value`` as JSON; text with lone surrogates is always written as \\u escapes."""
    try:
        return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value).encode("utf-8")


def path_text(at: Sequence[object]) -> str:
    """``("devices", 2, "id")`` -> ``devices[2].id``, as the contract names config paths."""
    text = ""
    for part in at:
        text += f"[{part}]" if isinstance(part, int) and not isinstance(part, bool) else f".{part}"
    return text.removeprefix(".")


def names_path(problem: str, at: str) -> bool:
    """Whether ``problem`` is about the config node at ``at`` or inside it."""
    return problem.startswith(at) and problem[len(at) : len(at) + 1] in {":", ".", "["}


def check_parsed(payload: bytes) -> Command | InvalidCommandError:
    """``parse_command``'s answer, checked for shape; any other exception propagates."""
    refused: InvalidCommandError | None = None
    try:
        command = parse_command(payload)
    except InvalidCommandError as exc:
        refused = exc
    if refused is not None:
        assert refused.code in {ErrorCode.INVALID_JSON, ErrorCode.INVALID_COMMAND}, refused.code
        assert isinstance(refused.message, str)
        assert refused.message
        assert refused.command_id is None or valid_id(refused.command_id)
        return refused
    assert isinstance(command, Command)
    assert isinstance(command.action, str)
    assert command.action
    assert valid_id(command.id), command.id
    assert isinstance(command.params, dict)
    assert command.expires_at is None or finite_number(command.expires_at)
    return command


def contract_reading(data: dict[str, Any]) -> tuple[bool, str | None]:
    """Whether a JSON object is a command by the contract, and its readable id."""
    command_id = data.get("id")
    readable = command_id if valid_id(command_id) else None
    action = data.get("action")
    expires_at = data.get("expires_at")
    accepted = (
        isinstance(action, str)
        and action != ""
        and isinstance(data.get("params", {}), dict)
        and (command_id is None or readable is not None)
        and (expires_at is None or finite_number(expires_at))
    )
    return accepted, readable


# -- strategies ----------------------------------------------------------------------------

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates too
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    ANY_TEXT,
)


def json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4)


JSON_VALUES: st.SearchStrategy[Any] = st.recursive(JSON_SCALARS, json_containers, max_leaves=12)
JSON_OBJECTS = st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=4)
JSON_WHITE_SPACE = st.text(" \t\r\n", max_size=3)
ALL_ACTIONS = sorted(
    {name for adapter in REGISTRY.names() for name in REGISTRY.get(adapter).actions}
    | set(GATEWAY_ACTIONS)
)
# Topic characters a broker delivers: no wildcards, no NUL, no lone surrogates.
TOPIC_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="+#\x00")
SEGMENT_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="/+#\x00")
# What mosquitto accepts in a topic: no control characters, noncharacters or unassigned ones.
BROKER_TOPIC_CHARS = st.characters(
    exclude_categories=("Cs", "Cc", "Cn"), exclude_characters="+#\x00"
)

STEP_IDS = ("s1", "s2", "s3")
VALID_PARAMS: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"level": st.integers(-5, 105)}),
    st.fixed_dictionaries({"song": st.text(max_size=5)}),
    st.fixed_dictionaries({"scene": st.sampled_from(["morning", "nope", ""])}),
)


@st.composite
def step_lists(draw: st.DrawFn, devices: Sequence[str]) -> list[dict[str, Any]]:
    """``run_steps`` step lists: real and unknown devices, actions, step ids and cycles."""
    step = st.fixed_dictionaries(
        {
            "id": st.sampled_from(STEP_IDS),
            "device": st.sampled_from([*devices, "nope", "gateway"]),
            "action": st.sampled_from(ALL_ACTIONS),
        },
        optional={
            "params": VALID_PARAMS | JSON_VALUES,
            "after": st.lists(st.sampled_from([*STEP_IDS, "zz"]), max_size=2),
            "colour": JSON_SCALARS,
        },
    )
    return draw(st.lists(step, max_size=4))


@st.composite
def command_objects(draw: st.DrawFn, devices: Sequence[str] = ()) -> dict[str, Any]:
    """JSON objects shaped like commands, each key present, absent or of any type."""
    data: dict[str, Any] = draw(st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=2))
    choices: dict[str, st.SearchStrategy[Any]] = {
        "action": st.sampled_from(ALL_ACTIONS) | st.just("") | JSON_VALUES,
        "params": VALID_PARAMS
        | JSON_OBJECTS
        | JSON_VALUES
        | step_lists(devices).map(lambda steps: {"steps": steps}),
        "id": st.sampled_from(["a", "b", "x" * 128, "x" * 129, ""])
        | st.text(min_size=1, max_size=130)
        | JSON_VALUES,
        "expires_at": st.sampled_from([None, 0, 1.5, 4_102_444_800, 4_102_444_800.5])
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | JSON_VALUES,
    }
    for key, values in choices.items():
        if draw(st.booleans()):
            data[key] = draw(values)
    return data


def bare_names() -> st.SearchStrategy[bytes]:
    name = st.sampled_from(ALL_ACTIONS) | st.from_regex(r"\A[a-z_][a-z0-9_]{0,12}\Z")
    return st.tuples(JSON_WHITE_SPACE, name, JSON_WHITE_SPACE).map(lambda t: "".join(t).encode())


def payloads(devices: Sequence[str] = ()) -> st.SearchStrategy[bytes]:
    """Any payload a client might send, well-formed or not, small or too large."""
    objects = command_objects(devices)
    encoded = st.builds(to_json_bytes, objects, ascii_only=st.booleans())
    too_large = objects.map(
        lambda d: to_json_bytes({**d, "pad": "x" * MAX_PAYLOAD}, ascii_only=True)
    )
    return st.one_of(
        st.binary(max_size=48),
        st.text(max_size=24).map(str.encode),
        bare_names(),
        st.builds(to_json_bytes, JSON_VALUES, ascii_only=st.booleans()),
        encoded,
        encoded,
        too_large,
    )


# -- 1. parse_command and Result.to_json ---------------------------------------------------


@PURE
@given(st.binary(max_size=300))
def test_parse_command_of_arbitrary_bytes(payload: bytes) -> None:
    check_parsed(payload)


@PURE
@given(st.text(max_size=80))
def test_parse_command_of_arbitrary_text(text: str) -> None:
    outcome = check_parsed(text.encode())
    if isinstance(outcome, Command) and outcome.action == text.strip():
        # A bare action name (or JSON that happens to be one): the contract's pattern only.
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", outcome.action), outcome


@PURE
@given(
    value=JSON_VALUES, before=JSON_WHITE_SPACE, after=JSON_WHITE_SPACE, ascii_only=st.booleans()
)
def test_parse_command_of_arbitrary_json_values(
    *, value: Any, before: str, after: str, ascii_only: bool
) -> None:
    payload = before.encode() + to_json_bytes(value, ascii_only=ascii_only) + after.encode()
    outcome = check_parsed(payload)
    if not isinstance(value, dict):
        assert isinstance(outcome, InvalidCommandError)
        assert outcome.code is ErrorCode.INVALID_COMMAND, "JSON that is not an object"
        assert outcome.command_id is None
        return
    assert not isinstance(outcome, InvalidCommandError) or (
        outcome.code is ErrorCode.INVALID_COMMAND
    ), "valid JSON is never invalid_json"


@PURE
@given(data=command_objects(), ascii_only=st.booleans())
def test_parse_command_of_command_shaped_objects(
    *, data: dict[str, Any], ascii_only: bool
) -> None:
    outcome = check_parsed(to_json_bytes(data, ascii_only=ascii_only))
    accepted, readable = contract_reading(data)
    if not accepted:
        assert isinstance(outcome, InvalidCommandError), (data, outcome)
        assert outcome.code is ErrorCode.INVALID_COMMAND
        assert outcome.command_id == readable
        return
    assert isinstance(outcome, Command), (data, outcome)
    assert outcome.action == data["action"]
    assert outcome.params == data.get("params", {})
    assert outcome.expires_at == data.get("expires_at")
    if readable is not None:
        assert outcome.id == readable


@BUG
@given(st.integers(-(10**400), 10**400))
def test_parse_command_reads_any_integer_expires_at(expires_at: int) -> None:
    outcome = check_parsed(
        to_json_bytes({"action": "turn_on", "expires_at": expires_at}, ascii_only=True)
    )
    assert isinstance(outcome, Command)
    assert outcome.expires_at == expires_at


@hypothesis_settings(50, report_multiple_bugs=False)
@given(st.integers(1, 20_000), st.sampled_from([b"[", b'{"a":', b'{"action":"x","params":{"a":']))
def test_parse_command_survives_deep_nesting(depth: int, opener: bytes) -> None:
    check_parsed(opener * depth)


RESULT_ERRORS = st.builds(CommandError, st.sampled_from(list(ErrorCode)), ANY_TEXT)


@PURE
@given(
    command_id=ANY_TEXT,
    device=ANY_TEXT,
    action=st.none() | ANY_TEXT,
    error=st.none() | RESULT_ERRORS,
    state=st.none() | JSON_OBJECTS,
    duration_ms=st.floats(min_value=0, max_value=1e12),
    duplicate=st.booleans(),
    override=st.none() | st.booleans(),
    steps=st.none() | JSON_OBJECTS,
)
def test_result_to_json_is_valid_json_for_any_ids_and_states(
    *,
    command_id: str,
    device: str,
    action: str | None,
    error: CommandError | None,
    state: dict[str, Any] | None,
    duration_ms: float,
    duplicate: bool,
    override: bool | None,
    steps: dict[str, Any] | None,
) -> None:
    result = Result(
        id=command_id,
        device=device,
        action=action,
        error=error,
        state=state,
        duration_ms=duration_ms,
        duplicate=duplicate,
        extra={} if steps is None else {"steps": steps},
    )
    body = strict_json(result.to_json(duplicate=override))
    assert set(body) == RESULT_KEYS | ({"steps"} if steps is not None else set())
    assert body["id"] == command_id
    assert body["device"] == device
    assert body["action"] == action
    assert body["status"] == ("ok" if error is None else "error")
    assert body["error"] == (
        None if error is None else {"code": error.code, "message": error.message}
    )
    assert body["state"] == state
    assert body["duplicate"] is (duplicate if override is None else override)
    assert body["duration_ms"] == round(duration_ms, 1)


ADAPTER_STATE_VALUES = st.one_of(JSON_SCALARS, st.floats(), st.datetimes())


@BUG
@given(st.dictionaries(st.text(max_size=4), ADAPTER_STATE_VALUES, max_size=3))
def test_result_to_json_is_valid_json_for_any_adapter_state(state: dict[str, Any]) -> None:
    strict_json(Result(id="c-1", device="sensor", action="read", state=state).to_json())


# -- 2. the dispatcher, without a broker -----------------------------------------------------

DISPATCH_DEVICES: list[dict[str, Any]] = [
    {"id": "hub", "type": "simulated.switch"},
    {"id": "light", "type": "simulated.light", "depends_on": ["hub"], "fail_on": ["toggle"]},
    {"id": "speaker", "type": "simulated.speaker"},
    {"id": "counter", "type": "simulated.counter"},
    {"id": "slow", "type": "simulated.switch", "latency": 30, "timeout": 0.01},
    {"id": "dead", "type": "simulated.switch", "open_failures": 1_000_000},
    {"id": "lamp", "type": "simulated.light", "depends_on": ["dead"]},
]
DEVICE_IDS = [d["id"] for d in DISPATCH_DEVICES]
DEVICE_ACTIONS = {d["id"]: set(REGISTRY.get(d["type"]).actions) for d in DISPATCH_DEVICES}
DISPATCH_CONFIG: dict[str, Any] = {
    "mqtt": {"host": "127.0.0.1", "port": 1, "base_topic": BASE},
    "gateway": {
        "queue_size": 1,  # a second command to a device in one go is busy
        "max_payload_bytes": MAX_PAYLOAD,
        "shutdown_grace": 0.1,
        "device_retry": {"min_delay": 30, "max_delay": 30},
    },
    "devices": DISPATCH_DEVICES,
    "scenes": {
        "morning": {
            "steps": [
                {"id": "on", "device": "light", "action": "turn_on"},
                {"id": "power", "device": "speaker", "action": "turn_on"},
                {
                    "id": "song",
                    "device": "speaker",
                    "action": "play",
                    "params": {"song": "Imagine"},
                    "after": ["power"],
                },
            ]
        }
    },
}


@pytest.fixture(scope="module")
def dispatch_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    path = tmp_path_factory.mktemp("fuzz") / "dispatch.yaml"
    # A journal in this module's directory (the autouse state directory is per test,
    # later than this fixture); ``dispatch`` gives each run a fresh one beside it.
    journal = str(path.with_name("journal.sqlite3"))
    data = {**DISPATCH_CONFIG, "gateway": {**DISPATCH_CONFIG["gateway"], "journal": journal}}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return load_config(path, REGISTRY)


def with_fresh_journal(config: Config) -> Config:
    """``config`` with a journal of its own: no example sees another's ids."""
    journal = config.settings.gateway.journal
    assert journal is not None
    fresh = journal.with_name(f"journal-{uuid.uuid4().hex}.sqlite3")
    gateway = config.settings.gateway.model_copy(update={"journal": fresh})
    settings = config.settings.model_copy(update={"gateway": gateway})
    return dataclasses.replace(config, settings=settings)


@dataclass(frozen=True)
class Message:
    """A message as the broker would deliver it to the gateway."""

    topic: str
    payload: bytes
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None


def command_device(topic: str) -> str | None:
    """The device segment if ``topic`` matches the subscription ``{base}/+/command``."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == BASE and parts[2] == "command":
        return parts[1]
    return None


def answered_device(message: Message) -> str | None:
    """The device segment when ``message`` gets a result: a command, not a retained clear."""
    if message.retain and not message.payload:  # deletes a retained message: no command
        return None
    return command_device(message.topic)


def segments(*, empty: bool = False) -> st.SearchStrategy[str]:
    """Device segments: real ids, near misses, any text (unicode too); or only the empty one."""
    if empty:
        return st.just("")
    names = st.sampled_from([*DEVICE_IDS, "gateway", "Light", "light ", "nope"])
    return names | st.text(SEGMENT_CHARS, min_size=1, max_size=10)


def other_topics() -> st.SearchStrategy[str]:
    """Topics that are not command topics: outside the base, deeper, other suffixes."""
    segment = segments()
    return st.one_of(
        st.text(TOPIC_CHARS, min_size=1, max_size=30),
        segment.map(lambda s: f"{BASE}/{s}/result"),
        segment.map(lambda s: f"{BASE}/{s}/command/extra"),
        segment.map(lambda s: f"{BASE}/{s}/{s}/command"),
        segment.map(lambda s: f"x/{BASE}/{s}/command"),
        segment.map(lambda s: f"IOT/{s}/command"),
        segment.map(lambda s: f"{s}/command"),
        st.sampled_from([f"{BASE}/command", f"{BASE}/gateway/status", BASE, "command"]),
    ).filter(lambda topic: command_device(topic) is None)


def response_topics(chars: st.SearchStrategy[str] = TOPIC_CHARS) -> st.SearchStrategy[str]:
    return st.text(chars, min_size=1, max_size=20)


@st.composite
def commands_for(draw: st.DrawFn, device: str) -> bytes:
    """A command this device (or the gateway) knows, with params right or wrong."""
    actions = GATEWAY_ACTIONS if device == "gateway" else sorted(DEVICE_ACTIONS[device])
    action = draw(st.sampled_from(actions) | st.sampled_from(ALL_ACTIONS))
    data: dict[str, Any] = {"action": action}
    if draw(st.booleans()):
        data["params"] = draw(
            VALID_PARAMS | step_lists(DEVICE_IDS).map(lambda steps: {"steps": steps})
        )
    if draw(st.booleans()):
        data["id"] = draw(st.sampled_from(["a", "b", "c"]))  # repeats: duplicates
    if draw(st.integers(0, 3)) == 0:
        data["expires_at"] = draw(st.sampled_from([1, 4_102_444_800]))  # 1970 or 2100
    if set(data) == {"action"} and draw(st.booleans()):
        return f" {action}\n".encode()
    return to_json_bytes(data, ascii_only=True)


def messages(*, empty_segment: bool = False) -> st.SearchStrategy[Message]:
    command_topics = segments(empty=empty_segment).map(lambda s: f"{BASE}/{s}/command")
    fuzzed = st.builds(
        Message,
        topic=command_topics | command_topics | other_topics(),
        payload=payloads(DEVICE_IDS),
        retain=st.integers(0, 3).map(lambda n: n == 0),
        response_topic=st.none() | response_topics(),
        correlation_data=st.none() | st.binary(max_size=12),
    )
    if empty_segment:
        return fuzzed
    meant = st.sampled_from([*DEVICE_IDS, "gateway"]).flatmap(
        lambda device: st.builds(
            Message,
            topic=st.just(f"{BASE}/{device}/command"),
            payload=commands_for(device),
            retain=st.integers(0, 9).map(lambda n: n == 0),
            response_topic=st.none() | response_topics(),
            correlation_data=st.none() | st.binary(max_size=12),
        )
    )
    return fuzzed | meant


@dataclass
class Answer:
    """The result published for one command message, and its copy on the response topic."""

    result: Outbound
    response: Outbound | None = None


@dataclass
class DispatchRun:
    """What the gateway did with a list of messages."""

    settled_on_arrival: Counter[int] = field(default_factory=Counter)
    answers: dict[int, list[Answer]] = field(default_factory=dict)
    retained: list[Outbound] = field(default_factory=list)
    stray: list[Outbound] = field(default_factory=list)


class Collector:
    """Reads the outbox: a result settles its message (``on_sent``), its response follows it."""

    def __init__(self, run: DispatchRun, settled: list[int]) -> None:
        self.run = run
        self.settled = settled
        self.count = 0
        self._last: Answer | None = None

    def take(self, message: Outbound | None) -> None:
        assert message is not None
        if message.retain:
            self.run.retained.append(message)
            self._last = None
            return
        before = len(self.settled)
        message.on_sent()
        if len(self.settled) > before:
            [index] = self.settled[before:]
            self._last = Answer(message)
            self.run.answers.setdefault(index, []).append(self._last)
            self.count += 1
        elif self._last is not None and self._last.response is None:
            self._last.response = message
        else:
            self.run.stray.append(message)


def device_started(core: Core) -> bool:
    return all(r.status is not Status.CONNECTING or r.refusal() is not None for r in core.fleet)


async def dispatch(config: Config, sent: Sequence[Message]) -> DispatchRun:
    """Run a gateway's core (no broker) and feed ``sent`` to its dispatcher."""
    config = with_fresh_journal(config)
    gateway = Core(config, REGISTRY, Topics(config.settings.mqtt.base_topic), EventStream())
    run = DispatchRun()
    settled: list[int] = []
    collector = Collector(run, settled)
    expected = sum(answered_device(m) is not None for m in sent)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(gateway.run())
        for _ in range(5000):  # each device online or given up: up to 5 s
            if device_started(gateway):
                break
            await asyncio.sleep(0.001)
        for index, message in enumerate(sent):
            before = len(settled)
            gateway.dispatcher.on_message(
                Inbound(
                    topic=message.topic,
                    payload=message.payload,
                    retain=message.retain,
                    response_topic=message.response_topic,
                    correlation_data=message.correlation_data,
                    settle=functools.partial(settled.append, index),
                )
            )
            run.settled_on_arrival.update(settled[before:])
            if answered_device(message) is not None:
                assert not settled[before:], f"settled without a result: {message!r}"
        try:
            async with asyncio.timeout(5):
                while collector.count < expected:
                    collector.take(await gateway.outbox.get())
        except TimeoutError:
            raise AssertionError(f"{collector.count} of {expected} messages answered") from None
        await gateway.drain(0.1)
    while len(gateway.outbox):  # whatever came after: must be state and availability only
        collector.take(await gateway.outbox.get())
    return run


def arrival_code(message: Message, device: str) -> ErrorCode | None:
    """The first arrival check that applies, by the contract's table; None if none does."""
    if len(message.payload) > MAX_PAYLOAD:
        return ErrorCode.PAYLOAD_TOO_LARGE
    try:
        command = parse_command(message.payload)
    except InvalidCommandError as exc:
        return exc.code
    if message.retain:
        return ErrorCode.RETAINED_COMMAND
    actions = set(GATEWAY_ACTIONS) if device == "gateway" else DEVICE_ACTIONS.get(device)
    if actions is None:
        return ErrorCode.UNKNOWN_DEVICE
    if command.action not in actions:
        return ErrorCode.UNKNOWN_ACTION
    return None


def own_id(payload: bytes) -> str | None:
    """The command's own id, when the gateway can read it."""
    if len(payload) > MAX_PAYLOAD:
        return None
    try:
        data = strict_json(payload)
    except ValueError:
        return None
    if isinstance(data, dict) and valid_id(data.get("id")):
        return str(data["id"])
    return None


def check_result_body(body: Any, device: str) -> None:
    """The contract's result shape."""
    assert isinstance(body, dict)
    assert set(body) >= RESULT_KEYS, body
    assert set(body) - RESULT_KEYS <= {"steps", "devices", "scenes", "gateway_actions"}, body
    assert valid_id(body["id"]), body
    assert body["device"] == device
    assert body["action"] is None or isinstance(body["action"], str)
    assert body["status"] in {"ok", "error"}
    if body["status"] == "ok":
        assert body["error"] is None
    else:
        assert set(body["error"]) == {"code", "message"}, body
        assert body["error"]["code"] in ERROR_CODES, body
        assert isinstance(body["error"]["message"], str)
    assert body["state"] is None or isinstance(body["state"], dict)
    assert isinstance(body["duplicate"], bool)
    assert finite_number(body["duration_ms"])
    assert body["duration_ms"] >= 0


# Where a command that passed the arrival checks may end, for the devices that are down.
DOWN = {
    "dead": {ErrorCode.INVALID_PARAMS, ErrorCode.DEVICE_UNAVAILABLE},
    "lamp": {ErrorCode.INVALID_PARAMS, ErrorCode.DEPENDENCY_UNAVAILABLE},
}


def check_answer(message: Message, device: str, answer: Answer) -> None:
    result = answer.result
    assert result.topic == f"{BASE}/{device}/result"
    assert not result.retain
    assert result.correlation_data is None
    body = strict_json(result.payload)
    check_result_body(body, device)
    code = None if body["error"] is None else ErrorCode(body["error"]["code"])
    event(f"result: {code or 'ok'}")
    expected = arrival_code(message, device)
    if expected is not None:
        assert code is expected, (body, message)
        assert body["state"] is None
    else:
        assert code not in ARRIVAL_CODES, (body, message)
        if device in DOWN:
            assert code in DOWN[device], (body, message)
    readable = own_id(message.payload)
    if readable is not None:
        assert body["id"] == readable
    if message.response_topic is None:
        assert answer.response is None
        return
    response = answer.response
    assert response is not None, "no result on the response topic"
    assert response.topic == message.response_topic
    assert response.payload == result.payload
    assert response.correlation_data == message.correlation_data
    assert not response.retain


def check_dispatch(sent: Sequence[Message], run: DispatchRun) -> None:
    for index, message in enumerate(sent):
        device = answered_device(message)
        if device is None:
            assert run.settled_on_arrival[index] == 1, f"not settled once: {message!r}"
            assert index not in run.answers, f"a result for a non-command topic: {message!r}"
            continue
        assert run.settled_on_arrival[index] == 0, f"settled without a result: {message!r}"
        answers = run.answers.get(index, [])
        assert len(answers) == 1, f"{len(answers)} results for {message!r}"
        check_answer(message, device, answers[0])
    assert run.stray == [], "messages that are neither results nor responses"
    devices_topics = {
        f"{BASE}/{d}/{kind}" for d in DEVICE_IDS for kind in ("state", "availability")
    }
    assert {m.topic for m in run.retained} <= devices_topics


def bursts() -> st.SearchStrategy[list[Message]]:
    """Several commands to one device in one go: some wait in its queue, some are busy."""
    return st.sampled_from([*DEVICE_IDS, "gateway"]).flatmap(
        lambda device: st.lists(
            st.builds(
                Message, topic=st.just(f"{BASE}/{device}/command"), payload=commands_for(device)
            ),
            max_size=5,
        )
    )


@hypothesis_settings(100)
@given(
    st.tuples(st.lists(messages(), min_size=1, max_size=12), bursts(), st.booleans()).map(
        lambda parts: parts[0] + parts[1] if parts[2] else parts[1] + parts[0]
    )
)
def test_dispatcher_answers_every_command_message_exactly_once(
    dispatch_config: Config, sent: list[Message]
) -> None:
    check_dispatch(sent, asyncio.run(dispatch(dispatch_config, sent)))


@hypothesis_settings(10, report_multiple_bugs=False)
@given(st.lists(messages(empty_segment=True), min_size=1, max_size=3))
def test_dispatcher_answers_commands_with_an_empty_device_segment(
    dispatch_config: Config, sent: list[Message]
) -> None:
    check_dispatch(sent, asyncio.run(dispatch(dispatch_config, sent)))


# -- 3. end to end, against a real broker ----------------------------------------------------

E2E_MESSAGES = st.builds(
    Message,
    topic=st.just(f"{BASE}/light/command"),
    payload=payloads(["light", "hub", "speaker", "sensor"]),
    response_topic=st.none()
    | response_topics(BROKER_TOPIC_CHARS).filter(
        lambda t: not t.startswith(("$", f"{BASE}/")) and t != BASE
    ),
    correlation_data=st.none() | st.binary(max_size=12),
)


@settings(
    max_examples=3,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_fuzzed_commands_over_a_real_broker_get_exactly_one_result_each(
    data: st.DataObject, broker: Broker, make_config: Callable[..., Config], probe: Probe
) -> None:
    sent = data.draw(st.lists(E2E_MESSAGES, min_size=45, max_size=50), label="messages")
    result_topic = f"{BASE}/light/result"
    start = len(probe.messages)
    config = make_config(gateway={"max_payload_bytes": MAX_PAYLOAD})
    async with Probe(broker.port, ["#"]) as replies, started(config, probe):
        for message in sent:
            await probe.publish(
                message.topic,
                message.payload,
                response_topic=message.response_topic,
                correlation_data=message.correlation_data,
            )
        marker = f"fuzz-end-{uuid.uuid4().hex}"
        final = await probe.command("light", {"action": "turn_on", "id": marker})
        assert final["status"] == "ok", final

        # Results for one device come in order: once the marker's is in, all are.
        results = [m for m in probe.messages[start:] if m.topic == result_topic]
        assert results[-1].json["id"] == marker
        assert len(results) == len(sent) + 1, [m.payload for m in results]
        for received in results:
            check_result_body(strict_json(received.payload), "light")
            assert received.correlation_data is None

        wanted = Counter(
            (m.response_topic, m.correlation_data) for m in sent if m.response_topic is not None
        )
        await replies.wait_for(
            lambda m: m.topic in {t for t, _ in wanted}, count=wanted.total(), timeout=5
        )
        got = [m for m in replies.messages if m.topic in {t for t, _ in wanted}]
        assert Counter((m.topic, m.correlation_data) for m in got) == wanted
        assert {m.payload for m in got} <= {m.payload for m in results}


# -- 4. configurations ---------------------------------------------------------------------

VALID_CONFIG: dict[str, Any] = {
    "mqtt": {
        "host": "localhost",
        "port": 1883,
        "username": "gateway",
        "client_id": "iot-gateway",
        "base_topic": "iot",
        "protocol": "5",
        "keepalive": 30,
        "session_expiry": 3600,
        "reconnect": {"min_delay": 0.5, "max_delay": 30},
        # Any readable file: check-config checks it can be read, not that it is a CA.
        "tls": {"ca_file": __file__, "cert_file": None, "key_file": None},
    },
    "gateway": {
        "command_timeout": 10,
        "shutdown_grace": 5,
        "queue_size": 100,
        "max_payload_bytes": 65536,
        "dedupe_window": 600,
        "dedupe_max_ids": 100000,
        "device_retry": {"min_delay": 1, "max_delay": 60},
    },
    "http": {"host": "127.0.0.1", "port": 9100},
    "homeassistant": {"discovery": False, "prefix": "homeassistant"},
    "logging": {"level": "INFO", "format": "text"},
    "devices": [
        {"id": "hub", "type": "simulated.switch"},
        {"id": "light", "type": "simulated.light", "depends_on": ["hub"], "timeout": 2},
        {"id": "speaker", "type": "simulated.speaker", "latency": 0.5},
        {"id": "sensor", "type": "simulated.sensor", "interval": 30},
        {"id": "counter", "type": "simulated.counter", "fail_on": ["reset"]},
    ],
    "scenes": {
        "morning": {
            "steps": [
                {"id": "lights", "device": "light", "action": "turn_on"},
                {"id": "speaker_on", "device": "speaker", "action": "turn_on"},
                {
                    "id": "song",
                    "device": "speaker",
                    "action": "play",
                    "params": {"song": "Imagine"},
                    "after": ["speaker_on"],
                },
            ]
        }
    },
}
ConfigPath = tuple[str | int, ...]
SECTION_MODELS: dict[ConfigPath, type[BaseModel]] = {
    (): Settings,
    ("mqtt",): MqttSettings,
    ("mqtt", "reconnect"): Backoff,
    ("mqtt", "tls"): Tls,
    ("gateway",): GatewaySettings,
    ("gateway", "device_retry"): Backoff,
    ("http",): HttpSettings,
    ("homeassistant",): HomeAssistantSettings,
    ("logging",): LoggingSettings,
    ("scenes", "morning"): Scene,
    **{("scenes", "morning", "steps", i): Step for i in range(3)},
    **{
        ("devices", i): REGISTRY.get(d["type"]).config_model
        for i, d in enumerate(VALID_CONFIG["devices"])
    },
}
SETTINGS_PARAMETERS = [
    name for name in inspect.signature(BaseSettings.__init__).parameters if name.startswith("_")
]


def config_nodes(tree: Any, at: ConfigPath = ()) -> Iterator[tuple[ConfigPath, Any]]:
    yield at, tree
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from config_nodes(value, (*at, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from config_nodes(value, (*at, index))


NODES = dict(config_nodes(VALID_CONFIG))
INNER_PATHS = sorted((p for p in NODES if p), key=path_text)
MAPPING_PATHS = sorted((p for p, v in NODES.items() if isinstance(v, dict)), key=path_text)
LEAF_PATHS = sorted(
    (p for p, v in NODES.items() if not isinstance(v, dict | list) and v is not None),
    key=path_text,
)

YAML_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.dates(),
    st.sampled_from(["", "5", "3.1.1", "-1", "0", "hub", "Bad Id", "gateway", "simulated.x"]),
)


def yaml_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)


YAML_VALUES: st.SearchStrategy[Any] = st.recursive(YAML_SCALARS, yaml_containers, max_leaves=6)


def near_misses(known: Sequence[str]) -> st.SearchStrategy[str]:
    """Typos of the keys a section knows."""
    return st.sampled_from(sorted(known)).flatmap(
        lambda name: st.sampled_from(
            [name.upper(), name.title(), f"{name}s", name[:-1], name.replace("_", "-"), f" {name}"]
        )
    )


def unknown_keys(at: ConfigPath) -> st.SearchStrategy[Any]:
    """Keys the section at ``at`` does not know (top level: none pydantic-settings reads)."""
    known = set(SECTION_MODELS[at].model_fields)
    text = st.text(max_size=10) | near_misses(sorted(known))
    if not at:  # top-level keys have their own regression tests below
        text = text.filter(lambda k: k != "" and not k.startswith("_") and k.lower() not in known)
    others: st.SearchStrategy[Any] = st.integers() | st.booleans() | st.none()
    return (text | others).filter(lambda k: k not in known)


def unhashable_device_refs(tree: Any) -> bool:
    """A device id or dependency that is a list or mapping (its own regression test below)."""
    devices = tree.get("devices") if isinstance(tree, dict) else None
    for entry in devices if isinstance(devices, list) else []:
        if not isinstance(entry, dict):
            continue
        deps = entry.get("depends_on")
        refs = [entry.get("id"), *(deps if isinstance(deps, list) else [])]
        if any(isinstance(ref, list | dict) for ref in refs):
            return True
    return False


@dataclass(frozen=True)
class Mutation:
    """One change to the valid configuration."""

    kind: str  # insert (an unknown key), replace (any value), delete
    at: ConfigPath
    key: Any = None
    value: Any = None

    def apply(self, tree: dict[str, Any]) -> dict[str, Any]:
        tree = copy.deepcopy(tree)
        *parents, last = self.at if self.kind != "insert" else (*self.at, self.key)
        node: Any = tree
        for part in parents:
            node = node[part]
        if self.kind == "delete":
            del node[last]
        else:
            node[last] = self.value
        return tree

    def expected_paths(self) -> list[str]:
        """Where the problem it causes may be reported."""
        spots = [path_text(self.at)]
        if self.kind == "delete":
            spots.append(path_text(self.at[:-1]))
        if self.at and self.at[0] in {"devices", "scenes"}:
            spots += ["devices", "scenes"]  # ids and references: it shows where they are used
        return spots


@st.composite
def mutations(draw: st.DrawFn) -> Mutation:
    kind = draw(st.sampled_from(["insert", "replace", "delete"]))
    if kind == "insert":
        at = draw(st.sampled_from([p for p in MAPPING_PATHS if p in SECTION_MODELS]))
        return Mutation(kind, at, draw(unknown_keys(at)), draw(YAML_VALUES))
    at = draw(st.sampled_from(INNER_PATHS))
    return Mutation(kind, at, value=draw(YAML_VALUES) if kind == "replace" else None)


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-configs")


def write_text(directory: Path, text: str | bytes) -> Path:
    path = directory / f"config-{uuid.uuid4().hex}.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def write_yaml(directory: Path, tree: Any) -> Path:
    return write_text(directory, yaml.safe_dump(tree, sort_keys=False))


def load_problems(path: Path) -> list[str] | None:
    """None if the config loads; else ConfigError's problems (any other exception escapes)."""
    try:
        load_config(path, REGISTRY)
    except ConfigError as exc:
        problems = exc.problems
    else:
        return None
    assert problems, "a ConfigError must list its problems"
    for problem in problems:
        assert isinstance(problem, str)
        assert problem.strip()
    return problems


def test_the_valid_config_is_valid(config_dir: Path) -> None:
    assert load_problems(write_yaml(config_dir, VALID_CONFIG)) is None


@hypothesis_settings(250)
@given(mutations())
def test_one_mutation_loads_or_is_refused_naming_its_path(
    config_dir: Path, mutation: Mutation
) -> None:
    tree = mutation.apply(VALID_CONFIG)
    assume(not unhashable_device_refs(tree))
    problems = load_problems(write_yaml(config_dir, tree))
    if mutation.kind == "insert":
        assert problems is not None, "unknown keys are errors"
        key = mutation.key if isinstance(mutation.key, str) or mutation.at else str(mutation.key)
        spots = [path_text((*mutation.at, key))] if isinstance(key, str) else []
        spots = spots or mutation.expected_paths()
    elif problems is None:
        return
    else:
        spots = mutation.expected_paths()
    assert any(names_path(p, spot) for p in problems for spot in spots if spot), (
        spots,
        problems,
    )


@hypothesis_settings(150)
@given(st.lists(mutations(), min_size=1, max_size=5))
def test_many_mutations_load_or_are_refused(config_dir: Path, changes: list[Mutation]) -> None:
    tree = VALID_CONFIG
    for change in changes:
        try:
            tree = change.apply(tree)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed or replaced where this one applies
    assume(not unhashable_device_refs(tree))
    load_problems(write_yaml(config_dir, tree))


DEVICE_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # the contract's, as written there


@BUG
@given(st.from_regex(DEVICE_ID_PATTERN) | st.text(max_size=8))
def test_device_ids_are_accepted_only_if_they_match_the_pattern(
    config_dir: Path, device_id: str
) -> None:
    tree = {"devices": [{"id": device_id, "type": "simulated.switch"}]}
    problems = load_problems(write_yaml(config_dir, tree))
    valid = bool(re.fullmatch(DEVICE_ID_PATTERN[1:-1], device_id)) and device_id != "gateway"
    assert (problems is None) == valid, (device_id, problems)
    if problems is not None:
        assert any(names_path(p, "devices[0].id") for p in problems), problems


DEVICE_BREAKAGES: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "not_a_mapping": (lambda _: ["not", "a", "mapping"], ""),
    "unknown_key": (lambda d: {**d, "colour": "red"}, ".colour"),
    "negative_latency": (lambda d: {**d, "latency": -1}, ".latency"),
    "bad_id": (lambda d: {**d, "id": "Bad Id"}, ".id"),
    "unknown_type": (lambda d: {**d, "type": "simulated.nope"}, ".type"),
}


@BUG
@given(
    st.dictionaries(
        st.integers(0, len(VALID_CONFIG["devices"]) - 1),
        st.sampled_from(sorted(DEVICE_BREAKAGES)),
        min_size=1,
    )
)
def test_every_device_problem_is_reported_at_its_own_index(
    config_dir: Path, breakages: dict[int, str]
) -> None:
    tree = copy.deepcopy(VALID_CONFIG)
    for index, name in breakages.items():
        breakage, _ = DEVICE_BREAKAGES[name]
        tree["devices"][index] = breakage(tree["devices"][index])
    problems = load_problems(write_yaml(config_dir, tree))
    assert problems is not None
    for index, name in breakages.items():
        where = f"devices[{index}]{DEVICE_BREAKAGES[name][1]}"
        assert any(names_path(p, where) for p in problems), (where, problems)


@hypothesis_settings(100)
@given(st.integers() | st.booleans() | st.none() | st.floats(allow_nan=False), YAML_VALUES)
def test_non_string_top_level_keys_are_refused(config_dir: Path, key: Any, value: Any) -> None:
    tree: dict[Any, Any] = {**VALID_CONFIG, key: value}
    problems = load_problems(write_yaml(config_dir, tree))
    assert problems is not None, "unknown keys are errors"
    assert any(names_path(p, str(key)) for p in problems), problems


@BUG
@given(
    st.integers(0, len(VALID_CONFIG["devices"]) - 1),
    st.sampled_from(["id", "depends_on"]),
    YAML_VALUES | st.lists(YAML_VALUES, max_size=2),
)
def test_device_ids_and_dependencies_of_any_type_load_or_are_refused(
    config_dir: Path, index: int, key: str, value: Any
) -> None:
    tree = copy.deepcopy(VALID_CONFIG)
    tree["devices"][index][key] = value
    problems = load_problems(write_yaml(config_dir, tree))
    if problems is not None:
        assert any(names_path(p, "devices") for p in problems), problems


@BUG
@given(
    st.sampled_from([n for n in SETTINGS_PARAMETERS if not n.startswith("_cli")]),
    YAML_SCALARS,
)
def test_settings_parameters_as_top_level_keys_are_refused(
    config_dir: Path, key: str, value: Any
) -> None:
    problems = load_problems(write_yaml(config_dir, {**VALID_CONFIG, key: value}))
    assert problems is not None, "unknown keys are errors"
    assert any(names_path(p, key) for p in problems), problems


@BUG
@given(near_misses(sorted(Settings.model_fields)).filter(str.isupper), YAML_VALUES)
def test_upper_case_section_names_are_unknown_keys(config_dir: Path, key: str, value: Any) -> None:
    problems = load_problems(write_yaml(config_dir, {**VALID_CONFIG, key: value}))
    assert problems is not None, "unknown keys are errors"
    assert any(names_path(p, key) for p in problems), problems


PLACEHOLDER = "zzplaceholderzz"
# Plain (untagged) scalars shaped like YAML 1.1's implicit numbers, dates and times.
YAML_SCALAR_TEXT = st.one_of(
    st.text("0123456789-:.+_xobeETZ ", min_size=1, max_size=20),
    *(
        st.from_regex(pattern, fullmatch=True)
        for pattern in (
            r"[0-9]{4}-[0-9]{2}-[0-9]{2}",
            r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}[Tt ][0-9]{1,2}:[0-9]{2}:[0-9]{2}(\.[0-9]*)?Z?",
            r"[-+]?0x[0-9a-fA-F_]+",
            r"[-+]?0b[01_]+",
            r"[-+]?0[0-7_]+",
            r"[-+]?[1-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?",
        )
    ),
)


@BUG
@given(st.sampled_from(LEAF_PATHS), YAML_SCALAR_TEXT)
def test_any_yaml_scalar_loads_or_is_a_config_error(
    config_dir: Path, at: ConfigPath, scalar: str
) -> None:
    text = yaml.safe_dump(Mutation("replace", at, value=PLACEHOLDER).apply(VALID_CONFIG))
    load_problems(write_text(config_dir, text.replace(PLACEHOLDER, scalar)))


@BUG
@given(st.binary(max_size=64))
def test_any_file_content_loads_or_is_a_config_error(config_dir: Path, content: bytes) -> None:
    load_problems(write_text(config_dir, content))


# No shrinking: PyYAML takes ~1 s per deep document, and hypothesis would try dozens.
@settings(BUG, max_examples=20, phases=[Phase.generate])
@given(st.integers(1, 1200))
def test_deeply_nested_yaml_is_a_config_error(config_dir: Path, depth: int) -> None:
    load_problems(write_text(config_dir, "devices: " + "[" * depth + "]" * depth + "\n"))


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
        cwd=ROOT,
        check=False,
    )


@hypothesis_settings(8)
@given(st.lists(mutations(), min_size=1, max_size=3))
def test_check_config_exits_0_or_78_without_a_traceback(
    config_dir: Path, changes: list[Mutation]
) -> None:
    tree = VALID_CONFIG
    for change in changes:
        try:
            tree = change.apply(tree)
        except (KeyError, IndexError, TypeError):
            continue
    assume(not unhashable_device_refs(tree))
    path = write_yaml(config_dir, tree)
    problems = load_problems(path)
    done = check_config(path)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == (0 if problems is None else EXIT_CONFIG), done.stderr
    for problem in problems or []:
        assert f"config error: {problem}" in done.stderr, "every problem is printed"


# The minimal examples hypothesis found above, through the real command.
CRASHING_CONFIGS = [
    pytest.param("mqtt:\n  host: 0000-00-00\n", id="yaml-date-out-of-range"),
    pytest.param("mqtt:\n  port: 0x_\n", id="yaml-hex-without-digits"),
    pytest.param(b"\x80", id="not-utf8"),
    pytest.param("devices:\n  - {id: [], type: simulated.switch}\n", id="unhashable-device-id"),
    pytest.param("_env_prefix: 5\n", id="settings-parameter-key"),
    pytest.param("_cli_parse_args: true\n", id="settings-cli-parameter-key"),
    pytest.param("devices: " + "[" * 1000 + "]" * 1000 + "\n", id="deep-nesting"),
]


@pytest.mark.parametrize("content", CRASHING_CONFIGS)
def test_check_config_exits_78_on_configs_that_crash_load_config(
    config_dir: Path, content: str | bytes
) -> None:
    done = check_config(write_text(config_dir, content))
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == EXIT_CONFIG, (done.returncode, done.stderr)
