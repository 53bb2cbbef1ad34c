"""The ``iot-gateway`` command: the only place that maps errors to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import gc
import json
import logging
import os
import sys
from typing import TYPE_CHECKING

from gateway import tools
from gateway.config import CONFIG_ENV_VAR, ConfigError, load_config
from gateway.http import HttpServerError
from gateway.logs import setup_logging
from gateway.registry import AdapterRegistry
from gateway.supervisor import Gateway, install_signal_handlers

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gateway.config import Config

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: no result came in time, or no broker
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h; systemd units skip restarts on it
GC_PAUSE_LIMIT = 60.0  # seconds start-up may run without garbage collection

log = logging.getLogger("gateway")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    args = _parser().parse_args(argv)
    if args.command == "run":
        # Start-up builds tens of thousands of objects for 10,000 devices, none of
        # them garbage; collecting meanwhile cost about a third of the start-up.
        gc.disable()
    path = args.config or os.environ.get(CONFIG_ENV_VAR)
    try:
        config = load_config(path, AdapterRegistry.from_entry_points())
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)  # noqa: T201
        return EXIT_CONFIG
    if args.command == "check-config":
        print(f"{path}: OK ({len(config.devices)} devices)")  # noqa: T201
        return EXIT_OK
    if args.command == "send":
        return send(config, args.device, args.action, args.params, args.wait)
    if args.command == "watch":
        return watch(config)
    return run(config)


def send(config: Config, device: str, action: str, pairs: list[str], wait: float) -> int:
    """Send one command and print its result: 0 on ok, 1 on an error result, 69 on none."""
    try:
        params = tools.parse_params(pairs)
    except ValueError as exc:
        print(f"iot-gateway send: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_FAILURE
    try:
        result = asyncio.run(tools.send(config.settings.mqtt, device, action, params, wait))
    except ConnectionError as exc:
        print(f"iot-gateway send: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_UNAVAILABLE
    if result is None:
        print(f"iot-gateway send: no result within {wait:g} s", file=sys.stderr)  # noqa: T201
        return EXIT_UNAVAILABLE
    print(json.dumps(result, indent=2))  # noqa: T201
    return EXIT_OK if result.get("status") == "ok" else EXIT_FAILURE


def watch(config: Config) -> int:
    """Print results, state and availability as they come, until Ctrl-C."""
    try:
        asyncio.run(tools.watch(config.settings.mqtt, lambda line: print(line, flush=True)))  # noqa: T201
    except KeyboardInterrupt:
        return EXIT_OK
    except ConnectionError as exc:
        print(f"iot-gateway watch: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_UNAVAILABLE
    return EXIT_OK


def run(config: Config) -> int:
    """Run the daemon until a signal; 0 after a clean stop, 1 on a crash."""
    setup_logging(config.settings.logging)
    # A fatal signal prints every thread's stack first: systemd's watchdog kills a
    # blocked loop with SIGABRT, and the journal then shows where it was stuck.
    if not faulthandler.is_enabled():
        faulthandler.enable()
    try:
        asyncio.run(_serve(config))
    except SystemExit as exc:
        return int(exc.code or 0)
    except Exception as exc:
        known = _startup_error(exc)
        if known is not None:  # the message says it all; a traceback would bury it
            log.error("%s", known)  # noqa: TRY400
        else:
            log.exception("the gateway crashed")
        return EXIT_FAILURE
    return EXIT_OK


def _startup_error(exc: BaseException) -> HttpServerError | None:
    """The HTTP server's bind failure, if that is what ended the run (maybe in a group)."""
    if isinstance(exc, HttpServerError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _startup_error(inner)) is not None:
                return found
    return None


async def _serve(config: Config) -> None:
    gateway = Gateway(config, AdapterRegistry.from_entry_points())
    install_signal_handlers(gateway)
    collector = asyncio.create_task(_collect_after_start(gateway))
    try:
        await gateway.serve()
    finally:
        collector.cancel()


async def _collect_after_start(gateway: Gateway) -> None:
    """Turn garbage collection back on (see ``main``) once every device has started.

    Whatever happens: after ``GC_PAUSE_LIMIT`` seconds at the latest, or when
    the run ends early, collection comes back on.
    """
    try:
        async with asyncio.timeout(GC_PAUSE_LIMIT):
            await gateway.fleet.all_started.wait()
    except TimeoutError:
        log.debug("devices still starting after %g s; collecting garbage again", GC_PAUSE_LIMIT)
    finally:
        gc.freeze()  # what start-up built lives as long as the process: never scan it again
        gc.enable()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iot-gateway", description="MQTT IoT gateway daemon.")
    commands = parser.add_subparsers(dest="command", required=True)
    parsers = {}
    for name, text in (
        ("run", "run the gateway until SIGTERM or SIGINT"),
        ("check-config", "validate the configuration without connecting"),
        ("send", "send one command, wait for its result and print it"),
        ("watch", "print results, state and availability as they come"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            help=f"YAML configuration file (default: ${CONFIG_ENV_VAR})",
        )
        parsers[name] = command
    send_parser = parsers["send"]
    send_parser.add_argument("device")
    send_parser.add_argument("action")
    send_parser.add_argument("params", nargs="*", metavar="key=value", help="JSON values or text")
    send_parser.add_argument(
        "--wait", type=float, default=10, metavar="SECONDS", help="how long to wait (10)"
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
