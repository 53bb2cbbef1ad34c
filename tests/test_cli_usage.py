"""``iot-gateway`` as people type it: the version, the help, and usage errors."""

from __future__ import annotations

import importlib.metadata

import pytest

from tests.test_cli_tools import cli


async def test_version_is_the_installed_distributions() -> None:
    code, out, err = await cli("--version")
    assert (code, err) == (0, "")
    assert out == f"iot-gateway {importlib.metadata.version('iot-gateway')}\n"


async def test_help_lists_the_exit_codes() -> None:
    code, out, _ = await cli("--help")
    assert code == 0
    table = out.split("exit status:\n", 1)[1]
    for line in (
        "  0   send: ",
        "  1   send: ",
        "  2   usage error",
        "  69  send, watch: ",
        "  78  ",
    ):
        assert line in table


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ((), "iot-gateway: the following arguments are required: COMMAND"),
        (("frobnicate",), "iot-gateway: argument COMMAND: invalid choice: 'frobnicate'"),
        (("send", "light"), "iot-gateway send: the following arguments are required: action"),
        (
            ("send", "light", "set_brightness", "level"),
            "iot-gateway send: argument key=value: expected key=value, got 'level'",
        ),
        (("send", "light/x", "turn_on"), "iot-gateway send: argument device: must match"),
        (("send", "--wait", "soon", "light", "turn_on"), "iot-gateway send: argument --wait:"),
        (("watch", "--port", "99999"), "iot-gateway watch: argument --port:"),
        (("check-config", "--host", "x"), "iot-gateway: unrecognized arguments: --host x"),
    ],
    ids=["no-command", "unknown", "no-action", "bad-param", "bad-device", "wait", "port", "extra"],
)
async def test_a_usage_error_is_one_line_and_exit_2(argv: tuple[str, ...], says: str) -> None:
    code, out, err = await cli(*argv)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert err.startswith(says)
    assert err.endswith("--help)\n")
