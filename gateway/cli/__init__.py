"""The ``iot-gateway`` command: the only place that maps errors to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import gc
import importlib.metadata
import json
import logging
import math
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from gateway.broker.aiomqtt_transport import PublishRefusedError, SubscribeRefusedError
from gateway.cli import tools
from gateway.config import (
    CONFIG_ENV_VAR,
    DEVICE_ID,
    ConfigError,
    load_config,
    read_yaml,
    settings_from_environment,
)
from gateway.core.logs import setup_logging
from gateway.core.registry import AdapterRegistry
from gateway.supervisor import Gateway, install_signal_handlers, serve_in_group
from gateway.surfaces.http import HttpServerError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gateway.config import Config, MqttSettings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # argparse's own
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: no result came in time, or no broker
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h; systemd units skip restarts on it
GC_PAUSE_LIMIT = 60.0  # seconds start-up may run without garbage collection
DISTRIBUTION = "iot-gateway"  # the [project] name in pyproject.toml
TOOLS = frozenset({"send", "watch"})
BROKER_FLAGS = ("host", "port", "username")

EXIT_STATUS = """\
exit status:
  0   send: the result's status is ok; check-config: the configuration is valid;
      run: stopped by SIGTERM or SIGINT
  1   send: an error result; any command: any other failure
  2   usage error (unknown command or option, missing or ill-formed argument)
  69  send, watch: no result in time, the broker unreachable or refusing the
      login, or the broker refusing the publish
  78  bad or missing configuration
"""

log = logging.getLogger("gateway")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    args = _parser().parse_args(argv)
    if args.command in TOOLS:
        return _run_tool(args)
    if args.command == "run":
        # Start-up builds tens of thousands of objects for 10,000 devices, none of
        # them garbage; collecting meanwhile cost about a third of the start-up.
        gc.disable()
    path = args.config or os.environ.get(CONFIG_ENV_VAR)
    try:
        config = load_config(path, AdapterRegistry.from_entry_points())
    except ConfigError as exc:
        return _config_failed(exc)
    if args.command == "check-config":
        count = len(config.devices)
        print(f"{path}: OK ({count} device{'' if count == 1 else 's'})")  # noqa: T201
        return EXIT_OK
    return run(config)


def _run_tool(args: argparse.Namespace) -> int:
    try:
        settings = tool_settings(args)
    except ConfigError as exc:
        return _config_failed(exc)
    if args.command == "send":
        return send(settings, args.device, args.action, dict(args.params), args.wait)
    return watch(settings)


def _config_failed(exc: ConfigError) -> int:
    for problem in exc.problems:
        print(f"config error: {problem}", file=sys.stderr)  # noqa: T201
    return EXIT_CONFIG


def tool_settings(args: argparse.Namespace) -> MqttSettings:
    """The broker settings for ``send`` and ``watch``: a file or none, then the flags.

    With a file (``-c`` or ``$GATEWAY_CONFIG``) it is read and checked as ``run``
    would, environment overrides included; without one, the ``GATEWAY_MQTT__*``
    variables alone apply. ``--host``, ``--port`` and ``--username`` override both.

    Raises:
        ConfigError: the file or an environment variable is wrong.
    """
    path = args.config or os.environ.get(CONFIG_ENV_VAR)
    if path:
        settings = load_config(path, AdapterRegistry.from_entry_points()).settings
    else:
        settings = settings_from_environment()
    flags = {name: value for name in BROKER_FLAGS if (value := getattr(args, name)) is not None}
    mqtt = settings.mqtt.model_copy(update=flags)
    gateway_user = _file_username(path) if path else None
    if gateway_user is not None and mqtt.username == gateway_user:
        _say(
            args.command,
            f"warning: {gateway_user!r} is the gateway's own user (mqtt.username in {path});"
            " a broker that binds client ids to usernames (use_username_as_clientid)"
            " disconnects the gateway for this tool: log in as a client user"
            " (--username, GATEWAY_MQTT__USERNAME)",
        )
    return mqtt


def _file_username(path: str) -> str | None:
    """``mqtt.username`` as the file says it: the gateway's, whatever our environment says."""
    section = read_yaml(path).get("mqtt")
    username = section.get("username") if isinstance(section, dict) else None
    return username if isinstance(username, str) else None


