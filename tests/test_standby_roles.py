"""The standby group's role rules (``gateway/broker/standby.py``), with no broker."""

from __future__ import annotations

import itertools
import math

import pytest

from gateway.broker.standby import PeerState, Role, RoleMachine

DELAY = 2.0


def machine(name: str = "b", *, now: float = 0.0) -> RoleMachine:
    roles = RoleMachine(name, takeover_delay=DELAY, now=now)
    roles.watching(connected=True, now=now)
    return roles


def active_elsewhere(roles: RoleMachine, who: str = "a", now: float = 0.0) -> None:
    roles.saw_status("online", now)
    roles.saw_health(who, now)


def test_a_lone_instance_with_no_status_takes_over_after_watching() -> None:
    roles = machine()
    assert roles.role is Role.STANDBY
    assert roles.takeover_at() == DELAY  # it watches first: a peer started with it shows up
    assert not roles.may_take_over(DELAY - 0.1)
    assert roles.may_take_over(DELAY)


def test_nothing_is_decided_blind_and_a_reconnected_watcher_watches_again() -> None:
    roles = RoleMachine("a", takeover_delay=DELAY, now=0.0)
    assert not roles.may_take_over(100.0)  # the watcher never connected
    roles.watching(connected=True, now=100.0)
    assert roles.takeover_at() == 100.0 + DELAY
    roles.watching(connected=False, now=101.0)
    assert not roles.may_take_over(1000.0)
    roles.watching(connected=True, now=1000.0)
    assert roles.takeover_at() == 1000.0 + DELAY


def test_a_peer_saying_it_is_active_holds_back_until_its_will_clears_it() -> None:
    roles = machine()
    roles.saw_status("offline", 0.0)
    roles.saw_peer("a", PeerState.ACTIVE, 0.0)
    assert not roles.eligible
    roles.saw_peer("a", None, 1.0)
    assert roles.takeover_at() == DELAY


def test_no_takeover_while_another_instance_is_active() -> None:
    roles = machine()
    active_elsewhere(roles)
    assert not roles.eligible
    assert roles.takeover_at() == math.inf
    assert roles.active_instance() == "a"


def test_offline_starts_the_turn_from_when_it_was_seen() -> None:
    roles = machine()
    active_elsewhere(roles)
    roles.saw_status("offline", 10.0)
    assert roles.takeover_at() == 10.0
    assert roles.may_take_over(10.0)


def test_status_back_online_before_the_turn_cancels_it() -> None:
    roles = machine("c")
    roles.saw_peer("b", PeerState.STANDBY, 0.0)
    active_elsewhere(roles)
    roles.saw_status("offline", 10.0)
    assert roles.takeover_at() == 10.0 + DELAY  # b goes first
    roles.saw_status("online", 10.5)  # b did
    roles.saw_health("b", 10.5)
    assert not roles.may_take_over(20.0)


def test_standbys_take_turns_by_name() -> None:
    group = {name: machine(name) for name in "bcd"}
    for roles, peer in itertools.permutations(group.values(), 2):
        roles.saw_peer(peer.instance, PeerState.STANDBY, 0.0)
    for roles in group.values():
        active_elsewhere(roles)
        roles.saw_status("offline", 5.0)
    assert [group[name].takeover_at() for name in "bcd"] == [5.0, 5.0 + DELAY, 5.0 + 2 * DELAY]


def test_a_peer_taking_over_holds_every_other_back_until_its_record_goes() -> None:
    roles = machine("a")  # first by name, yet b is already on its way
    roles.saw_status("offline", 5.0)
    roles.saw_peer("b", PeerState.TAKING_OVER, 5.0)
    assert not roles.eligible
    roles.saw_peer("b", None, 8.0)  # b died while taking over: its will cleared its record
    assert roles.takeover_at() == 8.0


def test_its_own_record_is_not_a_peer() -> None:
    roles = machine("a")
    roles.saw_peer("a", PeerState.TAKING_OVER, 0.0)
    assert roles.eligible


