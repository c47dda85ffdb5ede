"""The live linger of the delivery core (issue #14): scripted, time passed in, no broker."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from buffer.api import Batch, Lane, StoredEvent
from config import MqttConfig
from config.events import Event, Priority, encode_body
from gateway import wire
from gateway.delivery import LINGER_FULL_BYTES, Delivery
from gateway.delivery_actions import Lease, Publish, Release, UplinkState, WaitPending

TRUCK = "truck-001"


def connected(*, caught_up: bool = True, **kw: Any) -> Delivery:
    """A connected core; ``caught_up``: its first lease came back empty (what piled up
    while offline went), so live events linger from now on."""
    kw.setdefault("reconnect_min_s", 1.0)
    kw.setdefault("encoding", "json")  # the payloads below are decoded as JSON
    d = Delivery(TRUCK, MqttConfig(host="broker.example", **kw), now=0.0)
    d.connecting(0.0)
    d.connack(0.0)
    assert d.state is UplinkState.CONNECTED
    if caught_up:
        le = d.poll(0.0)
        assert isinstance(le, Lease)
        assert isinstance(d.leased(le.lane, None, 0.0)[0], WaitPending)
    return d


def event(seq: int, type_: str = "gps", prio: Priority = Priority.POSITION,
          nfields: int = 3) -> StoredEvent:
    ev = Event(type_, 1_760_000_000_000 + seq, {f"f{i}": seq + i for i in range(nfields)})
    return StoredEvent(seq, ev.ts_ms, ev.type, prio, encode_body(ev))


def seqs_of(pub: Publish) -> list[int]:
    """The seqs on the wire, checked against what the core says the message carries."""
    out = [e["seq"] for e in wire.decode_payload(pub.payload, compact=False)["events"]]
    assert out == list(pub.seqs)
    return out


def test_a_live_event_waits_for_company_and_goes_at_max_latency() -> None:
    d = connected(max_latency_s=5.0)
    le = d.poll(10.0)
    assert isinstance(le, Lease)
    assert d.leased(le.lane, Batch(le.lane, (event(1),)), 10.0) == []
    assert d.lingering_events == 1
    # nothing more pending: the wait for the store is bounded by the deadline
    for t, more in ((11.0, 2), (13.5, 3)):
        le = d.poll(t)
        assert isinstance(le, Lease), le
        assert d.leased(le.lane, Batch(le.lane, (event(more),)), t) == []
    le = d.poll(14.0)
    assert isinstance(le, Lease)
    (w,) = d.leased(le.lane, None, 14.0)
    assert isinstance(w, WaitPending)
    assert w.timeout_s == 1.0  # 15.0 - 14.0
    le = d.poll(14.6)
    assert isinstance(le, Lease)
    (w,) = d.leased(le.lane, None, 14.6)
    assert isinstance(w, WaitPending)
    assert abs(w.timeout_s - 0.4) < 1e-9
    pub = d.poll(15.0)  # the first event's deadline: all three go in one message
    assert isinstance(pub, Publish), pub
    assert pub.lane is Lane.LIVE
    assert seqs_of(pub) == [1, 2, 3]
    assert d.lingering_events == 0


def test_max_latency_zero_publishes_every_lease_at_once() -> None:
    d = connected(max_latency_s=0.0)
    le = d.poll(0.0)
    assert isinstance(le, Lease)
    assert d.leased(le.lane, Batch(le.lane, (event(1),)), 0.0) == []
    pub = d.poll(0.0)
    assert isinstance(pub, Publish)
    assert seqs_of(pub) == [1]


def test_a_critical_event_goes_at_once_with_what_lingers() -> None:
    d = connected(max_latency_s=30.0)
    le = d.poll(0.0)
    assert isinstance(le, Lease)
    assert d.leased(le.lane, Batch(le.lane, (event(1),)), 0.0) == []
    le = d.poll(1.0)
    assert isinstance(le, Lease)
    dtc = event(2, "dtc", Priority.CRITICAL)
    assert d.leased(le.lane, Batch(le.lane, (dtc,)), 1.0) == []
    pub = d.poll(1.0)
    assert isinstance(pub, Publish), pub
    assert seqs_of(pub) == [1, 2]


def test_a_batch_of_a_backlog_goes_at_once() -> None:
    d = connected(max_latency_s=30.0)
    le = d.poll(0.0)
    assert isinstance(le, Lease)
    big = Batch(le.lane, tuple(event(s, nfields=20) for s in range(1, 400)))
    assert big.nbytes >= LINGER_FULL_BYTES
    assert d.leased(le.lane, big, 0.0) == []
    assert isinstance(d.poll(0.0), Publish)
    assert d.lingering_events == 0


def test_lingering_events_fill_a_message_and_go_before_the_deadline() -> None:
    d = connected(max_latency_s=600.0)
    t, seq = 0.0, 0
    for _ in range(2000):
        act = d.poll(t)
        if isinstance(act, Publish):
            break
        assert isinstance(act, Lease), act
        seq += 1
        assert d.leased(act.lane, Batch(act.lane, (event(seq, nfields=10),)), t) == []
        t += 0.01
    else:
        raise AssertionError("lingering events never filled a message")
    assert t < 600.0
    assert len(seqs_of(act)) == seq


def test_lingering_events_are_released_on_disconnect_and_on_close() -> None:
    d = connected(max_latency_s=5.0)
    le = d.poll(0.0)
    assert isinstance(le, Lease)
    d.leased(le.lane, Batch(le.lane, (event(1), event(2))), 0.0)
    acts = d.disconnected(1.0, 0, "gone")
    assert Release((1, 2)) in acts
    assert d.lingering_events == 0
    d.connecting(2.0)
    d.connack(2.0)
    le = d.poll(2.0)
    assert isinstance(le, Lease)
    d.leased(le.lane, None, 2.0)  # caught up
    le = d.poll(2.0)
    assert isinstance(le, Lease)
    assert d.leased(le.lane, Batch(le.lane, (event(3),)), 2.0) == []
    assert d.lingering_events == 1
    assert Release((3,)) in d.close(2.5)


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.floats(0.0, 4.0), min_size=1, max_size=40),
    max_latency=st.sampled_from([0.5, 2.0, 5.0, 12.0]),
)
def test_no_live_event_is_published_later_than_max_latency_after_it_was_leasable(
    gaps: list[float], max_latency: float,
) -> None:
    """A scripted shell: events become leasable at given instants; the shell polls,
    leases what is there, waits for the store as the core says (woken early by a new
    event) and acks every message. Every event is published at most max_latency after
    it became leasable, and once."""
    d = connected(max_latency_s=max_latency, live_share=0.5)
    arrivals: list[tuple[float, int]] = []
    t = 0.0
    for i, g in enumerate(gaps, start=1):
        t += g
        arrivals.append((t, i))
    arrived_at = {s: a for a, s in arrivals}
    pending = list(arrivals)
    now, mid = 0.0, 0
    published: dict[int, float] = {}
    for _ in range(20_000):
        if len(published) == len(arrivals):
            break
        act = d.poll(now)
        if isinstance(act, Publish):
            mid += 1
            for s in seqs_of(act):
                assert s not in published
                published[s] = now
            assert d.sent(act, mid, now) == []
            d.puback(mid, 0, now)
            continue
        assert isinstance(act, Lease), act
        ready = [s for a, s in pending if a <= now]
        pending = [(a, s) for a, s in pending if a > now]
        acts = d.leased(act.lane, Batch(act.lane, tuple(event(s) for s in ready))
                        if ready else None, now)
        waits = [a for a in acts if isinstance(a, WaitPending)]
        if waits:
            until = now + waits[0].timeout_s
            if pending:  # the store's wait ends early when an event arrives
                until = min(until, pending[0][0])
            now = max(now, until)
    else:
        raise AssertionError("the scripted shell did not finish")
    for s, at in published.items():
        assert at - arrived_at[s] <= max_latency + 1e-9, (s, arrived_at[s], at)
    assert sorted(published) == [s for _, s in arrivals]


def test_the_tail_of_a_backlog_goes_at_once_then_live_events_linger() -> None:
    d = connected(caught_up=False, max_latency_s=30.0)
    # what piled up while offline: the first (small) batch goes at once
    le = d.poll(0.0)
    assert isinstance(le, Lease)
    d.leased(le.lane, Batch(le.lane, (event(1), event(2))), 0.0)
    pub = d.poll(0.0)
    assert isinstance(pub, Publish)
    d.sent(pub, 1, 0.0)
    # a backlog batch, then its small tail: at once too
    le = d.poll(0.0)
    assert isinstance(le, Lease)
    d.leased(le.lane, Batch(le.lane, tuple(event(s, nfields=20) for s in range(3, 400))), 0.0)
    pub = d.poll(0.0)
    assert isinstance(pub, Publish)
    d.sent(pub, 2, 0.0)
    le = d.poll(0.0)
    assert isinstance(le, Lease)
    d.leased(le.lane, Batch(le.lane, (event(400),)), 0.0)
    pub = d.poll(0.0)
    assert isinstance(pub, Publish), pub
    assert pub.seqs == (400,)
    d.sent(pub, 3, 0.0)
    # caught up (an empty lease): the next live event lingers
    le = d.poll(0.0)
    assert isinstance(le, Lease)
    d.leased(le.lane, None, 0.0)
    le = d.poll(1.0)
    assert isinstance(le, Lease)
    assert d.leased(le.lane, Batch(le.lane, (event(401),)), 1.0) == []
    assert d.lingering_events == 1
