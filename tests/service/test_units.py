"""The systemd units: ``systemd-analyze verify`` clean, security exposure <= 2.0.

Needs ``systemd-analyze`` (Debian package ``systemd``); a missing tool is a failure
with an install hint, never a skip.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
MAX_EXPOSURE = 2.0
INSTALLED_EXE = "/opt/truckgw/current/bin/truckgw"


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze not found: apt-get install -y systemd", pytrace=False)
    return tool


def _staged(tmp_path: Path, name: str, as_name: str | None = None) -> Path:
    """The unit with its ExecStart= pointing at this checkout's truckgw.

    ``verify`` checks that the command exists; on a build machine the installed path
    /opt/truckgw/current/bin/truckgw does not, so only that prefix is substituted (the
    same substitution install.sh makes for a non-default PREFIX).
    """
    exe = Path(sys.executable).with_name("truckgw")
    assert exe.exists(), f"{exe} missing: install the package into the venv"
    text = (SYSTEMD_DIR / name).read_text()
    assert INSTALLED_EXE in text
    out = tmp_path / (as_name or name)
    out.write_text(text.replace(INSTALLED_EXE, str(exe)))
    return out


@pytest.mark.parametrize(("unit", "as_name"),
                         [("truckgw.service", None), ("truckgw@.service", "truckgw@trk1.service")])
def test_verify_is_clean(tmp_path: Path, unit: str, as_name: str | None) -> None:
    staged = _staged(tmp_path, unit, as_name)
    res = subprocess.run([_analyze(), "verify", str(staged)],
                         check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr


@pytest.mark.parametrize("unit", ["truckgw.service", "truckgw@.service"])
def test_security_exposure(unit: str) -> None:
    res = subprocess.run(
        [_analyze(), "security", "--offline=yes", "--no-pager", str(SYSTEMD_DIR / unit)],
        check=False, capture_output=True, text=True, timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", res.stdout)
    assert m, res.stdout + res.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, res.stdout


def _service_section(unit: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    section = ""
    for raw in (SYSTEMD_DIR / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.parametrize("unit", ["truckgw.service", "truckgw@.service"])
def test_service_settings_the_issue_asks_for(unit: str) -> None:
    s = _service_section(unit)
    assert s["Type"] == ["notify"]
    assert s["Restart"] == ["on-failure"]
    assert s["RestartPreventExitStatus"] == ["78"]
    assert s["WatchdogSec"] and s["StateDirectory"] and s["ConfigurationDirectory"]
    assert s["User"] == ["truckgw"] and s["SupplementaryGroups"] == ["dialout"]
    assert "AF_CAN" in s["RestrictAddressFamilies"][0].split()
    # /run/truckgw (the state file) outlives a stop: `truckgw status` of a stopped agent
    # shows its last figures (systemd removes a RuntimeDirectory= at stop otherwise)
    assert s["RuntimeDirectoryPreserve"] == ["yes"]


def test_template_uses_the_instance_name() -> None:
    s = _service_section("truckgw@.service")
    assert s["ExecStart"] == [f"{INSTALLED_EXE} run -c /etc/truckgw/%i.toml"]
    assert s["StateDirectory"] == ["truckgw/%i"]


def test_networkd_example_brings_can0_up_at_250k() -> None:
    cp = configparser.ConfigParser(strict=False)
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    cp.read(SYSTEMD_DIR / "80-can0.network")
    assert cp["Match"]["Name"] == "can0"
    assert cp["CAN"]["BitRate"] == "250K"
    # a passive tap by default: the controller itself cannot disturb the truck's bus
    assert cp["CAN"]["ListenOnly"] == "yes"


@pytest.mark.parametrize("unit", ["truckgw.service", "truckgw@.service"])
def test_recording_never_waits_for_the_network(unit: str) -> None:
    """Offline-first: a unit ordered after network-online.target waits for
    networkd-wait-online (minutes on a NetworkManager system) at every ignition."""
    unit_section: dict[str, list[str]] = {}
    section = ""
    for raw in (SYSTEMD_DIR / unit).read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#") and section == "Unit":
            key, _, value = line.partition("=")
            unit_section.setdefault(key, []).extend(value.split())
    for key in ("After", "Wants", "Requires", "BindsTo"):
        for target in ("network-online.target", "time-sync.target", "network.target"):
            assert target not in unit_section.get(key, []), (key, target)
