"""The watchdog in-process: pings while healthy, silence while commits stall, then resume.

The stall is made with ``SqliteStore.hold()``, which blocks the store's file (and so
every commit) for as long as the block runs: exactly what a commit stuck on a dying SD
card looks like to the rest of the agent, since a real SD card cannot hang on demand.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import uuid
from pathlib import Path

import can
import pytest

from config import EX_CONFIG, load_config
from config.errors import ConfigError
from gateway.app import EX_OK, Agent, Phase
from gateway.sdnotify import Notifier
from gateway.supervisor import TaskInfo, supervise
from tests.service.agent_env import eec1_frame, free_port, truck_toml


def _phase(agent: Agent) -> Phase:
    return agent.phase  # a call: mypy must not carry the narrowing from earlier asserts


class Listener:
    def __init__(self) -> None:
        self.name = f"truckgw-wd-{uuid.uuid4().hex[:12]}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.sock.setblocking(False)
        self.lines: list[str] = []

    async def until(self, wanted: str, timeout: float) -> bool:
        """Read until a line starting with ``wanted`` arrives (True) or timeout."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    data = await loop.sock_recv(self.sock, 4096)
                    new = data.decode().split("\n")
                    self.lines += new
                    if any(x.startswith(wanted) for x in new):
                        return True
        except TimeoutError:
            return False


async def _feed(bus: can.BusABC, stop: asyncio.Event) -> None:
    rpm = 800.0
    for _ in range(100_000):
        if stop.is_set():
            return
        rpm = 2400.0 if rpm < 1600 else 800.0
        f = eec1_frame(rpm)
        bus.send(can.Message(arbitration_id=f.arbitration_id, data=f.data, is_extended_id=True))
        await asyncio.sleep(0.005)


@pytest.mark.slow
async def test_watchdog_pings_stop_while_commits_stall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = f"wd-{uuid.uuid4().hex[:8]}"
    conf = tmp_path / "truck.toml"
    conf.write_text(truck_toml(tmp_path, mqtt_port=free_port(), can_channel=channel,
                               can_interface="virtual"))
    cfg = load_config(conf)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # pings every 0.5 s; stall after 2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    listener = Listener()
    agent = Agent(cfg, notifier=Notifier("@" + listener.name))
    run = asyncio.create_task(agent.run(), name="agent-under-test")
    bus = can.Bus(interface="virtual", channel=channel)
    stop_feed = asyncio.Event()
    feeder: asyncio.Task[None] | None = None
    try:
        assert await listener.until("READY=1", 20)
        feeder = asyncio.create_task(_feed(bus, stop_feed), name="feeder")
        assert await listener.until("WATCHDOG=1", 5)
        assert agent.store is not None
        async with agent.store.hold():  # the commit path hangs from here on
            assert await listener.until("STATUS=unhealthy", 15), listener.lines
            assert "appends waiting" in listener.lines[-1]
            after = len(listener.lines)
            # while it stays stuck, no ping at all (3 s = 6 ping periods)
            assert not await listener.until("WATCHDOG=1", 3.0), listener.lines[after:]
        assert await listener.until("WATCHDOG=1", 10), listener.lines
        assert agent.phase is Phase.RUNNING
    finally:
        stop_feed.set()
        if feeder is not None:
            await feeder
        agent.request_stop()
        code = await asyncio.wait_for(run, 15)
        bus.shutdown()
        listener.sock.close()
    assert code == EX_OK
    assert _phase(agent) is Phase.STOPPED
    assert agent.commits.committed_total > 0


async def test_supervise_restarts_a_crashing_task_with_growing_backoff() -> None:
    stop = asyncio.Event()
    info = TaskInfo("gps")
    starts: list[float] = []
    loop = asyncio.get_running_loop()
    stops: list[tuple[int, str]] = []

    async def body() -> None:
        starts.append(loop.time())
        if len(starts) < 4:
            raise OSError("port vanished")
        await stop.wait()

    task = asyncio.create_task(supervise(info, body, stop, lambda c, r: stops.append((c, r)),
                                         backoff_min_s=0.05, backoff_max_s=0.2))
    for _ in range(200):
        if len(starts) >= 4:
            break
        await asyncio.sleep(0.02)
    assert len(starts) == 4
    assert info.restarts == 3 and info.alive
    assert info.last_error == "OSError: port vanished"
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(g >= 0.025 for g in gaps)  # never a hot loop: at least half the minimum
    stop.set()
    await asyncio.wait_for(task, 5)
    assert info.as_dict()["alive"] is False
    assert stops == []


async def test_supervise_stops_the_agent_on_a_config_error() -> None:
    stop = asyncio.Event()
    info = TaskInfo("can")
    stops: list[tuple[int, str]] = []

    async def body() -> None:
        raise ConfigError([("t.toml", "can.interface", "unknown interface 'nope'")])

    await asyncio.wait_for(supervise(info, body, stop, lambda c, r: stops.append((c, r))), 5)
    assert stops == [(EX_CONFIG, "configuration error in can")]
    assert info.restarts == 0
