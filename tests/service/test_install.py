"""systemd/install.sh in a throwaway root with a fake ``systemctl`` on PATH.

The user is created by the real ``useradd --prefix`` in copies of the host's account
files (never in the host's own); the virtualenvs and the package installs are real
(``pip --no-deps``: the dependencies come from this test's own environment through
PYTHONPATH, so no download is needed beyond the build backend pip may fetch once).
``check-config`` runs as the service user (numeric ids from the throwaway root), so the
sandbox lives in a folder every user can traverse, removed at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from config import load_config
from tests.service.install_env import (
    ADMIN_UID,
    CURRENT_EXE,
    Sandbox,
    current_venv,
    first_install,
    run_as,
    run_install,
    service_ids,
    venvs,
)

ROOT_DIR = Path(__file__).resolve().parents[2]


def test_no_script_needs_root_to_be_set() -> None:
    """``ROOT`` is empty on a real truck (the tests set it to a throwaway root), so
    ``${ROOT:?}`` would abort there under ``set -u``: it did, in ``--uninstall`` (which
    then left /opt/truckgw behind and never purged) and in the pruning of old venvs."""
    for script in (*sorted((ROOT_DIR / "systemd").glob("*.sh")),
                   *sorted((ROOT_DIR / "deploy").glob("*.sh"))):
        text = script.read_text()
        assert "${ROOT:?" not in text, script
        assert "${ROOT?" not in text, script
    out = subprocess.run(["sh", "-euc", 'ROOT=; PREFIX=/opt/x; echo "${ROOT}${PREFIX:?}"'],
                         capture_output=True, text=True, check=True)
    assert out.stdout == "/opt/x\n"


@pytest.mark.slow
def test_install_upgrade_rollback_uninstall(sandbox: Sandbox) -> None:
    root, log = sandbox["root"], sandbox["log"]
    old_layout = root / "opt/truckgw/venv/bin"  # an install from before venvs/
    old_layout.mkdir(parents=True)
    res = first_install(sandbox)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not old_layout.parent.exists() and "removed the old /opt/truckgw/venv" in res.stdout
    # the user, in the throwaway root only
    passwd = (root / "etc/passwd").read_text()
    line = next(ln for ln in passwd.splitlines() if ln.startswith("truckgw:"))
    assert line.endswith(":/var/lib/truckgw:/usr/sbin/nologin")
    assert "truckgw:" not in Path("/etc/passwd").read_text()
    uid, gid = service_ids(root)
    # a venv per version behind `current`, and the command on PATH through it
    first = current_venv(root)
    assert first.startswith("venvs/0.1.0-"), first
    assert os.readlink(root / "usr/local/bin/truckgw") == CURRENT_EXE
    assert (root / CURRENT_EXE.lstrip("/")).exists()
    assert "truckgw 0.1" in res.stdout
    # the config from the template: TLS with the placed CA and client certificate
    conf = root / "etc/truckgw/truckgw.toml"
    cfg = load_config(conf)
    assert (cfg.truck_id, cfg.mqtt.host, cfg.mqtt.port) == ("TRK-0042", "broker.example.net",
                                                             8883)
    tls = cfg.mqtt.tls
    assert tls is not None
    assert tls.ca_file == root / "etc/truckgw/ca.pem"
    assert tls.key_file == root / "etc/truckgw/client.key"
    assert str(cfg.buffer.path) == "/var/lib/truckgw/buffer.db"
    # one permission rule: config and certificates root-owned, group truckgw, 0640, in a
    # 0750 folder; a secret the service user's alone, 0600 (the group reads the status)
    for p in (conf, root / "etc/truckgw/ca.pem", root / "etc/truckgw/client.pem"):
        st = p.stat()
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 0, gid), p
    st = (root / "etc/truckgw/client.key").stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, uid, gid)
    st = (root / "etc/truckgw").stat()
    assert (st.st_mode & 0o777, st.st_gid) == (0o750, gid)
    st = (root / "var/lib/truckgw").stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o750, uid, gid)
    # the units run the current venv; systemctl asked to enable, restart, check
    unit = root / "etc/systemd/system/truckgw.service"
    assert f"ExecStart={CURRENT_EXE} run -c /etc/truckgw/truckgw.toml" in unit.read_text()
    assert (root / "etc/systemd/system/truckgw@.service").exists()
    assert log.read_text().splitlines() == [f"--root={root} enable truckgw.service",
                                            f"--root={root} restart truckgw.service",
                                            f"--root={root} is-active --quiet truckgw.service"]

    # upgrade over a "running" install: the buffer and an edited config are kept
    buffer = root / "var/lib/truckgw/buffer.db"
    buffer.write_bytes(b"pending events")
    conf.write_text(conf.read_text().replace("TRK-0042", "TRK-0043"))
    res = run_install(sandbox, START="1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "keeping existing /etc/truckgw/truckgw.toml" in res.stdout
    # the service restarted onto the new version, and checked to be active there
    assert log.read_text().splitlines()[3:] == [f"--root={root} enable truckgw.service",
                                                f"--root={root} restart truckgw.service",
                                                f"--root={root} is-active --quiet truckgw.service"]
    second = current_venv(root)
    assert second != first and venvs(root) == sorted([first[6:], second[6:]])
    assert buffer.read_bytes() == b"pending events"
    assert load_config(conf).truck_id == "TRK-0043"
    assert (root / "etc/passwd").read_text().count("\ntruckgw:") == 1

    # the new version does not come up: back to the previous one
    sandbox["fail"].touch()
    res = run_install(sandbox, START="1")
    assert res.returncode != 0
    assert f"rolled back to {second[6:]}" in res.stderr, res.stderr
    assert current_venv(root) == second
    sandbox["fail"].unlink()

    # a key of the earlier rule (0640 root:truckgw) is made the service user's at an
    # upgrade; one the service user cannot read (root-only 0600, a name the installer
    # does not manage) is caught by check-config as that user: the current version
    # stays and no half-installed venv is left
    key = root / "etc/truckgw/client.key"
    os.chown(key, 0, gid)
    key.chmod(0o640)
    res = run_install(sandbox, START="1")
    assert res.returncode == 0, res.stdout + res.stderr
    st = key.stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, uid)
    second = current_venv(root)
    other = root / "etc/truckgw/fleet.key"
    other.write_bytes(key.read_bytes())
    other.chmod(0o600)  # root's
    conf.write_text(conf.read_text().replace('key_file = "client.key"',
                                             'key_file = "fleet.key"'))
    before = venvs(root)
    res = run_install(sandbox, START="1")
    assert res.returncode != 0
    assert "fleet.key" in res.stderr and "Permission denied" in res.stderr, res.stderr
    assert "unreadable by user truckgw" in res.stderr
    assert current_venv(root) == second and venvs(root) == before
    conf.write_text(conf.read_text().replace('key_file = "fleet.key"',
                                             'key_file = "client.key"'))

    # uninstall keeps config and the buffer; --purge removes them and the user
    res = run_install(sandbox, "--uninstall")
    assert res.returncode == 0, res.stdout + res.stderr
    assert not unit.exists() and not (root / "opt/truckgw").exists()
    assert not (root / "usr/local/bin/truckgw").is_symlink()
    assert conf.exists() and buffer.read_bytes() == b"pending events"
    res = run_install(sandbox, "--uninstall", "--purge")
    assert res.returncode == 0, res.stdout + res.stderr
    assert not (root / "etc/truckgw").exists() and not buffer.exists()
    assert "\ntruckgw:" not in (root / "etc/passwd").read_text()


STOPPED_AGENT = """
import asyncio, os, sys, time
from buffer.store import SqliteStore
from config import load_config
from config.events import Event
from gateway.health import HealthWriter

