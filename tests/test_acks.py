"""The acknowledgement window and redelivery matching as state machines (no broker)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from gateway.broker.acks import RECENT_ACKS, AckWindow, Delivery, Redeliveries, message_key
from gateway.core.backoff import Backoff


@given(st.permutations(list(range(20))))
def test_acks_go_out_in_arrival_order_whatever_the_completion_order(order: list[int]) -> None:
    sent: list[int] = []
    window = AckWindow(sent.append)
    deliveries = [Delivery(key=mid) for mid in range(20)]
    for mid, delivery in enumerate(deliveries):
        window.add(delivery, mid)
    for index in order:
        deliveries[index].settle()
        # Only a prefix of the arrivals is ever acknowledged, never past a gap.
        assert sent == list(range(len(sent)))
        assert all(deliveries[mid].settled for mid in sent)
    assert sent == list(range(20))
    assert len(window) == 0


def test_a_settled_message_at_the_front_is_acked_at_once() -> None:
    sent: list[int] = []
    window = AckWindow(sent.append)
    done = Delivery(key="a")
    done.settle()
    window.add(done, 7)
    assert sent == [7]


def test_a_closed_window_hands_over_the_unacked_and_the_recently_acked() -> None:
    sent: list[int] = []
    window = AckWindow(sent.append)
    first, second = Delivery(key="first"), Delivery(key="second")
    window.add(first, 1)
    window.add(second, 2)
    first.settle()
    in_hand, recent = window.close()
    assert in_hand == [second]
    assert recent == ["first"]
    second.settle()  # settling after the connection is gone sends nothing
    assert sent == [1]


def test_a_redelivery_of_a_message_in_hand_is_matched_once() -> None:
    redeliveries = Redeliveries()
    in_hand = Delivery(key="k")
    redeliveries.expect([in_hand], [])
    assert redeliveries.match("k") is in_hand
    assert redeliveries.match("k") is None  # a second DUP copy is a new message


def test_a_redelivery_of_an_answered_message_is_only_acknowledged() -> None:
    redeliveries = Redeliveries()
    redeliveries.expect([], ["k", "k"])
    for _ in range(2):
        matched = redeliveries.match("k")
        assert matched is not None
        assert matched.settled
    assert redeliveries.match("k") is None


def test_answered_keys_stay_bounded() -> None:
    redeliveries = Redeliveries()
    for batch in range(10):
        redeliveries.expect([], [f"{batch}-{i}" for i in range(RECENT_ACKS)])
    assert redeliveries.match("0-0") is None  # the oldest were forgotten
    assert redeliveries.match("9-0") is not None


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_message_keys_are_small_and_tell_different_messages_apart(a: bytes, b: bytes) -> None:
    key_a = message_key("iot/x/command", a, retain=False, response_topic=None)
    assert len(key_a) == 16
    assert key_a == message_key("iot/x/command", a, retain=False, response_topic=None)
    if a != b:
        assert key_a != message_key("iot/x/command", b, retain=False, response_topic=None)
    assert key_a != message_key("iot/x/command", a, retain=True, response_topic=None)
    assert key_a != message_key("iot/y/command", a, retain=False, response_topic=None)
    assert key_a != message_key("iot/x/command", a, retain=False, response_topic="replies/x")


@given(
    st.floats(min_value=0.001, max_value=10),
    st.floats(min_value=0.001, max_value=100),
    st.integers(min_value=1, max_value=60),
)
def test_backoff_stays_within_its_bounds_and_grows(low: float, high: float, tries: int) -> None:
    backoff = Backoff(low, high)
    delays = [backoff.next_delay() for _ in range(tries)]
    assert all(backoff.min_delay <= d <= backoff.max_delay for d in delays)
    # Each delay's range starts where the previous one's ended: never far below it.
    assert all(later >= earlier / 2 - 1e-9 for earlier, later in itertools.pairwise(delays))
    backoff.reset()
    assert backoff.next_delay() == backoff.min_delay
