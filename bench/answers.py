"""What both ceiling echoes answer to a command: the gateway's two messages.

No imports beyond the standard library: the mqtt5 echo runs from its own venv.
"""

from __future__ import annotations

import json


def answer(topic: str, payload: bytes, states: dict[str, bool]) -> list[tuple[str, bytes, bool]]:
    """``(topic, payload, retain)`` of the retained state and the result of a toggle."""
    device = topic.split("/")[1]
    command = json.loads(payload)
    states[device] = not states.get(device, False)
    state = {"power": "on" if states[device] else "off"}
    result = {
        "id": command["id"],
        "device": device,
        "action": command["action"],
        "status": "ok",
        "error": None,
        "state": state,
        "duplicate": False,
        "duration_ms": 0.0,
    }
    return [
        (f"iot/{device}/state", json.dumps(state).encode(), True),
        (f"iot/{device}/result", json.dumps(result).encode(), False),
    ]
