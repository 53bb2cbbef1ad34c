"""Command-line tools for people: send one command and wait for it, or watch."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from typing import TYPE_CHECKING, Any

from gateway.broker.aiomqtt_transport import tool_client
from gateway.core.topics import Topics

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.config import MqttSettings

WATCHED = ("result", "state", "availability", "status")


def parse_param(pair: str) -> tuple[str, Any]:
    """``"level=30"`` -> ``("level", 30)``; ``"song=Imagine"`` -> ``("song", "Imagine")``.

    The value is read as JSON when it is JSON (numbers, true, null, quoted text),
    else taken as text.

    Raises:
        ValueError: no ``=``, or nothing before it.
    """
    key, sep, text = pair.partition("=")
    if not sep or not key:
        raise ValueError(f"expected key=value, got {pair!r}")
    try:
        return key, json.loads(text)
    except ValueError:
        return key, text


def command_topic(settings: MqttSettings, device: str) -> str:
    """Where commands for ``device`` go (``gateway`` for the gateway's own)."""
    return f"{settings.base_topic}/{device}/command"


async def send(
    settings: MqttSettings, device: str, action: str, params: dict[str, Any], wait: float
) -> dict[str, Any] | None:
    """Publish a command with a fresh id and return its result, or None after ``wait`` s.

    Raises:
        ConnectionError: the broker cannot be reached, refused the login, or went away.
        PublishRefusedError: the broker refused the command (MQTT 5: its ACL).
    """
    command_id = f"cli-{uuid.uuid4().hex[:12]}"
    command = {"action": action, "params": params, "id": command_id}
    result_topic = Topics(settings.base_topic).result(device)
    async with tool_client(settings) as client:
        await client.subscribe(result_topic)
        await client.publish(command_topic(settings, device), json.dumps(command).encode())
        try:
            async with asyncio.timeout(wait):
                async for message in client.messages():
                    if message.topic != result_topic:
                        continue
                    result = answer_to(message.payload, command_id, device, action)
                    if result is not None:
                        return result
        except TimeoutError:
            return None
    return None


def answer_to(payload: bytes, command_id: str, device: str, action: str) -> dict[str, Any] | None:
    """The result in ``payload`` if it answers this command, else None.

    Its id, device and action must all be the command's: anyone allowed to
    publish on the result topic could send one with the right id only, and
    a payload that is not a JSON object is nobody's answer.
    """
    try:
        result = json.loads(payload)
    except (ValueError, RecursionError):  # not UTF-8 is a ValueError too
        return None
    if not isinstance(result, dict):
        return None
    if (result.get("id"), result.get("device"), result.get("action")) != (
        command_id,
        device,
        action,
    ):
        return None
    return result


async def watch(settings: MqttSettings, show: Callable[[str], None]) -> None:
    """Show results, state and availability as they come, one line each, until cancelled."""
    base = settings.base_topic
    async with tool_client(settings) as client:
        for leaf in WATCHED:
            await client.subscribe(f"{base}/+/{leaf}")
        async for message in client.messages():
            show(format_line(base, message.topic, message.payload))


def format_line(base: str, topic: str, payload: bytes) -> str:
    """``12:00:01  light         state         {"power": "on"}``: aligned, compact."""
    parts = topic.removeprefix(f"{base}/").split("/")
    device, kind = (parts[0], parts[-1]) if len(parts) > 1 else (topic, "")
    text = payload.decode(errors="replace")
    if kind == "result":
        text = _summarise_result(text)
    now = dt.datetime.now().astimezone().strftime("%H:%M:%S")
    return f"{now}  {device:<16} {kind:<13} {text}"


def _summarise_result(text: str) -> str:
    try:
        result = json.loads(text)
    except ValueError:
        return text
    if not isinstance(result, dict):
        return text
    outcome = "ok" if result.get("status") == "ok" else (result.get("error") or {}).get("code")
    action, took, command_id = result.get("action"), result.get("duration_ms"), result.get("id")
    return f"{action} -> {outcome} ({took} ms) id={command_id}"
