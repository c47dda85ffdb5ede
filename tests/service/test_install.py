"""systemd/install.sh in a throwaway root with a fake ``systemctl`` on PATH.

The user is created by the real ``useradd --prefix`` in copies of the host's account
files; the virtualenv and the package install are real (``pip --no-deps``: the
dependencies come from this test's own environment through PYTHONPATH, so no
download is needed beyond the build backend pip may fetch once).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from config import load_config

REPO = Path(__file__).resolve().parents[2]
PARTS = ("pyproject.toml", "README.md", "LICENSE", "gateway", "drivers", "buffer", "sim",
         "config", "docs", "systemd")


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, Path]:
    if os.geteuid() != 0:
        pytest.fail("the install test needs root (useradd --prefix, chown)", pytrace=False)
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow", "login.defs"):
        if Path("/etc", name).exists():
            shutil.copy2(Path("/etc", name), root / "etc" / name)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "systemctl.log"
    fake = bindir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    src = tmp_path / "src"
    src.mkdir()
    for part in PARTS:  # a copy: pip builds in-tree and must not litter the checkout
        p = REPO / part
        if p.is_dir():
            shutil.copytree(p, src / part, ignore=shutil.ignore_patterns("__pycache__"))
        elif p.exists():
            shutil.copy2(p, src / part)
    return {"root": root, "bin": bindir, "log": log, "src": src}


def _run(sb: dict[str, Path], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        "PATH": f"{sb['bin']}:{os.environ['PATH']}",
        "PYTHONPATH": sysconfig.get_paths()["purelib"],
        "PYTHON": sys.executable,
        "PIP_ARGS": "--no-deps",
        "ROOT": str(sb["root"]),
        **env,
    }
    return subprocess.run(["sh", str(sb["src"] / "systemd" / "install.sh"), *args],
                          env=full, check=False, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_install_is_complete_and_idempotent_then_uninstall(sandbox: dict[str, Path]) -> None:
    root = sandbox["root"]
    res = _run(sandbox, START="1", MQTT_HOST="broker.example.net", TRUCK_ID="TRK-0042",
               MQTT_PORT="1883")
    assert res.returncode == 0, res.stdout + res.stderr
    # the user, in the throwaway root only
    passwd = (root / "etc/passwd").read_text()
    line = next(ln for ln in passwd.splitlines() if ln.startswith("truckgw:"))
    assert line.endswith(":/var/lib/truckgw:/usr/sbin/nologin")
    assert "truckgw:" not in Path("/etc/passwd").read_text()
    # the venv with the package and its command
    exe = root / "opt/truckgw/venv/bin/truckgw"
    assert exe.exists()
    assert "truckgw 0.1" in res.stdout
    # the config from the template: valid, private to root and the service group
    conf = root / "etc/truckgw/truckgw.toml"
    cfg = load_config(conf)
    assert (cfg.truck_id, cfg.mqtt.host, cfg.mqtt.port) == ("TRK-0042", "broker.example.net",
                                                             1883)
    assert str(cfg.buffer.path) == "/var/lib/truckgw/buffer.db"
    assert conf.stat().st_mode & 0o777 == 0o640
    # the units, and systemctl asked to enable and start
    unit = root / "etc/systemd/system/truckgw.service"
    assert "ExecStart=/opt/truckgw/venv/bin/truckgw run -c /etc/truckgw/truckgw.toml" in (
        unit.read_text())
    assert (root / "etc/systemd/system/truckgw@.service").exists()
    calls = sandbox["log"].read_text().splitlines()
    assert calls == [f"--root={root} enable truckgw.service",
                     f"--root={root} restart truckgw.service"]

    # again: nothing breaks, an edited config is kept, the user is not duplicated
    conf.write_text(conf.read_text().replace("TRK-0042", "TRK-0043"))
    res = _run(sandbox, START="0")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "keeping existing /etc/truckgw/truckgw.toml" in res.stdout
    assert load_config(conf).truck_id == "TRK-0043"
    assert (root / "etc/passwd").read_text().count("\ntruckgw:") == 1

    # uninstall keeps config and data; PURGE removes them and the user
    res = _run(sandbox, "--uninstall")
    assert res.returncode == 0, res.stdout + res.stderr
    assert not unit.exists() and not (root / "opt/truckgw").exists()
    assert conf.exists()
    res = _run(sandbox, "--uninstall", PURGE="1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert not (root / "etc/truckgw").exists()
    assert "\ntruckgw:" not in (root / "etc/passwd").read_text()


def test_first_install_without_broker_is_refused(sandbox: dict[str, Path]) -> None:
    res = _run(sandbox)
    assert res.returncode != 0
    assert "set MQTT_HOST" in res.stderr
    root = sandbox["root"]
    assert not (root / "opt/truckgw").exists()  # refused before changing anything
    assert "\ntruckgw:" not in (root / "etc/passwd").read_text()
    assert not sandbox["log"].exists()
