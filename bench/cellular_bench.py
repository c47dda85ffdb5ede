"""What a truck costs on its SIM: IP-level bytes both ways, over TLS 1.3 with mutual TLS.

Run (as root, needs ``unshare`` and ``ip``)::

    .venv/bin/python bench/cellular_bench.py --quick          # ~12 minutes
    .venv/bin/python bench/cellular_bench.py                  # ~1 hour, the documented figures

Method. The script re-executes itself in a network namespace of its own (``unshare -n``)
whose loopback interface is set to MTU 1500, a cellular link's, so TCP segments are cut
as on the air. In that namespace only the agent and its broker talk: the simulator
reaches the agent through pseudo-terminals, and the agent's health is read from its
state file. Every packet on that loopback is counted by the kernel; the bytes of the IP
packets are ``tx_bytes - 14 * tx_packets`` of ``lo`` in ``/proc/self/net/dev`` (each
packet crosses lo once; lo adds a 14-byte link header). That is what a mobile operator
bills: IP and TCP headers, TCP ACKs, TLS records and handshakes, MQTT headers, PUBACKs,
keepalives, the status messages.

Per variant of the agent's configuration (``today``: the shipped defaults; ``tuned``:
the data-saving settings), one run measures, in order:

- driving: the simulator's drive at its real rate with default sampling; bytes per event
  (every byte of the window divided by the events the agent recorded in it);
- parked: ports silent, nothing to send; fixed bytes per hour;
- reconnects: the broker restarted N times; bytes per reconnect beyond the parked rate
  (a restarted broker has new TLS ticket keys: a full handshake each time); then the
  same number of link drops with the broker kept running (the agent's TCP socket
  destroyed with ``ss -K``, as a lost radio link ends it), so the reconnect resumes the
  TLS 1.3 session;
- the standard day from those parts (10 h driving, 14 h parked, 6 reconnects), and one
  real mixed run (driving, then parked, then a reconnect, in the day's proportions)
  compared with the same mix computed from the parts.

And a naive publisher for comparison: one JSON message per event, QoS 1, MQTT 5 over the
same TLS, publishing the same events (recorded by the agent with the broker away) at
their recorded pace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim.broker import Mosquitto, free_port  # noqa: E402
from sim.gateway_proc import GatewayProcess  # noqa: E402
from sim.ports import PtyPort  # noqa: E402
from sim.route import load_route  # noqa: E402
from sim.runner import TruckSim  # noqa: E402
from sim.slcan_adapter import SlcanPtyAdapter  # noqa: E402
from sim.truck import Truck, TruckParams  # noqa: E402

TRUCK = "CELL-0001"
LINK_HEADER = 14  # bytes lo adds to every packet
DAY_DRIVING_H, DAY_PARKED_H, DAY_RECONNECTS = 10, 14, 6
INNER_ENV = "TRUCKGW_CELLULAR_NETNS"

#: The agent's [mqtt] settings per variant (everything else is the shipped default).
VARIANTS: dict[str, list[str]] = {
    # the defaults before the cellular levers of issue #14 (status every 60 s with the
    # health sections, keepalive 60 s, every lease published at once)
    "today": ["keepalive_s = 60", "max_latency_s = 0.0", "status_heartbeat_s = 60.0",
              'status_detail = "full"', 'encoding = "json"'],
    # the shipped defaults now (encoding compact-dict since wire revision 4)
    "after": [],
    "after-json": ['encoding = "json"'],
    "after-compact": ['encoding = "compact"'],
    "tuned": ["max_latency_s = 30.0"],
    # the shipped defaults against a broker that offers no topic alias (what the
    # aliases save, in one run)
    "after-noalias": [],
}
#: Extra Mosquitto lines per variant.
BROKER_EXTRA: dict[str, list[str]] = {"after-noalias": ["max_topic_alias 0"]}


# --------------------------------------------------------------------------- counting


def ip_bytes() -> int:
    """IP-level bytes of every packet on this namespace's loopback so far."""
    for line in Path("/proc/self/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            cols = [int(x) for x in rest.split()]
            tx_bytes, tx_packets = cols[8], cols[9]
            return tx_bytes - LINK_HEADER * tx_packets
    raise SystemExit("no loopback interface in /proc/self/net/dev")


def enter_netns(argv: list[str]) -> None:
    """Re-run this script in a fresh network namespace with a cellular-sized loopback."""
    if os.environ.get(INNER_ENV):
        subprocess.run(["ip", "link", "set", "lo", "mtu", "1500", "up"], check=True)
        return
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        raise SystemExit("cellular_bench needs unshare(1) and ip(8) (util-linux, iproute2)")
    env = {**os.environ, INNER_ENV: "1"}
    res = subprocess.run(["unshare", "-n", sys.executable, *argv], env=env, check=False)
    raise SystemExit(res.returncode)


# --------------------------------------------------------------------------- parts


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(d: Path) -> Pki:
    import trustme  # noqa: PLC0415  # a dev dependency; only the bench needs it

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert(TRUCK)
    p = Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")
    ca.cert_pem.write_to_path(str(p.ca))
    server.cert_chain_pems[0].write_to_path(str(p.server_cert))
    server.private_key_pem.write_to_path(str(p.server_key))
    client.cert_chain_pems[0].write_to_path(str(p.client_cert))
    client.private_key_pem.write_to_path(str(p.client_key))
    p.client_key.chmod(0o600)
    return p


def tls_broker(d: Path, pki: Pki, port: int, extra: list[str] | None = None) -> Mosquitto:
    return Mosquitto(port=port, workdir=d, extra_conf=[
        f"cafile {pki.ca}", f"certfile {pki.server_cert}", f"keyfile {pki.server_key}",
        "require_certificate true", "tls_version tlsv1.3", *(extra or []),
        # started as root, Mosquitto drops to its own user, which cannot read a private tmp
        *(["user root"] if os.geteuid() == 0 else []),
    ])


def agent_config(d: Path, pki: Pki, port: int, gps: str, can: str, mqtt_extra: list[str],
                 ) -> str:
    """A truck config with the shipped defaults except where the variant says otherwise."""
    q = json.dumps
    return "\n".join([
        f"truck_id = {q(TRUCK)}", "",
        "[gps]", f"port = {q(gps)}", "",
        "[can]", 'interface = "slcan"', f"channel = {q(can)}", "",
        "[buffer]", f"path = {q(str(d / 'buffer.db'))}", "",
        "[mqtt]", 'host = "127.0.0.1"', f"port = {port}", *mqtt_extra, "",
        "[mqtt.tls]", f"ca_file = {q(str(pki.ca))}", f"cert_file = {q(str(pki.client_cert))}",
        f"key_file = {q(str(pki.client_key))}", "",
        # the state file is local: it costs no cellular byte; 1 s keeps the bench quick
        "[metrics]", f"state_file = {q(str(d / 'state.json'))}", "interval_s = 1.0", "",
    ]) + "\n"


def wait(cond: Callable[[], bool], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def up(agent: GatewayProcess) -> dict[str, Any]:
    return agent.state().get("uplink") or {}


def connected(agent: GatewayProcess) -> bool:
    return up(agent).get("state") == "connected"


def settled(agent: GatewayProcess) -> bool:
    """Connected, nothing pending, nothing in flight."""
    st = agent.state()
    buf = st.get("buffer") or {}
    return connected(agent) and buf.get("pending") == 0 and not up(agent).get("inflight_messages")


def usage_total(agent: GatewayProcess) -> int:
    """The agent's own count of its bytes this month, up and down (the state file)."""
    u = up(agent)
    return int(u.get("usage_up_bytes_month") or 0) + int(u.get("usage_down_bytes_month") or 0)


def published(agent: GatewayProcess) -> tuple[int, int]:
    """Event messages the agent published so far, and their payload bytes."""
    u = up(agent)
    return int(u.get("published_messages") or 0), int(u.get("published_bytes") or 0)


def last_seq(agent: GatewayProcess) -> int:
    return int((agent.state().get("buffer") or {}).get("last_seq") or 0)


async def drive_sim(gps: PtyPort, can: SlcanPtyAdapter, seconds: float, seed: int) -> int:
    truck = Truck(load_route("hamburg-port-loop"), seed=seed,
                  params=TruckParams(start_parked_s=0, warmup_s=2, fault_every_s=0))
    sim = TruckSim(truck, gps=gps, can=can, speed=1.0, seed=seed)
    can.device.on_transmit = sim.on_frame_from_host
    await sim.run(seconds)
    return 0


# --------------------------------------------------------------------------- one variant


@dataclass
class Figures:
    drive_s: float = 0.0
    drive_bytes: int = 0
    drive_events: int = 0
    #: event messages of the drive and their payload bytes (the agent's own counters)
    drive_messages: int = 0
    drive_payload: int = 0
    parked_s: float = 0.0
    parked_bytes: int = 0
    reconnects: int = 0
    reconnect_bytes: float = 0.0
    #: reconnects to the same broker process after a link drop (TLS session resumed)
    resumed: int = 0
    resumed_bytes: float = 0.0
    mixed_measured: int = 0
    mixed_predicted: float = 0.0
    #: the agent's own count (status usage, TCP_INFO estimate) vs the kernel's, same span
    usage_counted: int = 0
    usage_measured: int = 0

    @property
    def per_event(self) -> float:
        return self.drive_bytes / max(1, self.drive_events)

    @property
    def parked_per_h(self) -> float:
        return self.parked_bytes / max(1e-9, self.parked_s) * 3600

    @property
    def per_reconnect(self) -> float:
        return self.reconnect_bytes

    @property
    def driving_per_h(self) -> float:
        return self.drive_bytes / max(1e-9, self.drive_s) * 3600

    @property
    def day(self) -> float:
        return (DAY_DRIVING_H * self.driving_per_h + DAY_PARKED_H * self.parked_per_h
                + DAY_RECONNECTS * self.per_reconnect)


def probe_cost(broker: Mosquitto) -> int:
    """Bytes of the TCP probe Mosquitto.start() makes (subtracted from reconnects)."""
    before = ip_bytes()
    with contextlib.suppress(OSError):
        import socket  # noqa: PLC0415

        with socket.create_connection((broker.host, broker.port), timeout=1):
            pass
    time.sleep(0.5)
    return ip_bytes() - before


def restart_broker(broker: Mosquitto, agent: GatewayProcess) -> None:
    before = int(up(agent).get("connects") or 0)
    broker.stop()
    broker.start()
    wait(lambda: int(up(agent).get("connects") or 0) > before and settled(agent), 120,
         "the agent to reconnect")


def drop_link(broker: Mosquitto, agent: GatewayProcess) -> None:
    """Destroy the agent's TCP socket to the broker (the broker keeps running)."""
    before = int(up(agent).get("connects") or 0)
    subprocess.run(["ss", "-K", "dst", broker.host, "dport", "=", str(broker.port)],
                   check=True, capture_output=True)
    wait(lambda: int(up(agent).get("connects") or 0) > before and settled(agent), 120,
         "the agent to reconnect after the link drop")


def run_variant(name: str, mqtt_extra: list[str], work: Path, pki: Pki, *, drive_s: float,
                parked_s: float, reconnects: int, mixed: tuple[float, float]) -> Figures:
    d = work / name
    d.mkdir()
    port = free_port()
    broker = tls_broker(d, pki, port, BROKER_EXTRA.get(name))
    broker.start()
    gps, can = PtyPort(d / "gps0"), SlcanPtyAdapter(d / "can0")
    agent = GatewayProcess(d / "agent", agent_config(d / "agent", pki, port, str(gps.link),
                                                     can.channel, mqtt_extra))
    f = Figures()
    try:
        agent.start()
        wait(lambda: settled(agent) and (agent.state().get("can") or {}).get("state")
             in ("active", "silent"), 60, f"{name}: the agent to connect")
        probe = probe_cost(broker)
        u0, ub0 = usage_total(agent), ip_bytes()
        # driving
        seq0, b0, t0 = last_seq(agent), ip_bytes(), time.monotonic()
        m0, p0 = published(agent)
        asyncio.run(drive_sim(gps, can, drive_s, seed=7))
        wait(lambda: settled(agent), 120, f"{name}: the drive to drain")
        f.drive_s, f.drive_bytes = time.monotonic() - t0, ip_bytes() - b0
        f.drive_events = last_seq(agent) - seq0
        m1, p1 = published(agent)
        f.drive_messages, f.drive_payload = m1 - m0, p1 - p0
        # parked: ports open and silent, nothing to send
        b0, t0 = ip_bytes(), time.monotonic()
        time.sleep(parked_s)
        f.parked_s, f.parked_bytes = time.monotonic() - t0, ip_bytes() - b0
        # reconnects
        b0, t0 = ip_bytes(), time.monotonic()
        for _ in range(reconnects):
            restart_broker(broker, agent)
        spent = ip_bytes() - b0 - reconnects * probe
        idle = f.parked_bytes / max(1e-9, f.parked_s) * (time.monotonic() - t0)
        f.reconnects, f.reconnect_bytes = reconnects, max(0.0, (spent - idle) / reconnects)
        # link drops, the same broker: resumed TLS sessions
        b0, t0 = ip_bytes(), time.monotonic()
        for _ in range(reconnects):
            drop_link(broker, agent)
        idle = f.parked_bytes / max(1e-9, f.parked_s) * (time.monotonic() - t0)
        f.resumed, f.resumed_bytes = reconnects, max(0.0, (ip_bytes() - b0 - idle) / reconnects)
        # one real mixed run in the day's proportions, against the same mix from the parts
        m_drive, m_parked = mixed
        b0, t0 = ip_bytes(), time.monotonic()
        asyncio.run(drive_sim(gps, can, m_drive, seed=11))
        t_drive = time.monotonic() - t0
        time.sleep(m_parked)
        restart_broker(broker, agent)
        t_all = time.monotonic() - t0
        f.mixed_measured = ip_bytes() - b0 - probe
        wait(lambda: usage_total(agent) > u0, 30, "the usage counters")
        time.sleep(2.5)  # one more state file
        f.usage_counted = usage_total(agent) - u0
        f.usage_measured = ip_bytes() - ub0 - (reconnects + 1) * probe
        f.mixed_predicted = (f.driving_per_h * t_drive + f.parked_per_h * (t_all - t_drive)
                             ) / 3600 + f.per_reconnect
    finally:
        agent.stop()
        broker.stop()
        gps.close()
        can.close()
    return f


# --------------------------------------------------------------------------- naive publisher


def record_bodies(work: Path, pki: Pki, seconds: float) -> list[tuple[int, bytes]]:
    """The events the agent records in a drive, kept in its buffer (broker away)."""
    d = work / "naive-record"
    d.mkdir()
    gps, can = PtyPort(d / "gps0"), SlcanPtyAdapter(d / "can0")
    agent = GatewayProcess(d / "agent", agent_config(d / "agent", pki, free_port(),
                                                     str(gps.link), can.channel, []))
    try:
        agent.start()
        wait(lambda: (agent.state().get("can") or {}).get("state") in ("active", "silent"),
             60, "the recording agent's CAN bus")
        asyncio.run(drive_sim(gps, can, seconds, seed=7))
        wait(lambda: last_seq(agent) > 0, 30, "events to be recorded")
    finally:
        agent.stop()
        gps.close()
        can.close()
    rows: list[tuple[int, bytes]] = []
    with contextlib.closing(sqlite3.connect(d / "agent" / "buffer.db")) as db:
        tables = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'ev\\_%' ESCAPE '\\'")]
        for t in tables:
            rows += [(int(ts), bytes(body)) for ts, body in
                     db.execute(f"SELECT ts_ms, body FROM {t}")]  # noqa: S608  # names from the schema
    rows.sort()
    return rows


def naive_run(work: Path, pki: Pki, bodies: list[tuple[int, bytes]], parked_s: float,
              reconnects: int) -> Figures:
    """One JSON message per event, QoS 1, paho defaults, at the recorded pace."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    d = work / "naive"
    d.mkdir()
    port = free_port()
    broker = tls_broker(d, pki, port)
    broker.start()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=TRUCK,
                         protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(pki.ca), certfile=str(pki.client_cert),
                   keyfile=str(pki.client_key))
    client.reconnect_delay_set(1, 2)
    f = Figures()
    try:
        probe = probe_cost(broker)
        client.connect("127.0.0.1", port, keepalive=60)
        client.loop_start()
        wait(client.is_connected, 30, "the naive publisher to connect")
        time.sleep(1)
        b0, t0 = ip_bytes(), time.monotonic()
        first_ts = bodies[0][0]
        infos = []
        for ts, body in bodies:
            delay = (ts - first_ts) / 1000 - (time.monotonic() - t0)
            if delay > 0:
                time.sleep(delay)
            infos.append(client.publish(f"fleet/{TRUCK}/events", body, qos=1))
        for info in infos:
            info.wait_for_publish(30)
        time.sleep(1)
        f.drive_s, f.drive_bytes = time.monotonic() - t0, ip_bytes() - b0
        f.drive_events = len(bodies)
        b0, t0 = ip_bytes(), time.monotonic()
        time.sleep(parked_s)
        f.parked_s, f.parked_bytes = time.monotonic() - t0, ip_bytes() - b0
        b0, t0 = ip_bytes(), time.monotonic()
        for _ in range(reconnects):
            broker.stop()
            wait(lambda: not client.is_connected(), 30, "the naive publisher to notice")
            broker.start()
            wait(client.is_connected, 60, "the naive publisher to reconnect")
            time.sleep(1)
        spent = ip_bytes() - b0 - reconnects * probe
        idle = f.parked_bytes / max(1e-9, f.parked_s) * (time.monotonic() - t0)
        f.reconnects, f.reconnect_bytes = reconnects, max(0.0, (spent - idle) / reconnects)
    finally:
        client.loop_stop()
        client.disconnect()
        broker.stop()
    return f


# --------------------------------------------------------------------------- report


def kb(n: float) -> str:
    return f"{n / 1000:,.1f} kB"


def report(results: dict[str, Figures]) -> str:
    names = list(results)
    rows: list[tuple[str, Callable[[Figures], str]]] = [
        ("events in the drive", lambda f: f"{f.drive_events:,}"),
        ("driving: bytes per event, all in", lambda f: f"{f.per_event:,.1f} B"),
        ("driving: event messages, events per message", lambda f: (
            f"{f.drive_messages:,}, {f.drive_events / f.drive_messages:.1f}"
            if f.drive_messages else "-")),
        ("driving: payload per event / all else per message", lambda f: (
            f"{f.drive_payload / max(1, f.drive_events):.1f} B / "
            f"{(f.drive_bytes - f.drive_payload) / f.drive_messages:.0f} B"
            if f.drive_messages else "-")),
        ("driving: per hour", lambda f: kb(f.driving_per_h)),
        ("parked: per hour", lambda f: kb(f.parked_per_h)),
        ("parked: per day (24 h)", lambda f: kb(f.parked_per_h * 24)),
        ("per reconnect (full TLS handshake)", lambda f: kb(f.per_reconnect)),
        ("per reconnect after a link drop (TLS resumed)",
         lambda f: kb(f.resumed_bytes) if f.resumed else "-"),
        ("standard day (10 h drive, 14 h parked, 6 reconnects)", lambda f: kb(f.day)),
        ("standard month (30 days)", lambda f: f"{f.day * 30 / 1e6:,.1f} MB"),
        ("mixed run: measured / from the parts", lambda f: (
            f"{kb(f.mixed_measured)} / {kb(f.mixed_predicted)} "
            f"({(f.mixed_measured / f.mixed_predicted - 1) * 100:+.1f} %)"
            if f.mixed_predicted else "-")),
        ("agent's own usage count / kernel's, same span", lambda f: (
            f"{kb(f.usage_counted)} / {kb(f.usage_measured)} "
            f"({(f.usage_counted / f.usage_measured - 1) * 100:+.1f} %)"
            if f.usage_measured and f.usage_counted else "-")),
    ]
    out = ["| figure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, fn in rows:
        out.append(f"| {label} | " + " | ".join(fn(results[n]) for n in names) + " |")
    out.append("")
    if "naive" in results:
        for n in names:
            if n != "naive":
                ratio = results["naive"].day / results[n].day
                out.append(f"standard day, {n} vs naive: 1/{ratio:.1f}")
    for n in names:
        if "today" in results and n not in ("today", "naive"):
            ratio = results["today"].day / results[n].day
            out.append(f"standard day, {n} vs today: 1/{ratio:.1f}")
    return "\n".join(out)


def main() -> int:
    enter_netns(sys.argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short phases (~12 min in all)")
    ap.add_argument("--variants", default="today,after,after-compact",
                    help="comma-separated: " + ",".join(VARIANTS))
    ap.add_argument("--no-naive", action="store_true", help="skip the naive publisher")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--drive-s", type=float, default=None, help="driving phase (s)")
    ap.add_argument("--parked-s", type=float, default=None,
                    help="parked phase (s); make it several keepalives long")
    ap.add_argument("--mixed-s", type=float, default=None,
                    help="length of the real mixed run (default 600 s, 120 s when quick)")
    args = ap.parse_args()
    drive_s, parked_s, reconnects = (45.0, 60.0, 2) if args.quick else (600.0, 900.0, 6)
    drive_s, parked_s = args.drive_s or drive_s, args.parked_s or parked_s
    # the day's proportions: 10 h : 14 h, scaled to a 10-minute run (2 min when quick)
    mixed_total = args.mixed_s or (120.0 if args.quick else 600.0)
    mixed = (mixed_total * 10 / 24, mixed_total * 14 / 24)
    results: dict[str, Figures] = {}
    with tempfile.TemporaryDirectory(prefix="truckgw-cell-") as tmp:
        work = Path(tmp)
        pki = make_pki(work)
        for name in args.variants.split(","):
            print(f"== variant {name}: {VARIANTS[name] or 'shipped defaults'}", flush=True)
            results[name] = run_variant(name, VARIANTS[name], work, pki, drive_s=drive_s,
                                        parked_s=parked_s, reconnects=reconnects, mixed=mixed)
        if not args.no_naive:
            print("== naive publisher (one JSON message per event, QoS 1)", flush=True)
            bodies = record_bodies(work, pki, drive_s)
            results["naive"] = naive_run(work, pki, bodies, parked_s, reconnects)
    print(f"\ncellular bench ({'quick' if args.quick else 'full'}): IP-level bytes both ways,"
          " TLS 1.3 + mutual TLS, loopback MTU 1500 in its own network namespace\n")
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps({k: vars(v) for k, v in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
