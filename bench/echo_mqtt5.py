"""The ceiling on the next aiomqtt's protocol core: an echo on the ``mqtt5`` package.

``mqtt5`` (Rust, sans-IO) is what aiomqtt 3 is built on. This echo does what
``bench/echo.py`` does (parse each command, publish result and retained state
at QoS 1) with mqtt5's codec over asyncio streams. It runs in a separate venv,
as the gateway's does not have mqtt5::

    python3 -m venv /tmp/venv-mqtt5 && /tmp/venv-mqtt5/bin/pip install mqtt5
    /tmp/venv-mqtt5/bin/python -m bench.echo_mqtt5 --port N   # from the repo root

``python -m bench.run --mqtt5-python /tmp/venv-mqtt5/bin/python`` measures it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import socket

import mqtt5  # type: ignore[import-not-found, unused-ignore]

from bench.answers import answer


async def echo(port: int) -> None:
    """Answer commands until killed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ids = (n % 65535 + 1 for n in itertools.count())
    writer.write(mqtt5.ConnectPacket("echo-mqtt5", keep_alive=60).write())
    topic_filter = mqtt5.TopicFilter("iot/+/command", max_qos=mqtt5.QoS.AT_LEAST_ONCE)
    writer.write(mqtt5.SubscribePacket(next(ids), [topic_filter]).write())
    states: dict[str, bool] = {}
    buffer = bytearray()
    ready = False
    while data := await reader.read(1 << 16):
        buffer += data
        while True:
            try:
                packet, size = mqtt5.read(memoryview(buffer))
            except IndexError:  # not a whole packet yet
                break
            del buffer[:size]
            if isinstance(packet, mqtt5.SubAckPacket) and not ready:
                ready = True
                print("ready", flush=True)  # noqa: T201
            if isinstance(packet, mqtt5.PublishPacket):
                writer.write(mqtt5.PubAckPacket(packet.packet_id).write())
                for topic, payload, retain in answer(packet.topic, packet.payload, states):
                    qos = mqtt5.QoS.AT_LEAST_ONCE
                    publish = mqtt5.PublishPacket(
                        topic, payload, qos=qos, retain=retain, packet_id=next(ids)
                    )
                    writer.write(publish.write())
        await writer.drain()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(echo(parser.parse_args().port))
