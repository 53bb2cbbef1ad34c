"""The core: from a command message to its one result, with no I/O of its own.

Commands and results (``commands``, ``errors``), the dispatcher and its dedupe
window, the gateway's own commands (``gateway_commands``, ``describe``,
``scenes``), the devices (``fleet``; per device ``device_runner`` with its
``device_link``, ``command_worker`` and ``state_publisher``), the outbox
(``messages``), the event stream (``events``) and the lifecycle that ties them
(``runtime.Core``). It may import ``devices`` and ``gateway.config``; never the
broker session, a surface or the command line (``tests/test_layering.py``).
"""

from gateway.core.runtime import Core

__all__ = ["Core"]
