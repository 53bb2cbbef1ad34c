"""Unit tests of reading command payloads and writing result payloads (no broker)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.core.commands import Command, InvalidCommandError, Result, parse_command
from gateway.core.errors import CommandError, ErrorCode


def rejected(payload: bytes) -> InvalidCommandError:
    """The error ``parse_command`` raises for ``payload`` (failing if it accepts it)."""
    with pytest.raises(InvalidCommandError) as caught:
        parse_command(payload)
    return caught.value


def as_json(value: Any) -> bytes:
    return json.dumps(value).encode()


# -- JSON command objects ------------------------------------------------------------


def test_full_command_object_is_read() -> None:
    command = parse_command(
        as_json(
            {
                "action": "set_brightness",
                "params": {"level": 40},
                "id": "c-17",
                "expires_at": 1_900_000_000.5,
            }
        )
    )
    assert command == Command(
        action="set_brightness", id="c-17", params={"level": 40}, expires_at=1_900_000_000.5
    )


def test_action_alone_defaults_params_to_empty_and_makes_an_id() -> None:
    first = parse_command(b'{"action": "turn_on"}')
    second = parse_command(b'{"action": "turn_on"}')
    assert first.action == "turn_on"
    assert first.params == {}
    assert first.expires_at is None
    assert isinstance(first.id, str)
    assert 1 <= len(first.id) <= 128
    assert first.id != second.id, "made ids must be unique"


def test_integer_expires_at_is_accepted() -> None:
    assert parse_command(b'{"action": "turn_on", "expires_at": 1700000000}').expires_at == (
        1700000000
    )


def test_null_optional_keys_mean_absent() -> None:
    command = parse_command(b'{"action": "turn_on", "expires_at": null}')
    assert command.expires_at is None


def test_extra_keys_are_ignored() -> None:
    command = parse_command(
        as_json({"action": "toggle", "id": "x", "colour": "red", "nested": {"a": [1]}})
    )
    assert command == Command(action="toggle", id="x", params={}, expires_at=None)


def test_json_with_surrounding_white_space_is_read() -> None:
    assert parse_command(b' \n\t{"action": "turn_off", "id": "w"}\r\n ').action == "turn_off"


def test_params_are_passed_through_unvalidated() -> None:
    # Params are checked against the action's schema later, not here.
    params = {"level": "loud", "extra": [1, 2, {"x": None}]}
    assert parse_command(as_json({"action": "play", "params": params})).params == params


def test_non_ascii_is_read() -> None:
    payload = json.dumps(
        {"action": "play", "params": {"song": "Für Elise ♪"}, "id": "é-1"}, ensure_ascii=False
    ).encode()
    command = parse_command(payload)
    assert command.params == {"song": "Für Elise ♪"}
    assert command.id == "é-1"


# -- bare action names ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "action"),
    [
        (b"turn_on", "turn_on"),
        (b"turn_on\n", "turn_on"),
        (b"  toggle  ", "toggle"),
        (b"\t\r\nset_brightness\r\n", "set_brightness"),
        (b"_private2", "_private2"),
        (b"a", "a"),
    ],
)
def test_bare_action_name_means_that_action(payload: bytes, action: str) -> None:
    command = parse_command(payload)
    assert command.action == action
    assert command.params == {}
    assert command.expires_at is None
    assert 1 <= len(command.id) <= 128


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"   \n",
        b"Turn_on",
        b"TURN_ON",
        b"turn on",
        b"turn-on",
        b"2turn_on",
        b"turn_on()",
        b"turn_\xc3\xa9",  # UTF-8 but not [a-z0-9_]
        b"{action: turn_on}",
        b"{'action': 'turn_on'}",
        b'{"action": "turn_on"',
        b'{"action": "turn_on"} trailing',
        b"undefined_ x",
    ],
)
def test_garbage_is_invalid_json(payload: bytes) -> None:
    error = rejected(payload)
    assert error.code is ErrorCode.INVALID_JSON
    assert error.command_id is None


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfe",
        b"\x80turn_on",
        b"turn_on\xff",
        b'{"action": "turn_on", "id": "\xff"}',
        b"\xed\xa0\x80",  # an encoded surrogate is not valid UTF-8
        b"\xc3\x28",
        "turn_on".encode("utf-16"),
    ],
)
def test_non_utf8_is_invalid_json(payload: bytes) -> None:
    error = rejected(payload)
    assert error.code is ErrorCode.INVALID_JSON
    assert "UTF-8" in error.message
    assert error.command_id is None


# -- JSON that is not a command object ------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b'"turn_on"',
        b'  "turn_on"\n',
        b"42",
        b"-1.5",
        b"[]",
        b'[{"action": "turn_on"}]',
        b'["turn_on"]',
        b"null",
        b"true",
        b"false",
    ],
)
def test_json_that_is_not_an_object_is_invalid_command(payload: bytes) -> None:
    error = rejected(payload)
    assert error.code is ErrorCode.INVALID_COMMAND
    assert error.command_id is None


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"params": {}},
        {"action": ""},
        {"action": None},
        {"action": 1},
        {"action": ["turn_on"]},
        {"action": {"name": "turn_on"}},
        {"action": True},
    ],
)
def test_missing_or_non_string_action_is_invalid_command(payload: dict[str, Any]) -> None:
    error = rejected(as_json(payload))
    assert error.code is ErrorCode.INVALID_COMMAND
    assert "action" in error.message


@pytest.mark.parametrize("params", [[], [1, 2], "level=5", 5, 1.5, True, False, None])
def test_params_not_an_object_is_invalid_command(params: Any) -> None:
    error = rejected(as_json({"action": "set_brightness", "params": params, "id": "p-1"}))
    assert error.code is ErrorCode.INVALID_COMMAND
    assert "params" in error.message
    assert error.command_id == "p-1", "a readable id is carried"


# -- ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command_id", ["x", "a" * 128, "é" * 128, "0", " ", "c-17/≠"])
def test_ids_of_1_to_128_chars_are_kept(command_id: str) -> None:
    assert parse_command(as_json({"action": "turn_on", "id": command_id})).id == command_id


@pytest.mark.parametrize(
    "command_id",
    ["", "a" * 129, "é" * 129, 17, 0, 1.5, True, False, ["a"], {"id": "a"}],
)
def test_bad_id_is_invalid_command_without_an_id(command_id: Any) -> None:
    error = rejected(as_json({"action": "turn_on", "id": command_id}))
    assert error.code is ErrorCode.INVALID_COMMAND
    assert "id" in error.message
    assert error.command_id is None


def test_null_id_means_absent() -> None:
    command = parse_command(b'{"action": "turn_on", "id": null}')
    assert isinstance(command.id, str)
    assert command.id


@pytest.mark.parametrize(
    "payload",
    [
        {"id": "keep-me"},
        {"id": "keep-me", "action": 3},
        {"id": "keep-me", "action": "turn_on", "params": []},
        {"id": "keep-me", "action": "turn_on", "expires_at": "soon"},
    ],
)
def test_readable_id_is_carried_by_invalid_command(payload: dict[str, Any]) -> None:
    error = rejected(as_json(payload))
    assert error.code is ErrorCode.INVALID_COMMAND
    assert error.command_id == "keep-me"


# -- expires_at --------------------------------------------------------------------------


@pytest.mark.parametrize("expires_at", ["1700000000", "", True, False, [1700000000], {"t": 1}])
def test_expires_at_not_a_number_is_invalid_command(expires_at: Any) -> None:
    error = rejected(as_json({"action": "turn_on", "id": "e-1", "expires_at": expires_at}))
    assert error.code is ErrorCode.INVALID_COMMAND
    assert "expires_at" in error.message
    assert error.command_id == "e-1"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_expires_at_is_refused(literal: bytes) -> None:
    # Whatever the code, a non-finite time must never be accepted as a deadline.
    with pytest.raises(InvalidCommandError):
        parse_command(b'{"action": "turn_on", "expires_at": ' + literal + b"}")


@pytest.mark.parametrize(
    "payload",
    [b"NaN", b"Infinity", b"-Infinity", b'{"action": "turn_on", "params": {"x": NaN}}'],
)
def test_non_standard_json_literals_are_invalid_json(payload: bytes) -> None:
    assert rejected(payload).code is ErrorCode.INVALID_JSON


# -- results -----------------------------------------------------------------------------


def result_body(result: Result, **kwargs: Any) -> dict[str, Any]:
    raw = result.to_json(**kwargs)
    assert isinstance(raw, bytes)
    body = json.loads(raw)
    assert isinstance(body, dict)
    return body


def test_ok_result_json() -> None:
    result = Result(
        id="c-17",
        device="speaker",
        action="play",
        state={"power": "on", "volume": 30, "playing": "Imagine"},
        duration_ms=503.24,
    )
    assert result.ok
    assert result_body(result) == {
        "id": "c-17",
        "device": "speaker",
        "action": "play",
        "status": "ok",
        "error": None,
        "state": {"power": "on", "volume": 30, "playing": "Imagine"},
        "duplicate": False,
        "duration_ms": 503.2,
    }


def test_error_result_json() -> None:
    error = CommandError(ErrorCode.UNKNOWN_DEVICE, "no device 'nope'")
    result = Result(id="gw-1", device="nope", action="turn_on", error=error)
    assert not result.ok
    assert result_body(result) == {
        "id": "gw-1",
        "device": "nope",
        "action": "turn_on",
        "status": "error",
        "error": {"code": "unknown_device", "message": "no device 'nope'"},
        "state": None,
        "duplicate": False,
        "duration_ms": 0.0,
    }


def test_result_of_an_unreadable_payload_has_null_action() -> None:
    error = InvalidCommandError(ErrorCode.INVALID_JSON, "not JSON", None)
    body = result_body(Result(id="gw-2", device="light", action=None, error=error))
    assert body["action"] is None
    assert body["status"] == "error"
    assert body["error"] == {"code": "invalid_json", "message": "not JSON"}


@pytest.mark.parametrize(
    ("flag", "override", "expected"),
    [(False, None, False), (True, None, True), (False, True, True), (True, False, False)],
)
def test_duplicate_flag_and_its_override(
    *, flag: bool, override: bool | None, expected: bool
) -> None:
    result = Result(id="d", device="hub", action="toggle", state={"power": "on"}, duplicate=flag)
    assert result_body(result, duplicate=override)["duplicate"] is expected


def test_extra_fields_are_merged_into_the_result() -> None:
    steps = {"a": {"status": "ok", "error": None, "duration_ms": 1.0}}
    body = result_body(
        Result(id="s", device="gateway", action="run_steps", extra={"steps": steps})
    )
    assert body["steps"] == steps
    assert body["device"] == "gateway"


@pytest.mark.parametrize(("raw", "rounded"), [(0.04, 0.0), (1.26, 1.3), (12.3456, 12.3), (7, 7)])
def test_duration_is_rounded_to_a_tenth(raw: float, rounded: float) -> None:
    result = Result(id="r", device="hub", action="toggle", duration_ms=raw)
    assert result_body(result)["duration_ms"] == rounded


def test_result_json_is_compact_utf8_and_round_trips_odd_ids() -> None:
    command_id = 'quote" back\\slash é \ud800'
    raw = Result(id=command_id, device="hub", action="toggle", state={"s": "ü"}).to_json()
    raw.decode("utf-8")  # valid UTF-8 even for a lone surrogate in the id
    assert b": " not in raw
    assert b", " not in raw
    assert json.loads(raw)["id"] == command_id
