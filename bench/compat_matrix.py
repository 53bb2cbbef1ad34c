r"""The broker-compatibility matrix for the README: ``tests/test_broker_compat.py`` per broker.

Run by hand from the repository root::

    .venv/bin/python -m bench.compat_matrix          # Mosquitto 5 and 3.1.1, aedes on Redis
    .venv/bin/python -m bench.compat_matrix --ours=no \\
        --broker 'rabbitmq=127.0.0.1:1884;restart=systemctl restart rabbitmq-server'

Each ``--broker`` is ``NAME=HOST:PORT`` with optional ``;protocol=auto|5|3.1.1``
and ``;restart=SHELL COMMAND`` (without one the restart check is skipped). It
prints a Markdown table: one row per check, one column per broker, and the
counter stream's commands/s. ``--commands`` sets the streams' length (1,000).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE = "tests/test_broker_compat.py"
OURS = ["mosquitto-5", "mosquitto-3.1.1", "aedes"]
FIGURES = {  # what the checks report (tests/test_broker_compat.py, ``report``)
    "commands_per_s": "counter stream, commands/s",
    "resent_after_restart": "ids resent after the restart (lost by the broker)",
}


@dataclass
class Matrix:
    """Outcome per (check, broker), and figures per broker."""

    outcomes: dict[str, dict[str, str]] = field(default_factory=dict)
    figures: dict[str, dict[str, float]] = field(default_factory=dict)
    brokers: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The Markdown table."""
        lines = [
            "| check | " + " | ".join(self.brokers) + " |",
            "|---" * (len(self.brokers) + 1) + "|",
        ]
        for check, row in self.outcomes.items():
            cells = [row.get(broker, "") for broker in self.brokers]
            lines.append(f"| {check} | " + " | ".join(cells) + " |")
        for figure, label in FIGURES.items():
            values = [self.figures.get(b, {}).get(figure) for b in self.brokers]
            cells = " | ".join("" if v is None else f"{v:,.0f}" for v in values)
            lines.append(f"| {label} | {cells} |")
        return "\n".join(lines)


def run_pytest(env: dict[str, str], junit: Path, report: Path) -> None:
    """One pytest run of the module; its outcomes go to ``junit``, figures to ``report``."""
    command = [sys.executable, "-m", "pytest", MODULE, "-q", "-p", "no:cacheprovider"]
    command += [f"--junitxml={junit}", "-o", "timeout=900"]
    full_env = {**os.environ, **env, "COMPAT_REPORT": str(report)}
    subprocess.run(command, cwd=ROOT, env=full_env, check=False)


def read_outcomes(junit: Path, matrix: Matrix, rename: dict[str, str]) -> None:
    """Fill ``matrix`` from a JUnit report."""
    for case in ET.parse(junit).getroot().iter("testcase"):  # noqa: S314 - pytest's own report
        found = re.fullmatch(r"test_(.+)\[(.+)\]", case.get("name", ""))
        if found is None:
            continue
        check, broker = (
            found.group(1).replace("_", " "),
            rename.get(found.group(2), found.group(2)),
        )
        matrix.outcomes.setdefault(check, {})[broker] = _outcome(case)


def _outcome(case: ET.Element) -> str:
    if case.find("failure") is not None or case.find("error") is not None:
        return "**fails**"
    skipped = case.find("skipped")
    if skipped is None:
        return "passes"
    if skipped.get("type") == "pytest.xfail":
        return "**fails** (known)"
    return "not run"


def read_figures(report: Path, matrix: Matrix, rename: dict[str, str]) -> None:
    """Fill ``matrix.figures`` from the tests' report lines."""
    if not report.exists():
        return
    for line in report.read_text().splitlines():
        record = json.loads(line)
        broker = rename.get(record.pop("broker"))
        if broker is not None:
            matrix.figures.setdefault(broker, {}).update(record)


def parse_broker(text: str) -> tuple[str, dict[str, str]]:
    """``NAME=HOST:PORT;protocol=...;restart=...`` -> (NAME, its COMPAT_* variables)."""
    name, _, rest = text.partition("=")
    address, *options = rest.split(";")
    env = {"COMPAT_BROKER": address}
    for option in options:
        key, _, value = option.partition("=")
        env[f"COMPAT_{key.strip().upper()}"] = value
    return name, env


def main() -> None:
    """Run the checks and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", action="append", default=[], help="NAME=HOST:PORT[;...]")
    parser.add_argument("--ours", choices=["yes", "no"], default="yes")
    parser.add_argument("--commands", type=int, default=1000)
    args = parser.parse_args()
    matrix = Matrix()
    base = {"COMPAT_COMMANDS": str(args.commands)}
    with tempfile.TemporaryDirectory() as scratch:
        runs: list[tuple[dict[str, str], dict[str, str]]] = []
        if args.ours == "yes":
            matrix.brokers += OURS
            runs.append(({}, {name: name for name in OURS}))
        for text in args.broker:
            name, env = parse_broker(text)
            matrix.brokers.append(name)
            runs.append((env, {"external": name, env["COMPAT_BROKER"]: name}))
        for index, (env, rename) in enumerate(runs):
            junit, report = Path(scratch) / f"{index}.xml", Path(scratch) / f"{index}.jsonl"
            run_pytest({**base, **env}, junit, report)
            read_outcomes(junit, matrix, rename)
            read_figures(report, matrix, rename)
    print(matrix.table())  # noqa: T201 - the table is the output


if __name__ == "__main__":
    main()
