"""The ``standby`` section and its checks (README "Hot standby")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import yaml

from gateway import AdapterRegistry, ConfigError, load_config

if TYPE_CHECKING:
    from pathlib import Path

DEVICES = [{"id": "c", "type": "simulated.counter"}]


def load(tmp_path: Path, **sections: Any) -> Any:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"devices": DEVICES, **sections}))
    return load_config(path, AdapterRegistry.from_entry_points())


def test_standby_is_off_by_default(tmp_path: Path) -> None:
    standby = load(tmp_path).settings.standby
    assert not standby.enabled
    assert standby.takeover_delay == 2


@pytest.mark.parametrize("instance", ["a/b", "a+", "#", " a", "a" * 65])
def test_an_instance_name_that_is_no_topic_segment_is_refused_in_a_group(
    tmp_path: Path, instance: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, gateway={"instance": instance}, standby={"enabled": True})
    assert any(problem.startswith("gateway.instance: ") for problem in caught.value.problems)
    # Without a group, the name only appears in the health report: any will do.
    assert load(tmp_path, gateway={"instance": instance}).settings.gateway.instance == instance


@pytest.mark.parametrize(
    ("standby", "path"),
    [({"takeover_delay": 0}, "standby.takeover_delay"), ({"enable": True}, "standby.enable")],
)
def test_bad_standby_settings_name_their_path(
    tmp_path: Path, standby: dict[str, Any], path: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, standby=standby)
    assert any(problem.startswith(path) for problem in caught.value.problems), (
        caught.value.problems
    )