def test_becoming_active_then_stepping_down() -> None:
    roles = machine("a")
    assert roles.may_take_over(DELAY)
    assert roles.record() == "standby"
    assert "now active" in roles.became_active(DELAY)
    assert roles.role is Role.ACTIVE
    assert roles.record() == "active"
    assert roles.since == DELAY
    assert not roles.eligible  # an active never takes over again
    line = roles.stepped_down("session taken over", 30.0)
    assert "stepped down" in line
    assert "session taken over" in line
    assert (roles.role, roles.since) == (Role.STANDBY, 30.0)
    assert roles.changes == {Role.ACTIVE: 1, Role.STANDBY: 1}


def test_a_stepped_down_instance_never_takes_the_session_straight_back() -> None:
    """b took a's session: a sees its own will's `offline` and its own stale health first."""
    a = machine("a")
    a.saw_peer("b", PeerState.STANDBY, 0.0)
    a.saw_status("online", 0.0)
    a.saw_health("a", 0.0)
    a.became_active(0.0)
    a.saw_peer("b", None, 50.0)  # b is taking over: its record is cleared as it goes active
    a.stepped_down("session taken over", 50.0)
    a.saw_status("offline", 50.0)  # a's own will, published at the takeover
    assert a.takeover_at() == 50.0 + DELAY  # not at once
    a.saw_status("online", 50.1)  # b's announcements
    a.saw_health("b", 50.1)
    assert not a.may_take_over(math.inf)
    assert a.rank() == 0  # an ordinary standby again: next time it goes by name


def test_a_stepped_down_instance_goes_after_every_other_standby() -> None:
    a = machine("a")
    for peer in "bc":
        a.saw_peer(peer, PeerState.STANDBY, 0.0)
    a.became_active(0.0)
    a.stepped_down("connection lost", 10.0)
    a.saw_status("offline", 10.0)
    assert a.takeover_at() == 10.0 + 3 * DELAY


def test_a_stale_online_naming_itself_is_taken_back_after_its_turn() -> None:
    """A broker restart kept the retained `online` and fired no will: nobody else is active."""
    a = machine("a")
    a.saw_status("online", 0.0)
    a.saw_health("a", 0.0)
    a.became_active(DELAY)
    a.stepped_down("connection lost", 20.0)
    assert a.eligible
    assert a.takeover_at() == 20.0 + DELAY  # no other standby: one turn, then it goes
    b = machine("b")
    b.saw_status("online", 0.0)
    b.saw_health("a", 0.0)
    assert not b.eligible  # for anyone else that `online` is a live active


@pytest.mark.parametrize("start_gap", [0.0, 0.3, 1.9])
def test_two_started_together_one_goes_the_other_waits(start_gap: float) -> None:
    a, b = machine("a", now=0.0), machine("b", now=start_gap)
    a.saw_peer("b", PeerState.STANDBY, start_gap)
    b.saw_peer("a", PeerState.STANDBY, start_gap)
    assert a.takeover_at() == DELAY
    assert b.takeover_at() == start_gap + 2 * DELAY
    a.became_active(DELAY)
    b.saw_peer("a", PeerState.TAKING_OVER, DELAY)  # a says so before it connects
    assert not b.may_take_over(math.inf)


def test_the_turn_moves_up_when_an_earlier_standby_leaves() -> None:
    c = machine("c")
    c.saw_peer("a", PeerState.STANDBY, 0.0)
    c.saw_peer("b", PeerState.STANDBY, 0.0)
    active_elsewhere(c)
    c.saw_status("offline", 10.0)
    assert c.takeover_at() == 10.0 + 2 * DELAY
    c.saw_peer("a", None, 11.0)
    assert c.takeover_at() == 10.0 + DELAY


def test_a_cleared_status_counts_as_none() -> None:
    roles = machine()
    active_elsewhere(roles)
    roles.saw_status(None, 3.0)
    assert roles.takeover_at() == 3.0
