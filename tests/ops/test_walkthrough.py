"""docs/raspberry-pi.md followed to the letter, from the test PKI to events at the TLS broker.

The commands come out of the document itself, so a step that is wrong, missing or out of
order there fails here:

- step 5: the PKI block (with ``BROKER=localhost``), the Mosquitto listener of its
  ``fleet.conf``, and the ``mosquitto_sub`` watch command as written;
- step 6: ``systemd/install.sh`` with exactly the settings the document passes (in a
  throwaway root: tests/service/install_env.py), plus the port of the test broker and
  the GPS port, which a real Pi would have at their defaults;
- the service's own ``ExecStart`` from the installed unit, run as the service user, with
  a GPS receiver on a pty;
- step 7: ``truckgw status`` and ``truckgw diagnose`` as an administrator in group
  ``truckgw`` (not root), and the status and event batches arriving at the watcher.

What cannot run here is said where it is skipped over: ``apt-get``, the CAN HAT and
``systemctl`` (install.sh talks to a fake one; the agent is started as its unit would).
"""

from __future__ import annotations

import datetime as dt
import grp
import json
import os
import re
import shlex
import signal
import subprocess
import sysconfig
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sim.broker import Mosquitto
from sim.nmea_out import GpsFix, gga, rmc
from sim.ports import PtyPort
from tests.ops.test_docs import DOC, _blocks, _listener_conf, _pki_block
from tests.service.install_env import ADMIN_UID, Sandbox, run_as, run_install, service_ids

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.timeout(420)]

#: The document's broker name; the test broker answers on localhost.
DOC_BROKER = "broker.example.com"
WATCH_S = 90
DIALOUT = grp.getgrnam("dialout").gr_gid


def _one_command(block: str, first_word: str) -> str:
    """The command in ``block`` that starts with ``first_word``, continuation lines joined."""
    joined = block.replace("\\\n", " ")
    return next(ln.strip() for ln in joined.splitlines() if ln.strip().startswith(first_word))


def _install_settings(home: Path) -> dict[str, str]:
    """The VAR=value settings of step 6's install command, ``$HOME`` and the host resolved."""
    block = next(b for b in _blocks(DOC.read_text())
                 if "systemd/install.sh" in b and "MQTT_CA=" in b and "--wheelhouse" not in b)
    words = shlex.split(_one_command(block, "sudo "))
    assert words[0] == "sudo" and words[-1] == "systemd/install.sh", words
    settings = dict(w.split("=", 1) for w in words[1:-1])
    resolved = {k: v.replace("$HOME", str(home)).replace(DOC_BROKER, "localhost")
                for k, v in settings.items()}
    assert {"MQTT_HOST", "TRUCK_ID", "MQTT_CA", "MQTT_CERT", "MQTT_KEY"} <= set(resolved)
    return resolved


def _watch_command(port: int) -> list[str]:
    """Step 5's ``mosquitto_sub`` as written, pointed at the test broker's port."""
    block = next(b for b in _blocks(DOC.read_text()) if "client_cert TRK-0001" in b)
    words = shlex.split(_one_command(block, "mosquitto_sub "))
    out = ["localhost" if w == "$BROKER" else str(port) if w == "8883" else w for w in words]
    assert out.count("-t") == 2 and "--cert" in out, out
    return [*out, "-W", str(WATCH_S)]


def _fleet_watch_command(root: Path, port: int) -> list[str]:
    """Step 7's ``truckgw fleet ... watch`` as written, on the test broker and root,
    bounded in time (it stops at ``--count`` events; ``--duration`` caps the wait)."""
    block = next(b for b in _blocks(DOC.read_text()) if "truckgw fleet " in b)
    words = shlex.split(_one_command(block, "sudo truckgw fleet "))
    assert words[0] == "sudo", words  # the truck's key is the service user's alone
    out = ["localhost" if w == DOC_BROKER else str(port) if w == "8883"
           else w.replace("/etc/truckgw/", f"{root}/etc/truckgw/") for w in words[1:]]
    assert "watch" in out and "--cert-file" in out, out
    return [*out, "--duration", "60"]


def _diagnose_user() -> str:
    """Step 7's ``truckgw diagnose`` runs as the user its ``sudo -u`` names."""
    block = next(b for b in _blocks(DOC.read_text()) if "truckgw diagnose -c" in b)
    words = shlex.split(_one_command(block, "sudo -u "), comments=True)
    assert words[3:5] == ["truckgw", "diagnose"], words
    return words[2]


class Receiver:
    """A GPS receiver with a fix, on a pty the service user can open."""

    def __init__(self, link: Path) -> None:
        self.port = PtyPort(link)
        # as udev gives a USB receiver: root:dialout 0660 (the unit adds group dialout)
        os.chown(self.port.slave_name, 0, DIALOUT)
        os.chmod(self.port.slave_name, 0o660)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="walkthrough-gps", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        lat, lon = 53.5461, 9.9661
        for i in range(600):  # at most 10 minutes
            if self._stop.wait(1.0 if i else 0.0):
                return
            t = dt.datetime.now(dt.UTC)
            fix = GpsFix(lat=lat + i * 1e-4, lon=lon, alt_m=12.0, speed_kmh=40.0,
                         course_deg=0.0)
            self.port.write(rmc(t, fix) + gga(t, fix))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.port.close()


