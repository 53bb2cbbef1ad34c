"""Command-line tools for people: send one command and wait for it, or watch."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from typing import TYPE_CHECKING, Any

from gateway.mqtt import tool_client
from gateway.topics import Topics

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from gateway.config import MqttSettings

WATCHED = ("result", "state", "availability", "status")


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``["level=30", "song=Imagine"]`` -> ``{"level": 30, "song": "Imagine"}``.

    A value is read as JSON when it is JSON (numbers, true, null, quoted text),
    else taken as text.

    Raises:
        ValueError: a pair without ``=``.
    """
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {pair!r}")
        try:
            params[key] = json.loads(text)
        except ValueError:
            params[key] = text
    return params


async def send(
    settings: MqttSettings, device: str, action: str, params: dict[str, Any], wait: float
) -> dict[str, Any] | None:
    """Publish a command with a fresh id and return its result, or None after ``wait`` s."""
    topics = Topics(settings.base_topic)
    command_id = f"cli-{uuid.uuid4().hex[:12]}"
    command = {"action": action, "params": params, "id": command_id}
    async with tool_client(settings) as client:
        await client.subscribe(topics.result(device))
        await client.publish(
            f"{settings.base_topic}/{device}/command", json.dumps(command).encode()
        )
        try:
            async with asyncio.timeout(wait):
                async for message in client.messages():
                    result: dict[str, Any] = json.loads(message.payload)
                    if result.get("id") == command_id:
                        return result
        except TimeoutError:
            return None
    return None


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
