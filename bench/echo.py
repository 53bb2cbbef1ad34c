"""The ceiling: the least an aiomqtt client must do per command, tuned fairly.

For each command it parses the JSON and publishes the same two messages the
gateway does (the result, and the retained state), concurrently, with a large
in-flight window and TCP_NODELAY. Run as ``python -m bench.echo --port N``;
``--latency S`` answers each command S seconds later, concurrently, like a
device that takes that long.

``--direct`` goes beneath aiomqtt's API to the paho client it wraps, as the
gateway does: each command straight from paho's read callback (no task and
``asyncio.wait`` per message) and each answer straight into paho's publish
(no coroutine, Event and pending-call scan per publish).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import socket
from typing import TYPE_CHECKING

import aiomqtt

from bench.answers import answer

if TYPE_CHECKING:
    from paho.mqtt.client import MQTTMessage


def make_client(port: int) -> aiomqtt.Client:
    """The echo's client, tuned: QoS 1 window unlimited, TCP_NODELAY."""
    client = aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier="echo",
        protocol=aiomqtt.ProtocolVersion.V5,
        max_inflight_messages=65535,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        timeout=60,
    )
    client.pending_calls_threshold = 1 << 30
    return client


async def echo_direct(port: int) -> None:
    """Answer commands until killed, through paho's callback and publish."""
    states: dict[str, bool] = {}
    async with make_client(port) as client:
        paho = client._client  # noqa: SLF001 - see the module's docstring

        def on_message(_paho: object, _userdata: object, message: MQTTMessage) -> None:
            for topic, payload, retain in answer(message.topic, message.payload, states):
                paho.publish(topic, payload, qos=1, retain=retain)

        paho.on_message = on_message
        await client.subscribe("iot/+/command", qos=1)
        print("ready", flush=True)  # noqa: T201
        await asyncio.get_running_loop().create_future()  # until killed


async def echo(port: int, latency: float = 0.0) -> None:
    """Answer commands until killed, each ``latency`` seconds after it came."""
    states: dict[str, bool] = {}
    async with make_client(port) as client:
        await client.subscribe("iot/+/command", qos=1)
        print("ready", flush=True)  # noqa: T201
        async with asyncio.TaskGroup() as tasks:

            def reply(message: aiomqtt.Message) -> None:
                assert isinstance(message.payload, bytes)
                for topic, payload, retain in answer(message.topic.value, message.payload, states):
                    tasks.create_task(
                        client.publish(topic, payload, qos=1, retain=retain, timeout=math.inf)
                    )

            async def reply_later(message: aiomqtt.Message) -> None:
                await asyncio.sleep(latency)
                reply(message)

            async for message in client.messages:
                if latency:
                    tasks.create_task(reply_later(message))
                else:
                    reply(message)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--direct", action="store_true", help="beneath aiomqtt's API (paho)")
    args = parser.parse_args()
    asyncio.run(echo_direct(args.port) if args.direct else echo(args.port, args.latency))