def _watch(cmd: list[str], cwd: Path, want: Callable[[list[str]], bool]) -> list[str]:
    """Lines of the watcher until ``want`` holds or it times out (-W)."""
    lines: list[str] = []
    with subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace") as proc:  # compact batches: binary
        assert proc.stdout is not None
        try:
            for line in proc.stdout:  # ends when -W expires at the latest
                lines.append(line.rstrip("\n"))
                if want(lines) or len(lines) > 10_000:
                    break
        finally:
            proc.terminate()
            proc.wait(10)
    return lines


def test_blank_pi_to_events_at_a_tls_broker(
    sandbox: Sandbox, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    top, root = sandbox["top"], sandbox["root"]
    # step 5, on the broker machine: the test PKI and the TLS listener
    home = top / "home"
    pki = home / "fleet-pki"
    pki.mkdir(parents=True)
    script = _pki_block().replace(f"BROKER={DOC_BROKER}", "BROKER=localhost", 1)
    made = subprocess.run(["sh", "-euc", script], cwd=pki, capture_output=True, text=True,
                          check=False, timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    conf_lines = []
    for line in _listener_conf():
        key, _, value = line.partition(" ")
        if key == "listener":
            continue  # the fixture picks a free loopback port
        conf_lines.append(f"{key} {pki / Path(value).name}" if value.startswith("/etc/")
                          else line)
    broker = mosquitto_factory(["user root", *conf_lines], allow_anonymous=False)
    # "Copy the truck's three files to the Pi": into the home folder the document uses
    for name in ("ca.pem", "TRK-0001.pem", "TRK-0001.key"):
        (home / name).write_bytes((pki / name).read_bytes())

    # step 6: the installer with the document's settings (and this broker's port)
    gps = Receiver(top / "ttyACM0")
    agent: subprocess.Popen[bytes] | None = None
    agent_log = top / "agent.log"
    try:
        settings = _install_settings(home)
        settings |= {"START": "1", "MQTT_PORT": str(broker.port),
                     "GPS_PORT": str(gps.port.link)}
        res = run_install(sandbox, settings=settings)
        assert res.returncode == 0, res.stdout + res.stderr
        uid, gid = service_ids(root)
        conf = root / "etc/truckgw/truckgw.toml"
        state_dir, run_dir = root / "var/lib/truckgw", root / "run/truckgw"
        run_dir.mkdir(parents=True, exist_ok=True)  # the unit's RuntimeDirectory=
        os.chown(run_dir, uid, gid)
        # the throwaway root stands in for /: the config's absolute paths follow it
        conf.write_text(conf.read_text().replace('"/var/lib/truckgw/', f'"{state_dir}/')
                        .replace('"/run/truckgw/', f'"{run_dir}/'))

        # the service as its unit starts it: ExecStart, as User=/Group= truckgw with
        # SupplementaryGroups=dialout
        unit = (root / "etc/systemd/system/truckgw.service").read_text()
        exec_start = re.search(r"^ExecStart=(.*)$", unit, flags=re.M)
        assert exec_start is not None
        argv = [w.replace("/opt/truckgw/", f"{root}/opt/truckgw/")
                .replace("/etc/truckgw/", f"{root}/etc/truckgw/")
                for w in shlex.split(exec_start.group(1))]
        env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
        with agent_log.open("wb") as log_file:
            agent = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={gid}",
                                      f"--groups={DIALOUT}", "--", *argv],
                                     env=env, stdout=subprocess.DEVNULL, stderr=log_file)

        # step 7: what arrives at the watcher of step 5 (batches compact: binary there)
        def arrived(lines: list[str]) -> bool:
            return (any(ln.startswith("fleet/TRK-0001/status ") and '"online"' in ln
                        for ln in lines)
                    and any(ln.startswith("fleet/TRK-0001/events ") for ln in lines))

        lines = _watch(_watch_command(broker.port), pki, arrived)
        assert agent.poll() is None, agent_log.read_text()
        assert arrived(lines), "\n".join(lines[-20:])

        # step 7 as an administrator in group truckgw, through the command on PATH
        exe = root / os.readlink(root / "usr/local/bin/truckgw").lstrip("/")
        admin_env = {"PYTHONPATH": env["PYTHONPATH"]}
        status = run_as(ADMIN_UID, ADMIN_UID, [gid], str(exe), "status", "-c", str(conf),
                        env=admin_env)
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.startswith("truck TRK-0001: running"), status.stdout
        # ... who cannot read the truck's key: diagnose (which connects with it) runs as
        # the service user, the fleet watch through the truck's certificate as root
        peek = run_as(ADMIN_UID, ADMIN_UID, [gid], "cat", str(root / "etc/truckgw/client.key"),
                      env=admin_env)
        assert peek.returncode != 0, "an administrator in group truckgw reads the key"
        assert _diagnose_user() == "truckgw"
        diag = run_as(uid, gid, [], str(exe), "diagnose", "-c", str(conf),
                      "--timeout", "5", env=admin_env)
        assert diag.returncode == 0, diag.stdout + diag.stderr
        assert "TLS" in diag.stdout, diag.stdout
        # and the events as JSON through `truckgw fleet watch`, as step 7 writes it
        watch = _fleet_watch_command(root, broker.port)
        seen = run_as(0, 0, [0], str(exe), *watch[1:], env=admin_env)
        assert seen.returncode == 0, seen.stdout + seen.stderr
        events = [json.loads(ln.split(" ", 1)[1]) for ln in seen.stdout.splitlines()
                  if ln.startswith("fleet/TRK-0001/events ")]
        assert any(ev["type"] == "gps" and "lat" in ev for ev in events), seen.stdout
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while agent.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            if agent.poll() is None:
                agent.kill()
        gps.close()
    assert agent is not None and agent.wait(5) == 0, agent_log.read_text()
