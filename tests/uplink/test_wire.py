"""Pure tests of the wire format: round trips, size limits, topics, bad input."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from buffer.api import StoredEvent
from config.errors import WireError
from config.events import Event, encode_body
from gateway import wire
from gateway.ts_correct import Correction, corrected, wire_body
from tests.uplink.helpers import mixed_event

#: sha256 of gateway/dicts/events-1.zdict, as docs/wire-format.md publishes it
DICT_SHA256 = "940d4f7949ee484b3df7856a0231259529d79dd7a4283c3ac80afbde0f23d9b0"


def stored(seq: int, ev: Event) -> StoredEvent:
    return StoredEvent(seq, ev.ts_ms, ev.type, ev.priority, encode_body(ev))


def events(n: int, start: int = 1) -> list[StoredEvent]:
    return [stored(start + i, mixed_event(i)) for i in range(n)]


@pytest.mark.parametrize("encoding", wire.ENCODINGS)
def test_round_trip_keeps_every_field(encoding: str) -> None:
    evs = events(50)
    out = wire.encode_batches("truck-7", evs, encoding, 1 << 20)
    assert len(out) == 1
    payload, seqs = out[0]
    assert seqs == tuple(range(1, 51))
    batch = wire.decode_payload(payload, compact=encoding != "json")
    assert batch["truck_id"] == "truck-7"
    for ev, got in zip(evs, batch["events"], strict=True):
        want = json.loads(ev.body)
        want["seq"] = ev.seq
        assert got == want  # floats bit-identical: both encodings carry the same JSON text


def test_json_event_is_body_with_seq_in_front() -> None:
    ev = stored(42, Event("gps", 5, {"lat": 1.5}))
    assert wire.wire_event_json(42, ev.body) == b'{"seq":42,"ts":5,"type":"gps","lat":1.5}'
    payload, _ = wire.encode_batches("t", [ev], "json", 4096)[0]
    assert payload == (b'{"schema":"truckgw.batch/3","truck_id":"t","stream":"","events":'
                       b'[{"seq":42,"ts":5,"type":"gps","lat":1.5}]}')


def test_decoder_accepts_batches_without_schema() -> None:
    """Revision-1 trucks send no ``schema``; a later revision is accepted as well."""
    old = wire.decode_payload(b'{"truck_id":"t","events":[{"seq":1,"ts":2,"type":"gps"}]}',
                              compact=False)
    assert "schema" not in old and old["events"][0]["seq"] == 1
    new = wire.decode_payload(b'{"schema":"truckgw.batch/9","truck_id":"t","events":[]}',
                              compact=False)
    assert new["schema"] == "truckgw.batch/9"


@pytest.mark.parametrize("encoding", wire.ENCODINGS)
@pytest.mark.parametrize("limit", [1024, 3000, 20000])
def test_split_respects_limit_and_keeps_order(encoding: str, limit: int) -> None:
    evs = events(1500)
    out = wire.encode_batches("truck-001", evs, encoding, limit)
    assert len(out) > 1 if encoding == "json" or limit < 20000 else len(out) >= 1
    assert all(len(p) <= limit for p, _ in out)
    flat = [s for _, seqs in out for s in seqs]
    assert flat == [e.seq for e in evs]
    for p, seqs in out:
        got = wire.decode_payload(p, compact=encoding != "json")
        assert [e["seq"] for e in got["events"]] == list(seqs)


def test_json_payloads_are_packed_full() -> None:
    out = wire.encode_batches("truck-001", events(500), "json", 4096)
    # every payload but the last would overflow with one more event
    for p, _ in out[:-1]:
        assert len(p) > 4096 - 200


def test_event_larger_than_limit_travels_alone() -> None:
    big = stored(1, Event("dtc", 1, {"note": "x" * 3000}))
    out = wire.encode_batches("t", [stored(0, mixed_event(0)), big, stored(2, mixed_event(2))],
                              "json", 1024)
    assert [s for _, s in out] == [(0,), (1,), (2,)]


def test_compact_is_the_json_batch_in_one_zstd_frame() -> None:
    evs = events(3)
    payload, _ = wire.encode_batches("t", evs, "compact", 4096)[0]
    (plain, _), = wire.encode_batches("t", evs, "json", 4096)
    # any zstd library and any JSON parser decode it: no truckgw code needed
    raw = zstandard.ZstdDecompressor().decompress(payload)
    assert raw == plain
    assert zstandard.frame_content_size(payload) == len(plain)
    obj = json.loads(raw)
    assert obj["schema"] == wire.BATCH_SCHEMA
    assert obj["truck_id"] == "t"
    assert [e["seq"] for e in obj["events"]] == [1, 2, 3]


def test_compact_is_much_smaller_than_json() -> None:
    evs = events(2000)
    js = sum(len(p) for p, _ in wire.encode_batches("truck-001", evs, "json", 131072))
    cp = sum(len(p) for p, _ in wire.encode_batches("truck-001", evs, "compact", 131072))
    assert cp * 4 < js


def test_dictionary_shrinks_a_live_message_and_names_itself_in_the_frame() -> None:
    """A message of a few events (a live linger) is where the dictionary pays."""
    evs = events(10)
    (cp, _), = wire.encode_batches("truck-001", evs, "compact", 131072)
    (cd, _), = wire.encode_batches("truck-001", evs, "compact-dict", 131072)
    assert len(cd) * 3 < len(cp) * 2, (len(cd), len(cp))
    assert zstandard.get_frame_parameters(cd).dict_id == wire.DICT_ID
    assert zstandard.get_frame_parameters(cp).dict_id == 0
    with pytest.raises(zstandard.ZstdError):  # no dictionary, no decode: hence its own type
        zstandard.ZstdDecompressor().decompress(cd)
    raw = zstandard.ZstdDecompressor(dict_data=wire.dictionary(wire.DICT_ID)).decompress(cd)
    assert raw == wire.encode_batches("truck-001", evs, "json", 131072)[0][0]


def test_dictionary_file_is_the_published_one() -> None:
    """The id and bytes of events-1.zdict are part of the contract (docs/wire-format.md)."""
    data = (Path(wire.__file__).parent / "dicts" / "events-1.zdict").read_bytes()
    assert hashlib.sha256(data).hexdigest() == DICT_SHA256
    assert wire.dictionary(wire.DICT_ID).dict_id() == wire.DICT_ID


def test_unknown_dictionary_is_a_wire_error_naming_the_id() -> None:
    other = zstandard.train_dictionary(1024, [b'{"k%d":%d}' % (i % 7, i) for i in range(400)],
                                       dict_id=12345, k=16, d=8)
    payload = zstandard.ZstdCompressor(dict_data=other, write_content_size=True).compress(
        b'{"truck_id":"t","events":[]}')
    with pytest.raises(WireError, match="dictionary id 12345"):
        wire.decode_payload(payload, compact=True)


def test_topics_and_content_types() -> None:
    assert wire.events_topic("fleet", "t1", "json", "5") == "fleet/t1/events"
    assert wire.events_topic("fleet", "t1", "compact", "5") == "fleet/t1/events"
    assert wire.events_topic("fleet", "t1", "json", "3.1.1") == "fleet/t1/events"
    assert wire.events_topic("fleet", "t1", "compact", "3.1.1") == "fleet/t1/events/json-zstd"
    assert wire.status_topic("a/b", "t1") == "a/b/t1/status"
    assert wire.is_compact("fleet/t1/events", wire.CONTENT_TYPE_COMPACT)
    assert not wire.is_compact("fleet/t1/events", wire.CONTENT_TYPE_JSON)
    assert wire.is_compact("fleet/t1/events/json-zstd", None)
    assert not wire.is_compact("fleet/t1/events", None)
    assert wire.events_topic("fleet", "t1", "compact-dict", "5") == "fleet/t1/events"
    assert (wire.events_topic("fleet", "t1", "compact-dict", "3.1.1")
            == "fleet/t1/events/json-zstd-dict")
    assert wire.content_type("compact-dict") == "application/json+zstd-dict"
    assert wire.is_compact("fleet/t1/events", wire.CONTENT_TYPE_DICT)
    assert wire.is_compact("fleet/t1/events/json-zstd-dict", None)
    with pytest.raises(ValueError, match="unknown wire encoding"):
        wire.events_topic("fleet", "t1", "msgpack", "5")


def test_status_payload() -> None:
    obj = json.loads(wire.encode_status("t1", "online", 123, {"pending": 4, "state": "x"}))
    assert obj == {"schema": "truckgw.status/3", "state": "online", "truck_id": "t1",
                   "ts": 123, "pending": 4}


@pytest.mark.parametrize(
    ("payload", "compact", "match"),
    [
        (b"not json", False, "not valid"),
        (b"[]", False, "not an object"),
        (b'{"events":[]}', False, "truck_id"),
        (b'{"truck_id":"t"}', False, "events list"),
        (b'{"schema":2,"truck_id":"t","events":[]}', False, "schema"),
        (b'{"truck_id":"t","events":[1]}', False, "not an object"),
        (b'{"truck_id":"t","events":[{"seq":true,"ts":1,"type":"x"}]}', False, "seq"),
        (b'{"truck_id":"t","events":[{"seq":-1,"ts":1,"type":"x"}]}', False, "seq"),
        (b'{"truck_id":"t","events":[{"seq":1,"ts":1.5,"type":"x"}]}', False, "ts"),
        (b'{"truck_id":"t","events":[{"seq":1,"ts":1}]}', False, "type"),
        (b"\x00\x01garbage", True, "zstd"),
        (zstandard.ZstdCompressor().compress(b"\xff\xff"), True, "not UTF-8 JSON"),
        (zstandard.ZstdCompressor().compress(b'{"1": 2}'), True, "truck_id"),
    ],
)
def test_decode_rejects_bad_input(payload: bytes, compact: bool, match: str) -> None:
    with pytest.raises(WireError, match=match):
        wire.decode_payload(payload, compact=compact)


def test_decode_refuses_a_zstd_bomb() -> None:
    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (2 << 20))
    with pytest.raises(WireError, match="inflates"):
        wire.decode_payload(bomb, compact=True, max_decoded_bytes=1 << 20)


def test_decode_without_content_size_is_bounded() -> None:
    cz = zstandard.ZstdCompressor(write_content_size=False)
    good = cz.compress(b'{"truck_id": "t", "events": []}')
    assert wire.decode_payload(good, compact=True)["events"] == []
    bomb = cz.compress(b"\x00" * (2 << 20))
    with pytest.raises(WireError, match="inflates"):
        wire.decode_payload(bomb, compact=True, max_decoded_bytes=1 << 20)


_fields = st.dictionaries(
    st.text(min_size=1, max_size=12).filter(lambda k: k not in ("seq", "ts", "type")),
    st.one_of(st.integers(-(2**53), 2**53), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=20), st.booleans(), st.none(),
              st.lists(st.integers(0, 1000), max_size=4)),
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(
    items=st.lists(st.tuples(st.sampled_from(["gps", "engine", "dtc"]),
                             st.integers(0, 2**42), _fields), min_size=1, max_size=40),
    encoding=st.sampled_from(["json", "compact"]),
    limit=st.integers(1024, 8192),
)
def test_property_round_trip(items: list[tuple[str, int, dict[str, object]]], encoding: str,
                             limit: int) -> None:
    evs = [stored(i + 1, Event(t, ts, f)) for i, (t, ts, f) in enumerate(items)]
    out = wire.encode_batches("truck-x", evs, encoding, limit)
    got = []
    for p, seqs in out:
        batch = wire.decode_payload(p, compact=encoding != "json")
        assert [e["seq"] for e in batch["events"]] == list(seqs)
        got.extend(batch["events"])
    assert len(got) == len(evs)
    for ev, g in zip(evs, got, strict=True):
        want = json.loads(ev.body)
        want["seq"] = ev.seq
        assert g == want


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), compact=st.booleans())
def test_property_decode_never_crashes(data: bytes, compact: bool) -> None:
    with contextlib.suppress(WireError):
        wire.decode_payload(data, compact=compact)




_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
              st.floats(allow_nan=False), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(doc=_json_values)
def test_property_any_json_in_a_frame_decodes_or_raises_wire_error(doc: object) -> None:
    """Well-formed zstd frames carrying arbitrary JSON: a batch or a WireError, nothing else."""
    payload = zstandard.ZstdCompressor().compress(json.dumps(doc).encode())
    try:
        batch = wire.decode_payload(payload, compact=True)
    except WireError:
        return
    assert isinstance(batch["truck_id"], str)
    assert isinstance(batch["events"], list)


@settings(max_examples=300, deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1,
                   max_size=8),
    cut=st.integers(0, 10_000),
)
def test_property_mutated_compact_payload_raises_only_wire_error(
    edits: list[tuple[int, int]], cut: int
) -> None:
    """Real compact payloads with flipped bytes or cut short: never another exception.

    Memory stays bounded: the decoder never inflates beyond its limit (checked here with
    a limit just above the real content size).
    """
    payload, _ = wire.encode_batches("truck-x", events(40), "compact", 1 << 20)[0]
    buf = bytearray(payload)
    for pos, value in edits:
        buf[pos % len(buf)] = value
    mutated = bytes(buf[: max(1, cut % (len(buf) + 1))])
    limit = 2 * len(zstandard.ZstdDecompressor().decompress(payload))
    with contextlib.suppress(WireError):
        wire.decode_payload(mutated, compact=True, max_decoded_bytes=limit)


# --------------------------------------------------------------------------- stream, ts fix


def test_every_batch_carries_the_stream_and_decoders_default_it() -> None:
    ctx = wire.WireContext(stream="00112233aabbccdd")
    for encoding in wire.ENCODINGS:
        for payload, _ in wire.encode_batches("t", events(30), encoding, 2000, ctx):
            batch = wire.decode_payload(payload, compact=encoding != "json")
            assert batch["stream"] == "00112233aabbccdd"
            assert wire.batch_stream(batch) == "00112233aabbccdd"
    older = {"schema": "truckgw.batch/2", "truck_id": "t", "events": []}
    assert wire.batch_stream(wire.decode_payload(json.dumps(older).encode(),
                                                 compact=False)) == ""
    for bad in (7, "x" * 65, None):
        doc = json.dumps({"truck_id": "t", "stream": bad, "events": []}).encode()
        with pytest.raises(WireError, match="stream"):
            wire.decode_payload(doc, compact=False)


def _unverified(seq: int, ts: int, boot: str, boottime_ms: int) -> StoredEvent:
    return stored(seq, Event("engine", ts, {"src": 0, "ts_unverified": True,
                                            "_boot": [boot, boottime_ms]}))


def test_unverified_event_of_this_boot_goes_out_with_the_corrected_ts() -> None:
    fix = Correction("boot-a", 1_780_000_000_000)  # UTC - boottime of boot-a
    evs = [_unverified(1, 5_000, "boot-a", 60_000),  # stamped 60 s after boot-a began
           _unverified(2, 5_100, "boot-z", 60_100),  # an earlier boot: nothing to go by
           stored(3, Event("engine", 1_780_000_061_000, {"src": 0}))]
    ((payload, _),) = wire.encode_batches("t", evs, "json", 1 << 20,
                                          wire.WireContext("s", fix))
    got = wire.decode_payload(payload, compact=False)["events"]
    assert got[0] == {"seq": 1, "ts": 1_780_000_060_000, "type": "engine", "src": 0,
                      "ts_corrected": True}
    assert got[1] == {"seq": 2, "ts": 5_100, "type": "engine", "src": 0,
                      "ts_unverified": True}
    assert got[2] == {"seq": 3, "ts": 1_780_000_061_000, "type": "engine", "src": 0}
    # before the clock is verified: sent as stamped, marked; the boot stamp never travels
    ((early, _),) = wire.encode_batches("t", evs[:1], "json", 1 << 20)
    assert b"_boot" not in early
    assert wire.decode_payload(early, compact=False)["events"][0]["ts_unverified"] is True


def test_correction_is_pure_and_leaves_other_bodies_alone() -> None:
    fix = Correction("b", 1000)
    fields = {"ts": 5, "type": "gps", "ts_unverified": True, "_boot": ["b", 7]}
    assert corrected(fields, fix) == {"ts": 1007, "type": "gps", "ts_corrected": True}
    assert fields == {"ts": 5, "type": "gps", "ts_unverified": True, "_boot": ["b", 7]}
    assert corrected(fields, None) == {"ts": 5, "type": "gps", "ts_unverified": True}
    assert corrected(fields, Correction("", 1000)) == {"ts": 5, "type": "gps",
                                                       "ts_unverified": True}
    for stamp in (["b"], ["b", "7"], ["b", True], "b:7"):
        assert corrected({**fields, "_boot": stamp}, fix)["ts"] == 5
    plain = encode_body(Event("gps", 5, {"lat": 1.5}))
    assert wire_body(plain, fix) is plain  # the common case: no parse, no copy
    # a field that merely contains the text is not a stamp
    text = encode_body(Event("gps", 5, {"note": '"_boot":'}))
    assert wire_body(text, fix) == text


def test_a_broken_dictionary_install_falls_back_to_compact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A missing dictionary file must not make every event look unencodable (the uplink
    drops those): the agent sends ``compact`` instead and says why."""
    from config import MqttConfig, TruckConfig  # noqa: PLC0415
    from gateway.app import usable_encoding  # noqa: PLC0415

    cfg = TruckConfig(truck_id="t1", mqtt=MqttConfig(host="broker.invalid"))
    assert cfg.mqtt.encoding == "compact-dict"  # the default since revision 4
    assert wire.encoding_problem("compact-dict") is None
    assert usable_encoding(cfg) is cfg
    wire.dictionary.cache_clear()
    wire._dict_compressor.cache_clear()
    monkeypatch.setitem(wire._DICT_FILES, wire.DICT_ID, "missing.zdict")
    try:
        problem = wire.encoding_problem("compact-dict")
        assert problem is not None and "missing.zdict" in problem
        assert usable_encoding(cfg).mqtt.encoding == "compact"
        assert wire.encoding_problem("json") is None
    finally:
        monkeypatch.undo()
        wire.dictionary.cache_clear()
        wire._dict_compressor.cache_clear()
    assert wire.encoding_problem("compact-dict") is None
