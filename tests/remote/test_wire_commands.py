"""The pure command core: signed envelope (HMAC-SHA256), request codec, policy checks,
the request-id window."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.schema import REMOTE_COMMANDS
from gateway.remote import commands
from gateway.remote.commands import Policy, Request, RequestWindow, check, decode_request
from gateway.remote.wire import Code, Opened, RefusedError, open_message, sign

KEY = b"k3y-for-TRK-0001"
NOW = 1_764_700_000_000
POLICY = Policy(frozenset(REMOTE_COMMANDS), 300_000, v5=True)


def req(**kw: object) -> dict[str, object]:
    return {"request_id": "r-1", "name": "ping", "args": {}, "ts_ms": NOW, **kw}


def refusal(fn: object, *a: object, **kw: object) -> RefusedError:
    with pytest.raises(RefusedError) as info:
        fn(*a, **kw)  # type: ignore[operator]
    return info.value


def test_unsigned_passes_unless_signing_is_required() -> None:
    raw = json.dumps(req()).encode()
    assert open_message(raw, KEY, require_signed=False) == Opened(req(), signed=False)
    exc = refusal(open_message, raw, KEY, require_signed=True)
    assert exc.code is Code.UNAUTHORIZED
    assert "unsigned" in exc.reason


def test_signed_round_trip_and_tampering() -> None:
    raw = sign(req(), KEY)
    opened = open_message(raw, KEY, require_signed=True)
    assert opened.signed
    assert opened.doc == req()
    env = json.loads(raw)
    env["signed"] = env["signed"].replace('"ping"', '"restart"')
    exc = refusal(open_message, json.dumps(env).encode(), KEY, require_signed=True)
    assert (exc.code, exc.reason) == (Code.UNAUTHORIZED, "bad signature")
    wrong = refusal(open_message, raw, b"another truck's key", require_signed=False)
    assert wrong.code is Code.UNAUTHORIZED
    nokey = refusal(open_message, raw, None, require_signed=False)
    assert "no remote.key_file" in nokey.reason


def test_a_reason_never_carries_the_key_or_the_signature() -> None:
    raw = sign(req(), KEY)
    sig = json.loads(raw)["sig"]
    for key in (b"x", KEY):
        env = json.loads(raw)
        env["sig"] = "00" * 32
        for payload in (json.dumps(env).encode(), raw):
            try:
                open_message(payload, key, require_signed=True)
            except RefusedError as exc:
                assert KEY.decode() not in exc.reason
                assert sig not in exc.reason


@pytest.mark.parametrize("payload", [b"", b"not json", b"[1,2]", b'{"signed": 1, "sig": "x"}'])
def test_garbage_is_a_bad_request(payload: bytes) -> None:
    assert refusal(open_message, payload, KEY, require_signed=False).code is Code.BAD_REQUEST


@pytest.mark.parametrize("doc", [
    {"name": "ping"}, {"request_id": "", "name": "ping"}, {"request_id": "a b", "name": "p"},
    {"request_id": "x" * 129, "name": "ping"}, {"request_id": "r", "name": ""},
    {"request_id": "r", "name": "ping", "args": []},
    {"request_id": "r", "name": "ping", "expires_at_ms": "soon"},
    {"request_id": "r", "name": "ping", "ts_ms": True},
])
def test_malformed_requests(doc: dict[str, object]) -> None:
    exc = refusal(decode_request, Opened(doc, signed=False))
    assert exc.code is Code.BAD_REQUEST


def decoded(signed: bool = False, **kw: object) -> Request:
    return decode_request(Opened(req(**kw), signed=signed))


def test_expired_request_does_not_run() -> None:
    check(decoded(expires_at_ms=NOW + 1), POLICY, NOW, has_response_topic=True)
    exc = refusal(check, decoded(expires_at_ms=NOW - 86_400_000 * 3), POLICY, NOW,
                  has_response_topic=True)
    assert exc.code is Code.EXPIRED


def test_signed_request_outside_the_window_is_refused() -> None:
    check(decoded(signed=True), POLICY, NOW + 299_000, has_response_topic=True)
    for now in (NOW + 301_000, NOW - 301_000):
        assert refusal(check, decoded(signed=True), POLICY, now,
                       has_response_topic=True).code is Code.UNAUTHORIZED
    assert refusal(check, decoded(signed=True, ts_ms=None), POLICY, NOW,
                   has_response_topic=True).code is Code.UNAUTHORIZED


def test_mqtt311_runs_only_signed_requests() -> None:
    v3 = Policy(frozenset(REMOTE_COMMANDS), 300_000, v5=False)
    exc = refusal(check, decoded(reply_to="fleet/T/cmd/res/x"), v3, NOW, has_response_topic=False)
    assert exc.code is Code.UNAUTHORIZED
    check(decoded(signed=True, reply_to="fleet/T/cmd/res/x"), v3, NOW, has_response_topic=False)


def test_allow_list_and_unknown_names() -> None:
    only_ping = Policy(frozenset({"ping"}), 300_000, v5=True)
    check(decoded(), only_ping, NOW, has_response_topic=True)
    assert refusal(check, decoded(name="restart"), only_ping, NOW,
                   has_response_topic=True).code is Code.FORBIDDEN
    assert refusal(check, decoded(name="format_disk"), POLICY, NOW,
                   has_response_topic=True).code is Code.UNKNOWN
    assert refusal(check, decoded(), POLICY, NOW,
                   has_response_topic=False).code is Code.BAD_REQUEST


def test_reply_topic_must_be_under_the_trucks_own_prefix() -> None:
    pre = "fleet/T1/cmd/res/"
    assert commands.reply_topic_ok("fleet/T1/cmd/res/ops-1", pre)
    for bad in ("fleet/T1/cmd/res/", "fleet/T2/cmd/res/x", "fleet/T1/events", "fleet/T1/cmd/res/#"):
        assert not commands.reply_topic_ok(bad, pre)


def test_reply_codec() -> None:
    out = json.loads(commands.encode_reply("r-1", "ping", Code.DUPLICATE, {"a": 1},
                                           truck_id="T1", now_ms=NOW))
    assert out == {"request_id": "r-1", "name": "ping", "code": 409, "result": "duplicate",
                   "body": {"a": 1}, "truck_id": "T1", "ts_ms": NOW}
    ok = json.loads(commands.encode_reply("r", "ping", Code.OK, None, truck_id="T", now_ms=1))
    assert ok["result"] == "ok"


def test_window_remembers_and_forgets_the_oldest() -> None:
    w = RequestWindow(size=3)
    for i in range(5):
        w.add(f"r{i}", 200)
    assert len(w) == 3
    assert w.seen("r0") is None
    assert w.seen("r4") == 200
    w.add("r4", 500)  # a result updates, does not take another slot
    assert w.seen("r4") == 500
    assert len(w) == 3
    again = RequestWindow.load(json.loads(json.dumps(w.dump())), size=3)
    assert again.dump() == w.dump()
    assert RequestWindow.load([["ok", 1], "junk", [1, 2], ["x"]]).dump() == [["ok", 1]]


@given(st.lists(st.text(alphabet="abcdef", min_size=1, max_size=3), max_size=60))
def test_window_is_bounded_and_keeps_the_newest(ids: list[str]) -> None:
    w = RequestWindow(size=8)
    for rid in ids:
        w.add(rid, 200)
    assert len(w) <= 8
    assert len(w) == min(8, len(set(ids))) or len(w) == 8
    if ids:  # the newest id is always remembered
        assert w.seen(ids[-1]) == 200


def test_reply_schema_lists_every_code() -> None:
    from tests.remote.harness import schema  # noqa: PLC0415

    doc_schema = schema("reply").schema
    assert isinstance(doc_schema, dict)
    props = doc_schema["properties"]
    assert props["code"]["enum"] == [int(c) for c in Code]
    assert props["result"]["enum"] == ["ok" if c is Code.OK else c.name.lower() for c in Code]
    doc = json.loads(commands.encode_reply("r", "ping", Code.OK, {}, truck_id="T", now_ms=1))
    schema("reply").validate(doc)
    schema("signed").validate(json.loads(sign(req(), KEY)))
    schema("request").validate(req())
