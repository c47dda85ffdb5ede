"""The throwaway root that systemd/install.sh is tested in (tests/service/test_install.py,
tests/ops/test_walkthrough.py): copies of the host's account files for the real
``useradd --prefix``, a fake ``systemctl`` on PATH, a copy of the checkout to build from,
and a trustme PKI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

REPO = Path(__file__).resolve().parents[2]
PARTS = ("pyproject.toml", "README.md", "LICENSE", "gateway", "drivers", "buffer", "sim",
         "config", "docs", "systemd", "deploy")
#: An administrator who is not root: no passwd entry needed, only the service's group.
ADMIN_UID = 61_234
CURRENT_EXE = "/opt/truckgw/current/bin/truckgw"

Sandbox = dict[str, Path]


def sandbox_root() -> Iterator[Sandbox]:
    """A throwaway root for install.sh (root only: useradd --prefix, chown, setpriv)."""
    if os.geteuid() != 0:
        pytest.fail("the install test needs root (useradd --prefix, chown, setpriv)",
                    pytrace=False)
    top = Path(tempfile.mkdtemp(prefix="truckgw-install-", dir="/tmp"))
    top.chmod(0o755)  # the service user must reach the config, as on a real system
    try:
        yield make_sandbox(top)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def make_sandbox(top: Path) -> Sandbox:
    root = top / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow", "login.defs"):
        if Path("/etc", name).exists():
            shutil.copy2(Path("/etc", name), root / "etc" / name)
    bindir = top / "bin"
    bindir.mkdir()
    log = top / "systemctl.log"
    fail = top / "fail-is-active"
    fake = bindir / "systemctl"
    # a unit that "does not come up" when the marker file exists
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n'
                    f'case "$*" in *is-active*) [ ! -e {fail} ] ;; esac\n')
    fake.chmod(0o755)
    src = top / "src"
    src.mkdir()
    for part in PARTS:  # a copy: pip builds in-tree and must not litter the checkout
        p = REPO / part
        if p.is_dir():
            shutil.copytree(p, src / part, ignore=shutil.ignore_patterns("__pycache__"))
        elif p.exists():
            shutil.copy2(p, src / part)
    pki = top / "pki"
    pki.mkdir()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(pki / "ca.pem"))
    client = ca.issue_cert("TRK-0042")
    client.cert_chain_pems[0].write_to_path(str(pki / "client.pem"))
    client.private_key_pem.write_to_path(str(pki / "client.key"))
    return {"top": top, "root": root, "bin": bindir, "log": log, "fail": fail, "src": src,
            "pki": pki}


def run_install(sb: Sandbox, *args: str, deps_from_here: bool = True,
                settings: dict[str, str] | None = None,
                **env: str) -> subprocess.CompletedProcess[str]:
    """install.sh ARGS in the throwaway root with these environment settings."""
    full = {
        **os.environ,
        "PATH": f"{sb['bin']}:{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "ROOT": str(sb["root"]),
        **(settings or {}),
        **env,
    }
    if deps_from_here:
        full["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
        full.setdefault("PIP_ARGS", "--no-deps")
    return subprocess.run(["sh", str(sb["src"] / "systemd" / "install.sh"), *args],
                          env=full, check=False, capture_output=True, text=True, timeout=600)


def first_install(sb: Sandbox) -> subprocess.CompletedProcess[str]:
    pki = sb["pki"]
    return run_install(sb, START="1", MQTT_HOST="broker.example.net", TRUCK_ID="TRK-0042",
                MQTT_CA=str(pki / "ca.pem"), MQTT_CERT=str(pki / "client.pem"),
                MQTT_KEY=str(pki / "client.key"))


def service_ids(root: Path) -> tuple[int, int]:
    line = next(ln for ln in (root / "etc/passwd").read_text().splitlines()
                if ln.startswith("truckgw:"))
    fields = line.split(":")
    return int(fields[2]), int(fields[3])


def current_venv(root: Path) -> str:
    return os.readlink(root / "opt/truckgw/current")


def venvs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "opt/truckgw/venvs").iterdir())


def run_as(uid: int, gid: int, groups: list[int], *cmd: str,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with these ids (setpriv: a real privilege drop, no passwd entry)."""
    grp = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", *grp, "--", *cmd],
                          env={**os.environ, **(env or {})}, check=False, capture_output=True,
                          text=True, timeout=120)