os.umask(0o027)  # the unit's UMask=
cfg = load_config(sys.argv[1])

async def main() -> None:
    store = await SqliteStore.open(cfg.buffer)
    try:
        for i in range(7):
            await store.append(Event("gps", 1_700_000_000_000 + i, {"lat": 1.0, "lon": 2.0}))
    finally:
        await store.close()

asyncio.run(main())
now = time.time()
HealthWriter(cfg.state_file, cfg.metrics.textfile).write({
    "version": 1, "truck_id": cfg.truck_id, "pid": 2**22 + 1, "phase": "stopped",
    "started_at": now - 60, "updated_at": now - 28, "uptime_s": 32.0, "healthy": True,
    "uplink": {"state": "disconnected", "last_publish_at": now - 30},
    "buffer": {"pending": 7, "committed_seq": 7},
    "can": {"state": "active", "frames_per_s": 650.0, "errors": 0},
})
"""


@pytest.mark.slow
def test_status_for_an_administrator_in_the_group(sandbox: Sandbox) -> None:
    """`truckgw status -c CONF` as a non-root user in group truckgw, on the files the
    service itself wrote; a user outside the group cannot read the config."""
    root = sandbox["root"]
    res = first_install(sandbox)
    assert res.returncode == 0, res.stdout + res.stderr
    uid, gid = service_ids(root)
    conf = root / "etc/truckgw/truckgw.toml"
    state_dir = root / "var/lib/truckgw"
    run_dir = root / "run/truckgw"  # what the unit's RuntimeDirectory= makes
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chown(run_dir, uid, gid)
    # the sandbox's buffer and state live under the throwaway root (as root edits the config)
    conf.write_text(conf.read_text().replace('"/var/lib/truckgw/', f'"{state_dir}/')
                    .replace('"/run/truckgw/', f'"{run_dir}/'))
    env = {"PYTHONPATH": sysconfig.get_paths()["purelib"]}
    python = str(root / "opt/truckgw/current/bin/python")
    agent = run_as(uid, gid, [], python, "-c", STOPPED_AGENT, str(conf), env=env)
    assert agent.returncode == 0, agent.stderr
    state = run_dir / "state.json"  # on the tmpfs, not the SD card
    assert state.stat().st_mode & 0o777 == 0o640
    assert (run_dir / "truckgw.prom").stat().st_mode & 0o777 == 0o644  # node_exporter
    assert (state_dir / "buffer.db").stat().st_mode & 0o007 == 0  # nothing for others

    exe = str(root / "usr/local/bin/truckgw")  # the link on PATH (through ROOT here)
    exe = str(root / os.readlink(exe).lstrip("/"))
    admin = run_as(ADMIN_UID, ADMIN_UID, [gid], exe, "status", "-c", str(conf), env=env)
    assert admin.returncode == 3, admin.stdout + admin.stderr  # LSB: not running
    assert admin.stdout.startswith("truck TRK-0042: stopped"), admin.stdout
    assert "7 pending" in admin.stdout
    outsider = run_as(ADMIN_UID, ADMIN_UID, [], exe, "status", "-c", str(conf), env=env)
    assert outsider.returncode == 78
    assert "Permission denied" in outsider.stderr
    # reading the status exposes no secret: the group cannot read the private key
    peek = run_as(ADMIN_UID, ADMIN_UID, [gid], "cat", str(root / "etc/truckgw/client.key"),
                  env=env)
    assert peek.returncode != 0 and "Permission denied" in peek.stderr, peek.stdout


def test_first_install_without_broker_is_refused(sandbox: Sandbox) -> None:
    res = run_install(sandbox)
    assert res.returncode != 0
    assert "set MQTT_HOST" in res.stderr
    root = sandbox["root"]
    assert not (root / "opt/truckgw").exists()  # refused before changing anything
    assert "\ntruckgw:" not in (root / "etc/passwd").read_text()
    assert not sandbox["log"].exists()


@pytest.mark.slow
def test_an_upgrade_keeps_the_dbc_extra_of_a_truck_that_uses_a_dbc_file(
        sandbox: Sandbox) -> None:
    """A config with ``[can].dbc_file``: the new venv gets cantools, so its check-config
    passes and the upgrade goes through (it was refused for want of the extra)."""
    root = sandbox["root"]
    res = first_install(sandbox)
    assert res.returncode == 0, res.stdout + res.stderr
    conf = root / "etc/truckgw/truckgw.toml"
    dbc = root / "etc/truckgw/oem.dbc"
    dbc.write_bytes((ROOT_DIR / "tests/data/j1939/oem-example.dbc").read_bytes())
    text = conf.read_text()
    assert "\n[can]\n" in text
    conf.write_text(text.replace("\n[can]\n", '\n[can]\ndbc_file = "oem.dbc"\n', 1))
    report = sandbox["top"] / "pip-report.json"  # what pip was asked to install
    res = run_install(sandbox, START="1", PIP_ARGS=f"--no-deps --report {report}")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "installing the dbc extra" in res.stdout
    items = json.loads(report.read_text())["install"]
    asked = [i for i in items if i["metadata"]["name"] == "truckgw"]
    assert asked and asked[0].get("requested_extras") == ["dbc"], items


@pytest.mark.slow
def test_offline_install_from_a_wheelhouse(sandbox: Sandbox) -> None:
    """deploy/wheelhouse.sh --native (this machine: x86_64; the default target is
    aarch64/cp311), then install.sh --wheelhouse with pip's --no-index: nothing is
    built or downloaded on the target, not even setuptools."""
    wheels = sandbox["top"] / "wheelhouse"
    built = subprocess.run(["sh", str(sandbox["src"] / "deploy" / "wheelhouse.sh"), "--native",
                            "-o", str(wheels)],
                           env={**os.environ, "PYTHON": sys.executable}, check=False,
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    names = {p.name.split("-")[0].lower() for p in wheels.glob("*.whl")}
    assert {"truckgw", "paho_mqtt", "python_can", "zstandard", "aiosqlite"} <= names, names
    assert not list(wheels.glob("*.tar.gz"))  # wheels only: no build on the truck
    # no index reachable for pip at all: a bogus one, and no config file of the host's
    res = run_install(sandbox, "--wheelhouse", str(wheels), deps_from_here=False, START="1",
               MQTT_HOST="broker.example.net", TRUCK_ID="TRK-0042",
               MQTT_CA=str(sandbox["pki"] / "ca.pem"), PIP_INDEX_URL="http://127.0.0.1:9/",
               PIP_CONFIG_FILE=os.devnull)
    assert res.returncode == 0, res.stdout + res.stderr
    venv = sandbox["root"] / "opt/truckgw/current"
    probe = subprocess.run([str(venv / "bin/python"), "-c",
                            "import zstandard, paho.mqtt, can, aiosqlite, gateway.cli"],
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                           check=False, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr


@pytest.mark.slow
def test_remote_config_lets_the_service_replace_its_config(sandbox: Sandbox) -> None:
    """REMOTE_CONFIG=1: [remote] on in a new config, the config folder writable by the
    service's group, a unit drop-in with ReadWritePaths=; REMOTE_CONFIG=0 undoes it."""
    root = sandbox["root"]
    pki = sandbox["pki"]
    res = run_install(sandbox, START="1", MQTT_HOST="broker.example.net", TRUCK_ID="TRK-0042",
                      MQTT_CA=str(pki / "ca.pem"), REMOTE_CONFIG="1")
    assert res.returncode == 0, res.stdout + res.stderr
    conf_dir = root / "etc/truckgw"
    conf = conf_dir / "truckgw.toml"
    cfg = load_config(conf)
    assert cfg.remote.enabled
    assert (conf_dir.stat().st_mode & 0o777, conf.stat().st_mode & 0o777) == (0o770, 0o660)
    dropin = root / "etc/systemd/system/truckgw.service.d/remote-config.conf"
    assert "ReadWritePaths=/etc/truckgw" in dropin.read_text()
    uid, gid = service_ids(root)
    # what a push does as the service: a new file beside the config, renamed over it
    made = run_as(uid, gid, [], "sh", "-c", f"cat {conf} > {conf}.tmp && mv {conf}.tmp {conf}")
    assert made.returncode == 0, made.stderr
    res = run_install(sandbox, START="1", REMOTE_CONFIG="0")
    assert res.returncode == 0, res.stdout + res.stderr
    assert not dropin.exists()
    assert conf_dir.stat().st_mode & 0o777 == 0o750
    assert (conf.stat().st_uid, conf.stat().st_mode & 0o777) == (0, 0o640)
    refused = run_install(sandbox, REMOTE_CONFIG="yes")
    assert refused.returncode != 0 and "REMOTE_CONFIG must be 1 or 0" in refused.stderr
    res = run_install(sandbox, "--uninstall")
    assert res.returncode == 0, res.stdout + res.stderr
    assert not dropin.parent.exists()