def send(
    settings: MqttSettings, device: str, action: str, params: dict[str, Any], wait: float
) -> int:
    """Send one command and print its result: 0 on ok, 1 on an error result, 69 on none."""
    try:
        result = asyncio.run(tools.send(settings, device, action, params, wait))
    except (PublishRefusedError, SubscribeRefusedError) as exc:
        _say("send", f"{exc}; check the username and the broker's ACL")
        return EXIT_UNAVAILABLE
    except ConnectionError as exc:
        _say("send", str(exc))
        return EXIT_UNAVAILABLE
    if result is None:
        # MQTT 3.1.1 has no PUBACK reason: a broker acknowledges what its ACL drops.
        maybe_refused = settings.protocol == "3.1.1"
        hint = " (or the broker's ACL refused the command: MQTT 3.1.1 cannot say)"
        _say("send", f"no result within {wait:g} s{hint if maybe_refused else ''}")
        return EXIT_UNAVAILABLE
    with contextlib.suppress(BrokenPipeError):  # `send ... | head`: the reader left early
        _print(json.dumps(result, indent=2))
    return EXIT_OK if result.get("status") == "ok" else EXIT_FAILURE


def watch(settings: MqttSettings) -> int:
    """Print results, state and availability as they come, until Ctrl-C."""
    try:
        asyncio.run(tools.watch(settings, _print))
    except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C, or `watch | head` had enough
        return EXIT_OK
    except SubscribeRefusedError as exc:
        _say("watch", f"{exc}; check the username and the broker's ACL")
        return EXIT_UNAVAILABLE
    except ConnectionError as exc:
        _say("watch", str(exc))
        return EXIT_UNAVAILABLE
    return EXIT_OK


def _print(text: str) -> None:
    """Print to stdout now; when its reader has gone, quiet the interpreter's last flush."""
    try:
        print(text, flush=True)  # noqa: T201
    except BrokenPipeError:
        # Python's recipe (signal docs, "Note on SIGPIPE"): stdout to /dev/null, so
        # exiting does not print a second BrokenPipeError.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise


def _say(command: str, message: str) -> None:
    print(f"iot-gateway {command}: {message}", file=sys.stderr)  # noqa: T201


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
    if config.settings.standby.enabled:
        gc.enable()  # a standby may never start its devices: collect from the start
        await serve_in_group(config, AdapterRegistry.from_entry_points())
        return
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


class _Parser(argparse.ArgumentParser):
    """argparse's parser, saying a usage error in one line (and exiting 2, as it does)."""

    def error(self, message: str) -> NoReturn:
        """``PROG: MESSAGE (see PROG --help)`` on stderr, exit 2."""
        line = " ".join(message.split())
        self.exit(EXIT_USAGE, f"{self.prog}: {line} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="iot-gateway",
        description="MQTT IoT gateway daemon.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"iot-gateway {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("run", "run the gateway until SIGTERM or SIGINT"),
        ("check-config", "validate the configuration without connecting"),
        ("send", "send one command, wait for its result and print it"),
        ("watch", "print results, state and availability as they come"),
    ):
        command = commands.add_parser(
            name,
            help=text,
            description=text,
            epilog=EXIT_STATUS,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name in TOOLS:
            _add_broker_options(command)
        else:
            command.add_argument(
                "-c",
                "--config",
                metavar="FILE",
                help=f"YAML configuration file (default: ${CONFIG_ENV_VAR})",
            )
        if name == "send":
            _add_command_arguments(command)
    return parser


def _add_broker_options(command: argparse.ArgumentParser) -> None:
    group = command.add_argument_group(
        "broker",
        "The file is optional: without one, the GATEWAY_MQTT__* variables apply\n"
        "(GATEWAY_MQTT__PASSWORD, GATEWAY_MQTT__BASE_TOPIC, ...). These options override\n"
        "the file and the variables. The password is never an option: set\n"
        "GATEWAY_MQTT__PASSWORD (or put it in the file).",
    )
    group.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help=f"YAML configuration file, of which only mqtt is used (default: ${CONFIG_ENV_VAR})",
    )
    group.add_argument("--host", help="broker host (default: localhost)")
    group.add_argument("--port", type=_port, help="broker port (default: 1883)")
    group.add_argument("--username", help="log in as this user, a client user, not the gateway's")


def _add_command_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("device", type=_device_id, help="a device id, or gateway")
    command.add_argument("action")
    command.add_argument(
        "params",
        nargs="*",
        type=_param,
        default=[],
        metavar="key=value",
        help="params: JSON values or text",
    )
    command.add_argument(
        "--wait", type=_seconds, default=10, metavar="SECONDS", help="how long to wait (10)"
    )


def _param(text: str) -> tuple[str, Any]:
    try:
        return tools.parse_param(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _device_id(text: str) -> str:
    if not DEVICE_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must match {DEVICE_ID.pattern}, got {text!r}")
    return text


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:  # noqa: PLR2004 - TCP's range
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {text!r}")
    return port


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return seconds


def _version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # a source tree never installed
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
