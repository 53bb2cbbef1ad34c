"""Gateway command ``describe``: the retained listings, as a result, for clients that need one.

Some clients cannot read retained messages (a bridge, a serverless function that
only publishes and awaits one reply); ``describe`` gives them what the retained
``gateway/devices`` and ``gateway/scenes`` say, and the gateway's own actions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from devices import NoParams
from gateway.core.commands import Result
from gateway.core.topics import GATEWAY

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.core.commands import Command
    from gateway.core.gateway_commands import Begin, GatewayCommands

    Listing = Callable[[], list[dict[str, Any]]]


def register(commands: GatewayCommands, *, devices: Listing, scenes: Listing) -> None:
    """Add ``describe``: the lists ``devices()`` and ``scenes()`` and ``commands``' schemas.

    Args:
        commands: the registry to add to; its own actions are listed too.
        devices: makes the retained ``gateway/devices`` list.
        scenes: makes the retained ``gateway/scenes`` list.
    """

    def prepare(command: Command, _: NoParams) -> Begin:
        # Made when it runs, from the same functions as the retained payloads,
        # so the two always say the same.
        return lambda: Result(
            id=command.id,
            device=GATEWAY,
            action=command.action,
            extra={
                "devices": devices(),
                "scenes": scenes(),
                "gateway_actions": commands.schemas(),
            },
        )

    commands.register("describe", NoParams, prepare)
