"""The apply / confirm / roll-back state machine (pure), with a hypothesis property."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gateway.remote import rollback
from gateway.remote.rollback import Phase, State

SHA_NEW = "n" * 64
SHA_OLD = "o" * 64


def pending(grace_s: float = 10.0) -> State:
    s = State(running_version=3, handled_version=3)
    s = rollback.begin(s, 4, new_sha256=SHA_NEW, grace_s=grace_s, live=(),
                       restart=("mqtt.host",), at_ms=1)
    assert s.phase is Phase.APPLYING
    assert s.outcome is not None
    assert s.outcome.status == "pending"
    return rollback.written(s)


def test_confirmed_when_a_broker_is_reached() -> None:
    s = rollback.connected(pending(), at_ms=5)
    assert (s.phase, s.running_version, s.handled_version) == (Phase.CONFIRMED, 4, 4)
    assert s.outcome is not None
    assert (s.outcome.status, s.outcome.restart) == ("applied", ("mqtt.host",))
    assert not rollback.should_handle(s, 4)
    assert rollback.should_handle(s, 5)


def test_grace_used_up_rolls_back_and_reports_the_failed_version() -> None:
    d = rollback.waited(pending(grace_s=10), 6)
    assert d.roll_back is None
    d = rollback.waited(d.state, 4.5)
    assert d.roll_back is not None
    assert "grace period of 10 s" in d.roll_back
    s = rollback.rolled_back(d.state, d.roll_back, at_ms=9)
    assert (s.phase, s.running_version, s.handled_version) == (Phase.ROLLED_BACK, 3, 4)
    assert s.outcome is not None
    assert (s.outcome.version, s.outcome.status) == (4, "rolled_back")
    assert not rollback.should_handle(s, 4)  # the retained document does not come back


def test_waiting_survives_restarts() -> None:
    d = rollback.waited(pending(grace_s=10), 7)
    again = State.from_json(json.loads(json.dumps(d.state.to_json())))
    assert again == d.state
    start = rollback.at_start(again, SHA_NEW, None, max_starts=5)
    assert start.roll_back is None
    assert rollback.waited(start.state, 3.0).roll_back is not None


def test_grace_already_used_up_at_start() -> None:
    d = rollback.waited(pending(grace_s=10), 10)
    assert rollback.at_start(d.state, SHA_NEW, None, max_starts=5).roll_back is not None


def test_crash_loop_rolls_back() -> None:
    s = pending()
    for _ in range(3):
        d = rollback.at_start(s, SHA_NEW, None, max_starts=3)
        assert d.roll_back is None
        s = d.state
    d = rollback.at_start(s, SHA_NEW, None, max_starts=3)
    assert d.roll_back is not None
    assert "3 starts" in d.roll_back


def test_a_file_that_does_not_load_rolls_back() -> None:
    d = rollback.at_start(pending(), SHA_NEW, "truckgw.toml: mqtt.port: expected ...", 3)
    assert d.roll_back is not None
    assert "does not load" in d.roll_back


def test_killed_during_apply() -> None:
    s = State(running_version=3, handled_version=3)
    applying = rollback.begin(s, 4, new_sha256=SHA_NEW, grace_s=10, live=(), restart=("x",),
                              at_ms=1)
    old = rollback.at_start(applying, SHA_OLD, None, max_starts=3)
    assert old.roll_back is None
    assert (old.state.phase, old.state.running_version) == (Phase.IDLE, 3)
    assert rollback.should_handle(old.state, 4)  # never in force: may be tried again
    new = rollback.at_start(applying, SHA_NEW, None, max_starts=3)
    assert (new.state.phase, new.state.starts) == (Phase.PENDING_CONFIRM, 1)


def test_rejected_and_live() -> None:
    s = rollback.rejected(State(), 2, ("f: k: bad",), at_ms=3)
    assert (s.phase, s.running_version, s.handled_version) == (Phase.IDLE, 0, 2)
    assert not rollback.should_handle(s, 1)
    s = rollback.applied_live(s, 5, ("log.level",), at_ms=4)
    assert (s.phase, s.running_version) == (Phase.CONFIRMED, 5)


def test_malformed_state_is_the_default() -> None:
    assert State.from_json(None) == State()
    assert State.from_json({"phase": "nonsense"}) == State()
    assert State.from_json({"outcome": {"status": "x"}}) == State()


EVENTS = st.lists(st.one_of(
    st.tuples(st.just("wait"), st.floats(0, 5)),
    st.tuples(st.just("start"), st.booleans()),
    st.tuples(st.just("connect"), st.none()),
), max_size=40)


@given(EVENTS, st.floats(1, 30), st.integers(1, 5))
def test_pending_always_ends_confirmed_or_rolled_back(events: list[tuple[str, object]],
                                                     grace: float, max_starts: int) -> None:
    """Whatever happens, a pending change is confirmed only by a connection, rolled back
    no later than its grace or its start budget, and never both."""
    s, waited_total, starts = pending(grace_s=grace), 0.0, 0
    for kind, arg in events:
        if kind == "wait":
            assert isinstance(arg, float)
            waited_total += arg
            d = rollback.waited(s, arg)
        elif kind == "start":
            starts += 1
            d = rollback.at_start(s, SHA_NEW, None if arg else "bad", max_starts)
        else:
            s = rollback.connected(s, at_ms=1)
            assert s.phase in (Phase.CONFIRMED, Phase.ROLLED_BACK)
            break
        if d.roll_back is not None:
            s = rollback.rolled_back(d.state, d.roll_back, at_ms=1)
            assert s.running_version == 3
            break
        s = d.state
        assert s.phase is Phase.PENDING_CONFIRM
        assert s.waited_s < grace
        assert s.starts <= max_starts
    if s.phase is Phase.CONFIRMED:
        assert s.running_version == 4


def test_rollback_failed_stays_on_the_new_file_and_says_so() -> None:
    s = rollback.rollback_failed(pending(), "no broker", "cannot restore truckgw.toml.prev",
                                 at_ms=7)
    assert (s.phase, s.running_version, s.handled_version) == (Phase.IDLE, 4, 4)
    assert s.outcome is not None
    assert s.outcome.status == "rollback_failed"
    assert s.outcome.errors == ("no broker", "cannot restore truckgw.toml.prev")
    assert not rollback.should_handle(s, 4)
    assert rollback.at_start(s, SHA_NEW, None, max_starts=1).roll_back is None  # no loop
