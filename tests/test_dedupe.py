"""The dedupe window as a state machine: bounded by age, count and bytes, oldest first."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from gateway.core.commands import Result, as_duplicate
from gateway.core.dedupe import ENTRY_OVERHEAD, DedupeWindow
from gateway.core.errors import CommandError, ErrorCode

if TYPE_CHECKING:
    import pytest


def finished(window: DedupeWindow, command_id: str, state: dict[str, str]) -> None:
    """Remember ``command_id`` and answer it with ``state``, as the dispatcher does."""
    done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
    window.remember("speaker", command_id, done)
    result = Result(id=command_id, device="speaker", action="play", state=state)
    done.set_result(result)
    window.answered("speaker", command_id, result, result.to_json())


async def settle() -> None:
    """Let done callbacks run."""
    await asyncio.sleep(0)


async def test_large_results_are_bounded_in_bytes_forgetting_the_oldest_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    window = DedupeWindow(window=600, max_ids=100_000, max_bytes=1_000_000)
    for index in range(100):
        finished(window, f"c{index}", {"playing": "x" * 60_000})
        await settle()
        assert window.size_bytes <= 1_000_000
    assert len(window) == 1_000_000 // (60_000 + ENTRY_OVERHEAD)
    assert window.get("speaker", "c0") is None
    newest = window.get("speaker", "c99")
    assert isinstance(newest, tuple)
    assert b'"id":"c99"' in newest[0]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "gateway.dedupe_max_bytes" in warnings[0].getMessage()


async def test_the_count_bound_still_holds_for_small_results() -> None:
    window = DedupeWindow(window=600, max_ids=10, max_bytes=10**9)
    for index in range(25):
        finished(window, f"c{index}", {"power": "on"})
    await settle()
    assert len(window) == 10
    assert [window.get("speaker", f"c{i}") is not None for i in (14, 15, 24)] == [
        False,
        True,
        True,
    ]


async def test_a_pending_command_is_found_and_its_error_kept_compact() -> None:
    window = DedupeWindow(window=600, max_ids=10, max_bytes=10**6)
    done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
    window.remember("speaker", "p", done)
    assert window.get("speaker", "p") is done
    error = CommandError(ErrorCode.PRECONDITION_FAILED, "the speaker is off")
    result = Result(id="p", device="speaker", action="play", error=error)
    window.answered("speaker", "p", result, result.to_json())
    stored = window.get("speaker", "p")
    assert isinstance(stored, tuple)
    assert stored[1:] == ("precondition_failed", "the speaker is off")


async def test_ids_are_forgotten_after_the_window() -> None:
    window = DedupeWindow(window=0.05, max_ids=10, max_bytes=10**6)
    finished(window, "old", {"power": "on"})
    await settle()
    assert window.get("speaker", "old") is not None
    await asyncio.sleep(0.1)  # the window itself is what is tested: let it pass
    assert window.get("speaker", "old") is None
    assert window.size_bytes == 0


def test_a_repeat_is_the_first_payload_marked_duplicate() -> None:
    result = Result(id="r", device="speaker", action="play", state={"playing": "é ♪"})
    repeat = json.loads(as_duplicate(result.to_json()))
    assert repeat == {**json.loads(result.to_json()), "duplicate": True}
