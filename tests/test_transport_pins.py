"""Every private detail of aiomqtt 2.5 and paho that gateway/broker/aiomqtt_transport.py relies on.

The transport reaches beneath aiomqtt's public API (see its module docstring).
An upgrade that moves any of these fails here, by name, instead of silently at
run time.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.broker.aiomqtt_transport import AIOMQTT_TIMEOUT, AiomqttTransport
from gateway.config import MqttSettings


def a_client() -> aiomqtt.Client:
    """The client the transport makes, not connected (it needs a running loop)."""
    transport = AiomqttTransport(MqttSettings(), will_topic="iot/gateway/status")
    return transport._new_client("5")  # noqa: SLF001 - what is pinned is what it makes


def test_the_pinned_versions() -> None:
    assert version("aiomqtt").startswith("2."), (
        "aiomqtt 3 is a rewrite: redo gateway/broker/aiomqtt_transport.py"
    )
    assert version("paho-mqtt").startswith("2.")


async def test_aiomqtt_wraps_a_paho_client_with_callback_api_2() -> None:
    client = a_client()
    wrapped = client._client  # noqa: SLF001
    assert isinstance(wrapped, paho.Client)
    assert wrapped._callback_api_version is CallbackAPIVersion.VERSION2  # noqa: SLF001
    # aiomqtt installs these; the transport wraps or replaces them.
    assert wrapped.on_publish is not None
    assert wrapped.on_socket_register_write is not None
    assert hasattr(client, "pending_calls_threshold")


async def test_paho_offers_what_the_link_calls() -> None:
    wrapped = a_client()._client  # noqa: SLF001
    for method in ("manual_ack_set", "ack", "publish", "loop_write", "want_write", "socket"):
        assert callable(getattr(wrapped, method)), method
    assert list(inspect.signature(wrapped.ack).parameters) == ["mid", "qos"]
    assert "properties" in inspect.signature(wrapped.publish).parameters
    assert "on" in inspect.signature(wrapped.manual_ack_set).parameters


def test_paho_messages_carry_mid_qos_dup_and_raw_topic() -> None:
    message = paho.MQTTMessage(mid=7, topic=b"iot/a/command")
    message.dup = True
    assert (message.mid, message.qos, message.dup) == (7, 0, True)
    assert message._topic == b"iot/a/command"  # noqa: SLF001 - read when not UTF-8


def test_aiomqtt_on_publish_takes_the_reason_code() -> None:
    parameters = list(inspect.signature(aiomqtt.Client._on_publish).parameters)  # noqa: SLF001
    assert parameters == ["self", "client", "userdata", "mid", "reason_code", "properties"]


def test_aiomqtt_client_takes_the_options_the_transport_passes() -> None:
    options = inspect.signature(aiomqtt.Client.__init__).parameters
    for name in (
        "clean_start",
        "clean_session",
        "properties",
        "tls_context",
        "socket_options",
        "max_inflight_messages",
        "logger",
        "will",
        "timeout",
        "identifier",
    ):
        assert name in options, name


def test_aiomqtt_on_connect_takes_the_connack_flags() -> None:
    # The link wraps it to read Session Present (ConnectFlags.session_present).
    parameters = list(inspect.signature(aiomqtt.Client._on_connect).parameters)  # noqa: SLF001
    assert parameters[:4] == ["self", "client", "userdata", "flags"]
    assert "session_present" in paho.ConnectFlags._fields


def test_aiomqtt_says_operation_timed_out_when_no_connack_comes() -> None:
    # `mqtt.protocol: auto` falls back to 3.1.1 on this text (see _refused_v5).
    source = inspect.getsource(aiomqtt.Client._wait_for)  # noqa: SLF001
    assert repr(AIOMQTT_TIMEOUT) in source.replace('"', "'")
