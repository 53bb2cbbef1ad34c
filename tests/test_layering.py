"""The layering of gateway/, checked on its source: nothing imports upward.

- ``gateway.core`` (commands to results, no I/O of its own) imports no other layer;
- ``gateway.broker`` (the MQTT session and its transport) imports the core and config;
- ``gateway.surfaces`` (HTTP, metrics, systemd, Home Assistant) imports core, broker, config;
- only ``gateway/broker/aiomqtt_transport.py`` imports aiomqtt or paho;
- ``devices/`` never imports ``gateway``.

Imports under ``if TYPE_CHECKING:`` count too: a layer must not even name an upper one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("core", "config", "broker", "surfaces", "cli")
# What each layer may import from gateway (besides itself).
ALLOWED = {
    "core": {"config"},  # settings types, read only
    "config": {"core"},  # the adapter registry and step checks it validates with
    "broker": {"core", "config"},
    "surfaces": {"core", "config", "broker"},
    "cli": {"core", "config", "broker", "surfaces", "supervisor"},
}
CLIENT_LIBRARIES = ("aiomqtt", "paho")
TRANSPORT = ROOT / "gateway" / "broker" / "aiomqtt_transport.py"


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "gateway" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in (*LAYERS, "supervisor") else None


def sources(*where: str) -> list[Path]:
    return sorted(path for part in where for path in (ROOT / part).rglob("*.py"))


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources(f"gateway/{layer}")
        for name in imported(path)
        if (other := layer_of(name)) not in (None, layer) and other not in ALLOWED[layer]
    }
    assert not wrong, sorted(wrong)


def test_only_the_transport_imports_the_client_library() -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources("gateway")
        for name in imported(path)
        if name.split(".")[0] in CLIENT_LIBRARIES and path != TRANSPORT
    ]
    assert not wrong, wrong
    assert any(name.startswith("aiomqtt") for name in imported(TRANSPORT))


def test_devices_never_import_the_gateway() -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources("devices")
        for name in imported(path)
        if name.split(".")[0] == "gateway"
    ]
    assert not wrong, wrong


def test_every_module_of_gateway_sits_in_a_layer() -> None:
    top = {path.stem for path in (ROOT / "gateway").glob("*.py")}
    assert top == {"__init__", "__main__", "supervisor"}, top
