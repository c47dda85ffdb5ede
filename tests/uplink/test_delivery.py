"""The delivery core from scripted events: no broker, no sockets, no sleeps, no clock."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buffer.api import Batch, Lane, StoredEvent
from config import MqttConfig
from config.events import Event, Priority, encode_body
from gateway import wire
from gateway.delivery import (
    ACK_RETRY_MAX_S,
    ACK_RETRY_MIN_S,
    BACKFILL_MAX_EVENTS,
    LEASE_BYTES_SHARE,
    LIVE_MAX_EVENTS,
    MIN_PAYLOAD_BYTES,
    Delivery,
)
from gateway.delivery_actions import (
    Ack,
    Action,
    DeadLetter,
    Lease,
    Publish,
    Reconnect,
    Release,
    SendStatus,
    UplinkState,
    Wait,
    WaitPending,
)

TRUCK = "truck-001"


def make(**kw: Any) -> Delivery:
    kw.setdefault("reconnect_min_s", 1.0)
    kw.setdefault("reconnect_max_s", 8.0)
    kw.setdefault("encoding", "json")  # the sizes below are JSON's
    return Delivery(TRUCK, MqttConfig(host="broker.example", **kw), now=0.0)


def connected(now: float = 0.0, **kw: Any) -> Delivery:
    d = make(**kw)
    d.connecting(now)
    d.connack(now)
    assert d.state is UplinkState.CONNECTED
    return d


def event(seq: int, nfields: int = 3) -> StoredEvent:
    ev = Event("engine", 1_760_000_000_000 + seq, {f"f{i}": seq + i for i in range(nfields)})
    return StoredEvent(seq, ev.ts_ms, ev.type, Priority.TELEMETRY, encode_body(ev))


def batch(lane: Lane, seqs: range | list[int], nfields: int = 3) -> Batch:
    return Batch(lane, tuple(event(s, nfields) for s in seqs))


def lease(d: Delivery, now: float = 0.0) -> Lease:
    act = d.poll(now)
    assert isinstance(act, Lease), act
    return act


def publish(d: Delivery, now: float = 0.0) -> Publish:
    act = d.poll(now)
    assert isinstance(act, Publish), act
    return act


def send_one(d: Delivery, seqs: range | list[int], mid: int, now: float = 0.0) -> Publish:
    """Lease -> leased -> Publish -> sent as packet ``mid``."""
    le = lease(d, now)
    assert d.leased(le.lane, batch(le.lane, seqs)) == []
    pub = publish(d, now)
    assert d.sent(pub, mid, now) == []
    return pub


def released(acts: list[Action]) -> list[int]:
    return sorted(s for a in acts if isinstance(a, Release) for s in a.seqs)


def reconnect(acts: list[Action]) -> Reconnect:
    (r,) = [a for a in acts if isinstance(a, Reconnect)]
    return r


# ------------------------------------------------------------------------- PUBACKs


@pytest.mark.parametrize("code", [0x00, 0x10])
def test_puback_success_acks_exactly_the_seqs_of_the_message(code: int) -> None:
    d = connected()
    pub = send_one(d, range(1, 11), mid=1)
    assert pub.seqs == tuple(range(1, 11))
    assert d.event_inflight == 1
    assert d.puback(1, code, 0.5) == [Ack(tuple(range(1, 11)))]
    assert d.event_inflight == 0
    st_ = d.stats(0.5, 1_000_000)
    assert (st_.acked_messages, st_.acked_events, st_.published_events) == (1, 10, 10)
    assert st_.last_ack_ts_ms == 1_000_000
    assert d.puback(1, code, 0.6) == []  # a duplicate PUBACK acks nothing twice


def test_puback_not_authorized_releases_and_backs_off_refused() -> None:
    d = connected()
    send_one(d, range(1, 6), mid=1)
    send_one(d, range(6, 9), mid=2)
    acts = d.puback(1, 0x87, 1.0)
    assert not [a for a in acts if isinstance(a, Ack)]
    assert released(acts) == list(range(1, 9))  # the refused one and everything in flight
    assert reconnect(acts).refused
    assert d.state is UplinkState.REFUSED
    st_ = d.stats(1.0, 0)
    assert (st_.refusals, st_.refused_publishes, st_.acked_events) == (1, 1, 0)
    assert "Not authorized (0x87)" in (st_.last_error or "")
    assert d.puback(2, 0x00, 1.1) == []  # the old connection's flights are gone


def test_puback_packet_too_large_shrinks_and_stays_connected() -> None:
    d = connected(max_payload_bytes=65536)
    pub = send_one(d, range(1, 200), mid=1)
    acts = d.puback(1, 0x95, 1.0)
    assert acts == [Release(pub.seqs)]
    assert d.state is UplinkState.CONNECTED
    # geometric mean of what is known to pass (nothing yet: the floor) and the refused size
    assert d.max_payload_bytes == math.isqrt(MIN_PAYLOAD_BYTES * len(pub.payload))
    assert d.stats(1.0, 0).size_refusals == 1
    assert lease(d, 1.0).max_bytes == int(d.max_payload_bytes * LEASE_BYTES_SHARE)


def test_packet_too_large_at_the_minimum_size_is_a_refusal() -> None:
    d = connected(max_payload_bytes=MIN_PAYLOAD_BYTES)
    send_one(d, range(1, 4), mid=1)
    acts = d.puback(1, 0x95, 1.0)
    assert released(acts) == [1, 2, 3]
    assert reconnect(acts).refused
    assert d.max_payload_bytes == MIN_PAYLOAD_BYTES


def test_link_drop_on_a_big_packet_shrinks_and_never_climbs_back() -> None:
    d = connected(max_payload_bytes=65536)
    pub = send_one(d, range(1, 300), mid=7)
    acts = d.disconnected(2.0, 0x82, "protocol error")  # how Mosquitto 2.0 says "too big"
    assert released(acts) == list(pub.seqs)
    assert not [a for a in acts if isinstance(a, Ack)]
    small = d.max_payload_bytes
    assert small == math.isqrt(MIN_PAYLOAD_BYTES * len(pub.payload))
    d.connecting(3.0)
    d.connack(3.0, max_packet_size=1 << 20)  # a generous CONNACK does not undo it
    assert d.max_payload_bytes == small


def test_plain_disconnect_does_not_shrink() -> None:
    d = connected()
    send_one(d, range(1, 50), mid=1)
    d.disconnected(1.0, 0x00, "normal")
    assert d.max_payload_bytes == 131072


# ------------------------------------------------------------------------- ends


def test_disconnect_with_flights_pending_releases_them_never_acks() -> None:
    d = connected()
    send_one(d, range(1, 4), mid=1)
    send_one(d, range(4, 9), mid=2)
    assert d.puback(1, 0, 0.1) == [Ack((1, 2, 3))]
    acts = d.disconnected(0.2, 0x8B, "server shutting down")
    assert released(acts) == [4, 5, 6, 7, 8]
    assert not [a for a in acts if isinstance(a, Ack)]
    assert reconnect(acts).after_s >= 1.0
    assert d.state is UplinkState.BACKOFF
    assert d.event_inflight == 0
    assert d.puback(2, 0, 0.3) == []  # a late PUBACK of the dead connection acks nothing
    assert d.disconnected(0.4, 0, "again") == []  # idempotent


def test_publish_timeout_is_never_delivery() -> None:
    d = connected(publish_timeout_s=5.0)
    send_one(d, range(1, 6), mid=1, now=1.0)
    assert d.tick(5.9, last_inbound=5.9) == []
    acts = d.tick(6.0, last_inbound=6.0)
    assert released(acts) == [1, 2, 3, 4, 5]
    assert isinstance(reconnect(acts), Reconnect)
    st_ = d.stats(6.0, 0)
    assert (st_.publish_timeouts, st_.acked_events) == (1, 0)


def test_half_open_link_is_detected_by_silence() -> None:
    d = connected(keepalive_s=10)
    send_one(d, range(1, 3), mid=1)
    assert d.tick(15.0, last_inbound=0.0) == []  # 1.5 x keepalive not yet exceeded
    acts = d.tick(15.1, last_inbound=0.0)
    assert released(acts) == [1, 2]
    assert d.stats(15.1, 0).half_open_detected == 1


def test_status_is_due_every_interval() -> None:
    d = connected(status_interval_s=60.0)
    assert d.tick(59.0, 59.0) == []
    assert d.tick(60.0, 60.0) == [SendStatus("online")]
    assert d.tick(61.0, 61.0) == []


def test_publish_failed_locally_releases_and_reconnects() -> None:
    d = connected()
    le = lease(d)
    d.leased(le.lane, batch(le.lane, range(1, 5)))
    acts = d.publish_failed(publish(d), 0.0, "no connection")
    assert released(acts) == [1, 2, 3, 4]
    assert isinstance(reconnect(acts), Reconnect)


def test_a_publish_after_the_connection_died_is_released() -> None:
    d = connected()
    le = lease(d)
    d.leased(le.lane, batch(le.lane, [1, 2]))
    pub = publish(d)
    d.disconnected(0.0, 0, "gone")  # paho noticed inside publish()
    assert d.sent(pub, 1, 0.0) == [Release((1, 2))]


def test_a_packet_id_handed_out_again_while_in_flight_ends_the_connection() -> None:
    """paho wraps its ids at 65535 without checking which are free: a PUBACK for a reused
    id could belong to either message, so neither may be acked by it. Everything
    unacknowledged goes back and the link is made anew (fresh ids), not a lease stuck."""
    d = connected()
    send_one(d, [1, 2], mid=7)
    send_one(d, [3], mid=8)
    le = lease(d)
    d.leased(le.lane, batch(le.lane, [4, 5]))
    acts = d.sent(publish(d), 7, 0.0)
    assert released(acts) == [1, 2, 3, 4, 5]
    again = reconnect(acts)
    assert isinstance(again, Reconnect) and "packet id 7" in again.reason
    assert d.state is not UplinkState.CONNECTED
    assert d.puback(7, 0, 0.1) == [] and d.puback(8, 0, 0.1) == []  # acks nothing now
    # a status message on an id still in flight: the same, with the next tick
    d = connected()
    send_one(d, [1], mid=3)
    d.status_sent(3, 100, 0.0)
    acts = d.tick(0.5, 0.5)
    assert released(acts) == [1] and isinstance(reconnect(acts), Reconnect)


def test_lease_completing_after_the_end_is_released() -> None:
    d = connected()
    le = lease(d)
    d.disconnected(0.0, 0, "gone")
    assert d.leased(le.lane, batch(le.lane, [5, 6])) == [Release((5, 6))]


def test_empty_store_waits_for_pending() -> None:
    d = connected()
    le = lease(d)
    assert d.poll(0.0) is None  # one lease at a time
    assert d.leased(le.lane, None) == [WaitPending(1.0)]
    assert isinstance(d.poll(0.1), Lease)


def test_close_stops_leasing_releases_unsent_and_ends_closed() -> None:
    d = connected(max_payload_bytes=4096)
    le = lease(d)
    d.leased(le.lane, batch(le.lane, range(1, 200)))  # several payloads queued
    pub = publish(d)
    d.sent(pub, 1, 0.0)
    acts = d.close(0.1)
    assert released(acts) == sorted(set(range(1, 200)) - set(pub.seqs))
    assert d.state is UplinkState.CONNECTED and d.closing
    assert d.poll(0.1) is None
    assert d.puback(1, 0, 0.2) == [Ack(pub.seqs)]
    assert d.disconnected(0.3, 0, "closed by close()") == []
    assert d.stats(0.3, 0).state is UplinkState.CLOSED  # (not d.state: mypy narrowed it)


def test_close_while_not_connected_is_closed_at_once() -> None:
    d = make()
    assert d.close(0.0) == []
    assert d.state is UplinkState.CLOSED


def test_unencodable_body_is_acked_as_dropped_and_the_rest_goes() -> None:
    d = connected()
    le = lease(d)
    bad = StoredEvent(3, 0, "engine", Priority.TELEMETRY, b"\xffgarbage")
    b = Batch(le.lane, (event(1), event(2), bad, event(4)))
    assert d.leased(le.lane, b) == [Ack((3,))]
    assert publish(d).seqs == (1, 2, 4)
    assert d.stats(0.0, 0).dropped_unencodable == 1


# ------------------------------------------------------------------------- connection


def test_connack_maximum_packet_size_caps_payloads() -> None:
    d = make(max_payload_bytes=131072)
    d.connecting(0.0)
    d.connack(0.0, max_packet_size=8192)
    assert d.max_payload_bytes == 8192 - 1024
    le = lease(d)
    assert le.max_bytes == int((8192 - 1024) * LEASE_BYTES_SHARE)
    d.leased(le.lane, batch(le.lane, range(1, 400)))
    for mid in range(1, 100):
        act = d.poll(0.0)
        if not isinstance(act, Publish):
            break
        assert len(act.payload) <= 8192 - 1024
        d.sent(act, mid, 0.0)


def test_connack_receive_maximum_bounds_the_window() -> None:
    d = make(inflight_window=16)
    d.connecting(0.0)
    d.connack(0.0, receive_maximum=4)
    assert d.window == 3  # one slot kept for the status message
    for mid in range(1, 4):
        send_one(d, [mid], mid)
    assert d.poll(0.0) is None  # window full
    d.puback(2, 0, 0.1)
    assert isinstance(d.poll(0.1), Lease)


def test_window_is_the_configured_one_without_receive_maximum() -> None:
    d = connected(inflight_window=2)
    send_one(d, [1], 1)
    send_one(d, [2], 2)
    assert d.poll(0.0) is None


def test_refused_connack_and_backoff_floor_and_reset_after_a_healthy_connection() -> None:
    d = make(reconnect_min_s=1.0, reconnect_max_s=8.0)
    delays = []
    for i in range(6):
        d.connecting(float(i))
        delays.append(reconnect(d.connect_failed(float(i), "refused", refused=True)).after_s)
        assert d.state is UplinkState.REFUSED
    assert delays[0] == pytest.approx(1.0)
    assert all(1.0 <= x <= 8.0 for x in delays)
    assert d.stats(6.0, 0).connect_failures == 6
    d.connecting(10.0)
    d.connack(10.0)
    acts = d.disconnected(45.0, 0, "gone")  # up for 35 s: healthy, backoff starts over
    assert reconnect(acts).after_s == pytest.approx(1.0)
    assert d.stats(45.0, 0).reconnects == 0  # one connect so far


def test_bandwidth_cap_spaces_messages() -> None:
    d = connected(bandwidth_bytes_per_s=2000, max_payload_bytes=1024)
    le = lease(d)
    d.leased(le.lane, batch(le.lane, range(1, 60)))
    first = publish(d, 0.0)  # a full bucket lets the first go at once
    d.sent(first, 1, 0.0)
    t, sent = 0.0, len(first.payload)
    for mid in range(2, 40):
        act = d.poll(t)
        if isinstance(act, Wait):
            assert act.until > t
            t = act.until
            act = d.poll(t)
        if not isinstance(act, Publish):
            break
        d.sent(act, mid, t)
        d.puback(mid - 1, 0, t)
        sent += len(act.payload)
    assert t > 0
    # over the run the rate is the cap (plus the one-second burst the bucket starts with)
    assert (sent - 2000) / t <= 2000 * 1.05


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 1.0])
def test_live_share_splits_leases_between_lanes(share: float) -> None:
    d = connected(live_share=share, inflight_window=8)
    lanes = []
    for mid in range(1, 401):
        le = lease(d)
        lanes.append(le.lane)
        assert le.max_events == (LIVE_MAX_EVENTS if le.lane is Lane.LIVE
                                 else BACKFILL_MAX_EVENTS)
        d.leased(le.lane, batch(le.lane, [mid]))
        d.sent(publish(d), mid, 0.0)
        d.puback(mid, 0, 0.0)  # a fast link: every slot is free again at once
    live = lanes.count(Lane.LIVE) / len(lanes)
    assert live == pytest.approx(share, abs=0.01)
    if share:
        assert lanes[0] is Lane.LIVE


def test_payloads_are_the_wire_contract() -> None:
    d = connected(encoding="compact")
    le = lease(d)
    events = batch(le.lane, range(1, 30)).events
    d.leased(le.lane, Batch(le.lane, events))
    pub = publish(d)
    assert pub.payload == wire.encode_batches(TRUCK, events, "compact", 131072)[0][0]


# ------------------------------------------------------------------------- property


@st.composite
def scripts(draw: st.DrawFn) -> list[tuple[str, int]]:
    ops = st.sampled_from(["poll", "poll", "poll", "ack", "ack", "refuse", "too_large",
                           "drop", "tick", "reconnect", "empty", "fail", "ack_fail"])
    return draw(st.lists(st.tuples(ops, st.integers(0, 1000)), max_size=120))


@settings(max_examples=150, deadline=None)
@given(script=scripts(), window=st.integers(1, 5), payload=st.sampled_from([1024, 4096]))
def test_every_leased_seq_is_acked_once_after_its_puback_or_released(
    script: list[tuple[str, int]], window: int, payload: int,
) -> None:
    d = connected(inflight_window=window, max_payload_bytes=payload, publish_timeout_s=5.0)
    next_seq, mid, now = 1, 0, 0.0
    leased: set[int] = set()
    out: dict[int, tuple[int, ...]] = {}  # mid -> seqs, as the broker would see them
    acked: list[int] = []
    settled: set[int] = set()  # acked, released or set aside, not leased again yet
    groups: list[tuple[int, ...]] = []  # acked, delete not yet reported failed
    too_large: set[int] = set()  # seqs whose lone message was refused as too large

    def apply(acts: list[Action] | Release | None) -> None:
        for a in acts if isinstance(acts, list) else [acts] if acts else []:
            if isinstance(a, Ack):
                for s in a.seqs:
                    assert s in leased and s not in settled
                    assert any(s in seqs for seqs in out.values()), "acked without PUBACK"
                acked.extend(a.seqs)
                settled.update(a.seqs)
                groups.append(a.seqs)
            elif isinstance(a, DeadLetter):
                # only a message holding that one event, refused for size
                assert len(a.seqs) == 1 and a.seqs[0] in too_large, a
                assert a.seqs[0] in leased and a.seqs[0] not in settled
                settled.update(a.seqs)
            elif isinstance(a, Release):
                assert all(s in leased and s not in settled for s in a.seqs)
                settled.update(a.seqs)

    def step(act: Lease | Publish | Wait | None, arg: int, *, empty: bool = False,
             fail: bool = False) -> None:
        nonlocal next_seq, mid
        if isinstance(act, Lease):
            if empty:
                assert d.leased(act.lane, None) == [WaitPending(1.0)]
                return
            n = 1 + arg % 40
            seqs = list(range(next_seq, next_seq + n))
            next_seq += n
            leased.update(seqs)
            apply(d.leased(act.lane, batch(act.lane, seqs, 1 + arg % 7)))
        elif isinstance(act, Publish):
            if fail:
                apply(d.publish_failed(act, now, "no connection"))
                return
            mid = mid % 65535 + 1
            out[mid] = act.seqs
            apply(d.sent(act, mid, now))

    for op, arg in script:
        now += 0.5
        if op in ("poll", "empty", "fail"):
            step(d.poll(now), arg, empty=op == "empty", fail=op == "fail")
        elif op in ("ack", "refuse", "too_large") and out:
            m = sorted(out)[arg % len(out)]
            code = {"ack": 0x00, "refuse": 0x87, "too_large": 0x95}[op]
            if code == 0x95 and len(out[m]) == 1:
                too_large.update(out[m])
            acts = d.puback(m, code, now)
            apply(acts)
            del out[m]
        elif op == "drop":
            if arg % 2:  # a size-suspect drop: the largest lone event may be set aside
                too_large.update(s for seqs in out.values() if len(seqs) == 1 for s in seqs)
            apply(d.disconnected(now, 0x82 if arg % 2 else 0, "drop"))
        elif op == "ack_fail" and groups:
            # the store could not delete them: they must come back as a Release later
            g = groups.pop(arg % len(groups))
            settled.difference_update(g)
            assert d.ack_failed(g, now, "disk full") == []
        elif op == "tick":
            apply(d.tick(now + arg % 10, now))
        elif op == "reconnect" and d.state is not UplinkState.CONNECTED:
            out.clear()  # a new connection: the old packet ids mean nothing
            d.connecting(now)
            d.connack(now)
        assert d.event_inflight <= d.window
    apply(d.close(now))
    apply(d.disconnected(now, 0, "closed"))
    assert d.state is UplinkState.CLOSED
    assert len(acked) == len(set(acked)), "a seq acked twice"
    assert settled == leased, "a leased seq neither acked nor released"
    assert d.stats(now, 0).acked_events == len(acked)


# ------------------------------------------------------------------------- issue #13 case 4


def acked(d: Delivery, seqs: range | list[int], mid: int, now: float = 0.0) -> tuple[int, ...]:
    pub = send_one(d, seqs, mid=mid, now=now)
    assert d.puback(mid, 0, now) == [Ack(pub.seqs)]
    return pub.seqs


def test_failed_delete_holds_the_events_for_a_backoff_then_releases_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = connected()
    seqs = acked(d, range(1, 11), mid=1)
    assert d.ack_failed(seqs, 0.0, "disk I/O error") == []  # held, not released at once
    assert d.held_events == 10
    assert d.tick(ACK_RETRY_MIN_S * 0.99, last_inbound=0.5) == []  # not before the floor
    due = None
    for step in range(1, 200):  # bounded: the first delay is at most 2 x the floor
        acts = d.tick(step * 0.05, last_inbound=step * 0.05)
        if released(acts):
            due = step * 0.05
            assert released(acts) == list(seqs)
            break
    assert due is not None and due >= ACK_RETRY_MIN_S
    assert d.held_events == 0
    # once per episode: the second failure is counted, not logged
    again = acked(d, range(1, 11), mid=2, now=3.0)
    assert d.ack_failed(again, 3.0, "disk I/O error") == []
    assert d.stats(3.0, 0).ack_failures == 2
    errors = [r for r in caplog.records if "deleting" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in caplog.records]
    d.ack_stored(4.0)
    d.ack_stored(4.1)
    recovered = [r for r in caplog.records if "work again" in r.getMessage()]
    assert len(recovered) == 1


def test_failed_deletes_back_off_to_a_cap_and_never_spin() -> None:
    d = connected()
    now, releases = 0.0, 0
    for i in range(12):  # every resend fails to delete again
        seqs = acked(d, [100 + i], mid=i + 1, now=now)
        d.ack_failed(seqs, now, "disk full")
        start = now
        while not released(d.tick(now, last_inbound=now)):
            now += 0.5
            assert now - start <= ACK_RETRY_MAX_S + 0.5
        releases += 1
    # never sooner than the floor (the delays are jittered, so no exact figure)
    assert now >= 12 * ACK_RETRY_MIN_S
    assert releases == 12
    assert d.stats(now, 0).ack_failures == 12


def test_held_events_go_back_on_close() -> None:
    d = connected()
    seqs = acked(d, range(1, 4), mid=1)
    d.ack_failed(seqs, 0.0, "disk full")
    assert released(d.close(0.1)) == [1, 2, 3]
    assert d.held_events == 0


# ------------------------------------------------------------------------- issue #13 case 5


def test_single_event_refused_as_too_large_is_dead_lettered_and_the_link_stays() -> None:
    d = connected(max_payload_bytes=4096)
    pub = send_one(d, [7], mid=1)
    acts = d.puback(1, 0x95, 1.0)
    assert acts == [DeadLetter(pub.seqs)]
    assert d.state is UplinkState.CONNECTED
    assert d.max_payload_bytes == 4096  # one poison event does not shrink everyone
    st_ = d.stats(1.0, 0)
    assert (st_.dead_lettered, st_.size_refusals, st_.released_events) == (1, 1, 0)


def test_link_drop_with_a_lone_big_event_in_flight_dead_letters_it_without_backoff() -> None:
    d = connected(max_payload_bytes=8192)
    small = send_one(d, range(1, 5), mid=1)
    le = lease(d)
    poison = StoredEvent(5, 1, "dtc", Priority.CRITICAL,
                         b'{"ts":1,"type":"dtc","x":"' + b"a" * 20000 + b'"}')
    assert d.leased(le.lane, Batch(le.lane, (poison,))) == []
    big = publish(d)
    assert len(big.payload) > 8192 and big.seqs == (5,)
    assert d.sent(big, 2, 0.0) == []
    acts = d.disconnected(1.0, 0x82, "protocol error")
    assert [a for a in acts if isinstance(a, DeadLetter)] == [DeadLetter((5,))]
    assert released(acts) == list(small.seqs)
    assert reconnect(acts).after_s == 1.0  # reconnect_min_s: no backoff growth
    assert not reconnect(acts).refused
    assert d.failures_in_a_row == 0
    assert d.max_payload_bytes == 8192


def test_size_refusals_converge_within_a_few_attempts_without_backoff() -> None:
    """A broker limit of 3000 bytes from 128 KiB: the scenario of issue #13."""
    limit = 3000
    d = make(reconnect_min_s=1.0, reconnect_max_s=120.0)
    now, seq, drops, delivered = 0.0, 1, 0, 0
    for _attempt in range(10):
        d.connecting(now)
        d.connack(now)
        le = lease(d, now)
        per_event = len(wire.wire_event_json(1, event(1).body)) + 1
        n = max(1, min(le.max_events, le.max_bytes // per_event))
        assert d.leased(le.lane, batch(le.lane, range(seq, seq + n))) == []
        pubs = []
        while isinstance(act := d.poll(now), Publish):
            pubs.append(act)
            assert d.sent(act, len(pubs), now) == []
        too_big = [p for p in pubs if len(p.payload) > limit]
        if too_big:
            drops += 1
            acts = d.disconnected(now, 0x82, "protocol error")
            assert reconnect(acts).after_s == 1.0, drops  # never a growing backoff
            now += reconnect(acts).after_s
            continue
        for mid, p in enumerate(pubs, 1):
            assert d.puback(mid, 0, now) == [Ack(p.seqs)]
            delivered += len(p.seqs)
        break
    assert delivered > 0, d.stats(now, 0)
    assert drops <= 3, drops  # halving needed 6 (131072 -> ... -> 2048)
    assert d.failures_in_a_row == 0
    st_ = d.stats(now, 0)
    assert st_.size_refusals == drops and st_.connect_failures == 0
    assert MIN_PAYLOAD_BYTES <= d.max_payload_bytes <= limit


def test_a_drop_after_bigger_messages_passed_is_not_taken_for_size() -> None:
    d = connected(max_payload_bytes=65536)
    acked(d, range(1, 300), mid=1)  # a big message went through
    send_one(d, range(300, 310), mid=2)  # a smaller one in flight
    acts = d.disconnected(1.0, 0x82, "protocol error")
    assert d.max_payload_bytes == 65536
    assert not [a for a in acts if isinstance(a, DeadLetter)]
    assert d.failures_in_a_row == 1  # an ordinary drop: the backoff counts it
    assert d.stats(1.0, 0).size_refusals == 0


def test_a_broker_restarted_with_a_lower_limit_is_not_judged_by_its_predecessor() -> None:
    d = connected(max_payload_bytes=65536)
    acked(d, range(1, 300), mid=1)  # big messages passed on the first connection
    d.disconnected(1.0, 0x8B, "server shutting down")
    d.connecting(2.0)
    d.connack(2.0)  # the broker is back, now with a small message_size_limit
    le = lease(d, 2.0)
    poison = StoredEvent(400, 1, "dtc", Priority.CRITICAL,
                         b'{"ts":1,"type":"dtc","x":"' + b"a" * 6000 + b'"}')
    assert d.leased(le.lane, Batch(le.lane, (poison,))) == []
    pub = publish(d, 2.0)
    assert d.sent(pub, 1, 2.0) == []
    acts = d.disconnected(2.5, 0x82, "protocol error")
    assert [a for a in acts if isinstance(a, DeadLetter)] == [DeadLetter((400,))]
    assert reconnect(acts).after_s == 1.0
    # and a refused batch below what passed before starts the size search over
    d.connecting(3.5)
    d.connack(3.5)
    pub = send_one(d, range(500, 700), mid=2, now=3.5)
    assert len(pub.payload) < 65536
    d.disconnected(4.0, 0x82, "protocol error")
    assert d.max_payload_bytes == math.isqrt(MIN_PAYLOAD_BYTES * len(pub.payload))


def test_a_lone_event_over_the_connack_maximum_packet_size_is_set_aside_unsent() -> None:
    d = make()
    d.connecting(0.0)
    d.connack(0.0, max_packet_size=3000)
    le = lease(d)
    poison = StoredEvent(9, 1, "dtc", Priority.CRITICAL,
                         b'{"ts":1,"type":"dtc","x":"' + b"a" * 5000 + b'"}')
    acts = d.leased(le.lane, Batch(le.lane, (*batch(le.lane, range(1, 9)).events, poison)))
    assert acts == [DeadLetter((9,))]
    pubs = []
    while isinstance(act := d.poll(0.0), Publish):
        pubs.append(act)
    assert [s for p in pubs for s in p.seqs] == list(range(1, 9))  # the rest goes
    assert d.stats(0.0, 0).dead_lettered == 1
    # just below the limit (with the PUBLISH header): sent, not set aside
    d2 = make()
    d2.connecting(0.0)
    d2.connack(0.0, max_packet_size=3000)
    le = lease(d2)
    body = b'{"ts":1,"type":"dtc","x":"' + b"a" * 2500 + b'"}'
    assert d2.leased(le.lane, Batch(le.lane, (StoredEvent(9, 1, "dtc", Priority.CRITICAL,
                                                          body),))) == []
    assert isinstance(d2.poll(0.0), Publish)
