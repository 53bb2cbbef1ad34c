"""The ceiling: the least an aiomqtt client must do per command, tuned fairly.

For each command it parses the JSON and publishes the same two messages the
gateway does (the result, and the retained state), concurrently, with a large
in-flight window and TCP_NODELAY. Run as ``python -m bench.echo --port N``;
``--latency S`` answers each command S seconds later, concurrently, like a
device that takes that long.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import socket

import aiomqtt

from bench.answers import answer


async def echo(port: int, latency: float = 0.0) -> None:
    """Answer commands until killed, each ``latency`` seconds after it came."""
    states: dict[str, bool] = {}
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier="echo",
        protocol=aiomqtt.ProtocolVersion.V5,
        max_inflight_messages=65535,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        timeout=60,
    ) as client:
        client.pending_calls_threshold = 1 << 30
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
    args = parser.parse_args()
    asyncio.run(echo(args.port, args.latency))
