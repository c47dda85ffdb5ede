"""The pure failover policy (gateway/failover.py) and the ``[mqtt].failover`` config key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from config.errors import ConfigError
from config.loader import check_config
from config.retry import RetryPolicy
from gateway.failover import Failover, format_address

A, B, C = ("10.0.0.1", 1883), ("10.0.0.2", 1883), ("10.0.0.3", 1884)
POLICY = RetryPolicy(1.0, 8.0, 30.0)


def test_one_address_keeps_the_core_backoff() -> None:
    f = Failover((A,), POLICY, healthy_after_s=30)
    for delay in (0.7, 1.9, 3.2):
        assert f.ended(up_s=None, core_after_s=delay) == delay
        assert f.current == A
    assert f.view().switches == 0 and f.view().index == 0


def test_next_address_at_once_backoff_only_after_a_whole_round() -> None:
    f = Failover((A, B, C), POLICY, healthy_after_s=30)
    assert f.current == A
    assert f.ended(up_s=None, core_after_s=5.0) == 0.0
    assert f.current == B
    assert f.ended(up_s=None, core_after_s=5.0) == 0.0
    assert f.current == C
    delay = f.ended(up_s=None, core_after_s=5.0)  # the third failure in a row: a round
    assert 1.0 <= delay <= 8.0
    assert f.current == A and f.rounds_failed == 1
    assert f.view().switches == 3


def test_a_dropped_healthy_link_moves_on_without_delay() -> None:
    f = Failover((A, B, C), POLICY, healthy_after_s=30)
    assert f.ended(up_s=None, core_after_s=5.0) == 0.0       # A down
    assert f.ended(up_s=120.0, core_after_s=1.0) == 0.0      # B worked 2 min, then dropped
    assert f.current == C
    assert f.ended(up_s=None, core_after_s=5.0) == 0.0       # C down: a new round started at B
    assert f.current == A
    assert f.ended(up_s=None, core_after_s=5.0) > 0          # A, C, A... B's round complete
    assert f.view().address == format_address(*B)


def test_round_backoff_grows_per_round_and_stays_capped() -> None:
    f = Failover((A, B), RetryPolicy(1.0, 4.0, 30.0), healthy_after_s=30)
    delays = []
    for _ in range(20):
        assert f.ended(up_s=None, core_after_s=99.0) == 0.0
        delays.append(f.ended(up_s=None, core_after_s=99.0))
    assert all(1.0 <= d <= 4.0 for d in delays)
    assert f.rounds_failed == 20


def test_ipv6_address_is_bracketed() -> None:
    assert format_address("::1", 1883) == "[::1]:1883"
    assert format_address("node1", 8883) == "node1:8883"


def _cfg(tmp_path: Path, mqtt_extra: str) -> tuple[Any, tuple[str, ...]]:
    p = tmp_path / "truck.toml"
    p.write_text(f'truck_id = "t1"\n[mqtt]\nhost = "n1.example"\nport = 1883\n{mqtt_extra}\n'
                 '[gps]\nport = "/dev/ttyUSB0"\n')
    return check_config(p)


def test_config_failover_list(tmp_path: Path) -> None:
    cfg, _ = _cfg(tmp_path, 'failover = ["n2.example:1884", "n3.example", "[::1]:1885"]')
    assert cfg.mqtt.brokers == (("n1.example", 1883), ("n2.example", 1884),
                                ("n3.example", 1883), ("::1", 1885))
    one, _ = _cfg(tmp_path, "")
    assert one.mqtt.brokers == (("n1.example", 1883),)
    assert one.mqtt.failover == ()


@pytest.mark.parametrize(("value", "reason"), [
    ('"n2:1884"', "mqtt.failover: expected an array of strings"),
    ('["n2:99999"]', "mqtt.failover[0]: port must be 1..65535"),
    ('["n1.example:1883"]', "mqtt.failover[0]: \"n1.example:1883\" is already in the broker"),
    ('["n2", "n2:1883"]', "mqtt.failover[1]: \"n2:1883\" is already in the broker"),
    ('["n2 x"]', "mqtt.failover[0]: expected a string matching"),
    ("[7]", "mqtt.failover[0]: expected a string, got 7"),
])
def test_config_failover_errors_name_key_and_reason(tmp_path: Path, value: str,
                                                     reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        _cfg(tmp_path, f"failover = {value}")
    assert str(tmp_path / "truck.toml") in str(info.value)
    assert reason in str(info.value)
