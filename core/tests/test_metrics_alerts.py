"""The shipped alert rules pass ``promtool check rules`` and their unit tests
(``promtool test rules``: contrib/prometheus/tunnelmesh-alerts.test.yml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[2] / "contrib" / "prometheus"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing (Debian package prometheus; scripts/system-deps.sh)"
)


def promtool(*args: str) -> str:
    assert PROMTOOL is not None
    proc = subprocess.run(
        [PROMTOOL, *args], cwd=RULES, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_rules_are_valid() -> None:
    assert "SUCCESS: 5 rules found" in promtool("check", "rules", "tunnelmesh-alerts.yml")


def test_rules_unit_tests_pass() -> None:
    assert "SUCCESS" in promtool("test", "rules", "tunnelmesh-alerts.test.yml")


def test_every_alert_has_a_unit_test() -> None:
    rules = (RULES / "tunnelmesh-alerts.yml").read_text()
    tests = (RULES / "tunnelmesh-alerts.test.yml").read_text()
    alerts = [line.split(":", 1)[1].strip() for line in rules.splitlines() if "- alert:" in line]
    assert len(alerts) == 5
    for alert in alerts:
        assert f"alertname: {alert}" in tests, alert
