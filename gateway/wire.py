"""The public wire format: event batches and status messages (see docs/wire-format.md).

Pure functions over bytes: no I/O, no clock reads. Two encodings of the same object
``{"schema": "truckgw.batch/3", "truck_id": "...", "stream": "...", "events": [{"seq": ..,
"ts": .., "type": .., <fields>}, ...]}``:

- ``json``: UTF-8 JSON. Built by byte concatenation from the stored bodies
  (``b'{"seq":N,' + body[1:]``), so an event is serialised to JSON once, at ingest.
- ``compact``: exactly those JSON bytes compressed as one zstd frame (RFC 8878) with its
  content size. Any zstd library plus any JSON parser decodes it, to the very object the
  ``json`` encoding carries; docs/wire-format.md has Python, Go and JavaScript snippets.
  (zstd of the JSON is as small as zstd of CBOR or msgpack of the same batch, measured
  24.3 vs 25.0 bytes per event, and costs the truck no re-encoding: one compress call.)
- ``compact-dict`` (contract revision 4): the same, compressed with a published zstd
  dictionary (``gateway/dicts/events-N.zdict``) whose id is in the frame header. A live
  batch of a few events is too short for zstd to find the repeated keys in; the
  dictionary carries them, which cuts such a message to about a third.

With MQTT 5 the encoding travels as the message's content type; with MQTT 3.1.1 (no
properties) compact batches go to the events topic plus ``/json-zstd`` (``/json-zstd-dict``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import zstandard

from buffer.api import StoredEvent
from config.errors import WireError
from gateway.ts_correct import BOOT_MARK, Correction, wire_body

CONTENT_TYPE_JSON: Final = "application/json"
CONTENT_TYPE_COMPACT: Final = "application/json+zstd"
CONTENT_TYPE_DICT: Final = "application/json+zstd-dict"
#: Topic level appended to the events topic for compact batches under MQTT 3.1.1.
COMPACT_TOPIC_SUFFIX: Final = "json-zstd"
DICT_TOPIC_SUFFIX: Final = "json-zstd-dict"
ENCODINGS: Final = ("json", "compact", "compact-dict")
#: The dictionary ``compact-dict`` compresses with (``gateway/dicts/events-1.zdict``).
#: Decoders accept every dictionary in that folder: a new one ships under a new id, and
#: the old ones stay for the trucks that still send with them.
DICT_ID: Final = 0x74670001
_DICT_FILES: Final = {DICT_ID: "events-1.zdict"}
#: The ``schema`` of every batch and status: name and contract revision
#: (docs/wire-format.md "Changes to this contract"; JSON Schemas in docs/schema/).
#: Batches of older trucks (revision 1) have no ``schema``; decoders accept them.
BATCH_SCHEMA: Final = "truckgw.batch/3"
STATUS_SCHEMA: Final = "truckgw.status/3"
#: Longest ``stream`` a decoder accepts (the agent sends 16 hex digits or "").
MAX_STREAM_CHARS: Final = 64
#: zstd level: 3 is zstd's default; higher levels cost Pi CPU for a few % of bytes.
ZSTD_LEVEL: Final = 3
#: ``compact-dict``: the zstd level of a payload of at most DICT_LIVE_BYTES of JSON
DICT_LIVE_LEVEL: Final = 6
DICT_LIVE_BYTES: Final = 16384
#: A decoder refuses to inflate a payload beyond this (decompression bombs).
MAX_DECODED_BYTES: Final = 64 * 1024 * 1024

_ENC = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_BATCH_HEAD: Final = b'{"schema":"' + BATCH_SCHEMA.encode() + b'","truck_id":'


@dataclass(frozen=True, slots=True)
class WireContext:
    """What the encoder needs besides the events: the buffer's ``stream`` id (in every
    batch and status) and, once the clock is verified, the ts :class:`Correction` of this
    boot (None before: unverified events go out marked ``ts_unverified``)."""

    stream: str = ""
    correction: Correction | None = None


NO_CONTEXT: Final = WireContext()
_ZC = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)


@functools.cache
def dictionary(dict_id: int) -> zstandard.ZstdCompressionDict:
    """A published dictionary by its zstd id; raises :class:`WireError` for an unknown id."""
    name = _DICT_FILES.get(dict_id)
    if name is None:
        known = ", ".join(str(k) for k in _DICT_FILES)
        raise WireError(f"compact payload needs zstd dictionary id {dict_id}, "
                        f"this decoder has {known}")
    data = resources.files("gateway").joinpath("dicts", name).read_bytes()
    d = zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_FULLDICT)
    if d.dict_id() != dict_id:
        raise WireError(f"dictionary file {name} has id {d.dict_id()}, expected {dict_id}")
    return d


@functools.cache
def _dict_compressor(level: int) -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=level, dict_data=dictionary(DICT_ID),
                                    write_content_size=True, write_dict_id=True)


def encoding_problem(encoding: str) -> str | None:
    """Why ``encoding`` cannot be used on this install (its dictionary file missing or
    damaged), or None. The agent checks this at start and sends ``compact`` instead,
    which every consumer of the contract decodes: a broken install never makes the
    events look undecodable to the uplink (which would drop them as such)."""
    if encoding != "compact-dict":
        return None
    try:
        _dict_compressor(DICT_LIVE_LEVEL).compress(b"{}")
    except (WireError, OSError, zstandard.ZstdError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _dict_level(json_bytes: int) -> int:
    # A live message (a few events) is where the bytes per event are: level 6 makes it
    # ~18 % smaller than level 3 at a tenth of level 3's speed, which on a message of
    # 10 events is still far faster than the link. A backlog batch stays at level 3, so
    # the drain speed does not change (bench/dict_bench.py, docs/performance.md).
    return DICT_LIVE_LEVEL if json_bytes <= DICT_LIVE_BYTES else ZSTD_LEVEL


# --------------------------------------------------------------------------- topics


def events_topic(prefix: str, truck_id: str, encoding: str, protocol: str) -> str:
    """The topic a batch is published to: ``{prefix}/{truck_id}/events[/json-zstd[-dict]]``.

    The suffix is used only for compact batches under MQTT 3.1.1, which has no content
    type; consumers subscribe to ``{prefix}/+/events/#`` to get all.
    """
    _check_encoding(encoding)
    base = f"{prefix}/{truck_id}/events"
    if encoding != "json" and protocol == "3.1.1":
        suffix = COMPACT_TOPIC_SUFFIX if encoding == "compact" else DICT_TOPIC_SUFFIX
        return f"{base}/{suffix}"
    return base


def status_topic(prefix: str, truck_id: str) -> str:
    """The retained status topic: ``{prefix}/{truck_id}/status``."""
    return f"{prefix}/{truck_id}/status"


def content_type(encoding: str) -> str:
    """The MQTT 5 content type of a batch in ``encoding``."""
    _check_encoding(encoding)
    return _CONTENT_TYPES[encoding]


_CONTENT_TYPES: Final = {"json": CONTENT_TYPE_JSON, "compact": CONTENT_TYPE_COMPACT,
                         "compact-dict": CONTENT_TYPE_DICT}


def is_compact(topic: str, content_type: str | None) -> bool:
    """Whether a received batch is a zstd frame (``compact`` or ``compact-dict``): by
    content type if present, else by topic. The decoder tells the two apart by the
    dictionary id in the frame header."""
    if content_type:
        return content_type in (CONTENT_TYPE_COMPACT, CONTENT_TYPE_DICT)
    return topic.endswith(("/events/" + COMPACT_TOPIC_SUFFIX, "/events/" + DICT_TOPIC_SUFFIX))


def _check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown wire encoding {encoding!r} (expected one of {ENCODINGS})")


# --------------------------------------------------------------------------- encoding


def encode_batches(
    truck_id: str,
    events: Sequence[StoredEvent],
    encoding: str,
    max_payload_bytes: int,
    ctx: WireContext = NO_CONTEXT,
) -> list[tuple[bytes, tuple[int, ...]]]:
    """Encode ``events`` into payloads no larger than ``max_payload_bytes`` each.

    ``ctx`` gives the batch's ``stream`` and the ts correction of unverified events
    (:mod:`gateway.ts_correct`); the internal boot stamp never reaches the wire.

    Returns ``(payload, seqs)`` pairs in the order of ``events``; every event lands in
    exactly one payload. An event that alone exceeds the limit travels alone (the
    broker may then refuse it; the uplink reports that). Raises :class:`WireError`
    for a stored body that is not a JSON object.
    """
    _check_encoding(encoding)
    if not events:
        return []
    if encoding == "json":
        return _encode_json(truck_id, events, max_payload_bytes, ctx)
    return _encode_compact(truck_id, events, max_payload_bytes, ctx, encoding)


def wire_event_json(seq: int, body: bytes) -> bytes:
    """One event as it appears in a JSON batch: the body with ``seq`` in front."""
    if len(body) < 2 or body[:1] != b"{" or body[-1:] != b"}":
        raise WireError(f"stored body of seq {seq} is not a JSON object: {body[:40]!r}")
    if body == b"{}":
        return b'{"seq":%d}' % seq
    return b'{"seq":%d,' % seq + body[1:]


def _json_head(truck_id: str, stream: str) -> bytes:
    # the same bytes in both encodings (compact is this JSON compressed): 27 + 28 bytes
    # per batch, a handful after zstd, i.e. well below 0.1 byte per event at batch sizes
    return (_BATCH_HEAD + _ENC.encode(truck_id).encode() + b',"stream":'
            + _ENC.encode(stream).encode() + b',"events":[')


def _encode_json(
    truck_id: str, events: Sequence[StoredEvent], limit: int, ctx: WireContext
) -> list[tuple[bytes, tuple[int, ...]]]:
    head = _json_head(truck_id, ctx.stream)
    fix = ctx.correction
    tail = b"]}"
    out: list[tuple[bytes, tuple[int, ...]]] = []
    parts: list[bytes] = []
    seqs: list[int] = []
    size = len(head) + len(tail)
    for ev in events:
        body = ev.body
        if BOOT_MARK in body:  # the rare unverified event: corrected, or the stamp removed
            body = wire_body(body, fix)
        item = wire_event_json(ev.seq, body)
        extra = len(item) + (1 if parts else 0)
        if parts and size + extra > limit:
            out.append((head + b",".join(parts) + tail, tuple(seqs)))
            parts, seqs = [], []
            size = len(head) + len(tail)
            extra = len(item)
        parts.append(item)
        seqs.append(ev.seq)
        size += extra
    out.append((head + b",".join(parts) + tail, tuple(seqs)))
    return out


def _encode_compact(
    truck_id: str, events: Sequence[StoredEvent], limit: int, ctx: WireContext, encoding: str
) -> list[tuple[bytes, tuple[int, ...]]]:
    # Each JSON payload (already within the limit) compressed on its own: a compact
    # payload therefore never inflates beyond max_payload_bytes either, which bounds
    # what a consumer must accept, and every message decodes without the others.
    groups = _encode_json(truck_id, events, limit, ctx)
    if encoding == "compact":
        return [(_ZC.compress(payload), seqs) for payload, seqs in groups]
    return [(_dict_compressor(_dict_level(len(payload))).compress(payload), seqs)
            for payload, seqs in groups]


# --------------------------------------------------------------------------- status


def encode_status(truck_id: str, state: str, ts_ms: int, fields: Mapping[str, Any]) -> bytes:
    """A status payload (always JSON).

    ``{"schema":"truckgw.status/3","state":..,"truck_id":..,"ts":..,<fields>}``; a field
    named like one of the fixed keys does not override it.
    """
    obj: dict[str, Any] = {"schema": STATUS_SCHEMA, "state": state, "truck_id": truck_id,
                           "ts": ts_ms}
    for k, v in fields.items():
        obj.setdefault(k, v)
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


# --------------------------------------------------------------------------- decoding


def decode_payload(
    payload: bytes, *, compact: bool, max_decoded_bytes: int = MAX_DECODED_BYTES
) -> dict[str, Any]:
    """Decode and validate an events batch; raises :class:`WireError` on bad input.

    Checks the envelope: ``schema`` a string if present (absent in batches of
    revision-1 trucks; any revision is accepted, later ones are additive), ``truck_id``
    a non-empty string, ``stream`` a string of at most :data:`MAX_STREAM_CHARS` if
    present (absent before revision 3: the default stream ``""``), ``events`` a list
    of objects each with an integer ``seq`` >= 0,
    an integer ``ts`` and a string ``type``.
    """
    if compact:
        obj = _loads_compact(payload, max_decoded_bytes)
    else:
        if len(payload) > max_decoded_bytes:
            raise WireError(f"JSON payload of {len(payload)} bytes exceeds {max_decoded_bytes}")
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            raise WireError(f"payload is not valid UTF-8 JSON: {exc}") from exc
    return _validate_batch(obj)


def _loads_compact(payload: bytes, limit: int) -> Any:
    try:
        size = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as exc:
        raise WireError(f"compact payload is not a zstd frame: {exc}") from exc
    if size > limit:
        raise WireError(f"compact payload inflates to {size} bytes, over {limit}")
    try:
        dict_id = zstandard.get_frame_parameters(payload).dict_id
    except zstandard.ZstdError as exc:
        raise WireError(f"compact payload is not a zstd frame: {exc}") from exc
    dctx = (zstandard.ZstdDecompressor(dict_data=dictionary(dict_id)) if dict_id
            else zstandard.ZstdDecompressor())
    try:
        if size >= 0:
            raw = dctx.decompress(payload)
        else:  # no content size in the header: read at most limit + 1 bytes
            with dctx.stream_reader(payload) as reader:
                raw = reader.read(limit + 1)
            if len(raw) > limit:
                raise WireError(f"compact payload inflates beyond {limit} bytes")
    except zstandard.ZstdError as exc:
        raise WireError(f"compact payload: zstd error: {exc}") from exc
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise WireError(f"compact payload: not UTF-8 JSON inside the zstd frame: {exc}") from exc


def batch_stream(batch: Mapping[str, Any]) -> str:
    """The ``stream`` of a decoded batch; ``""`` (the default stream) when absent."""
    return str(batch.get("stream", ""))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate_batch(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise WireError(f"batch is not an object but {type(obj).__name__}")
    if "schema" in obj and not isinstance(obj["schema"], str):
        raise WireError(f"batch schema is not a string: {obj['schema']!r}")
    tid = obj.get("truck_id")
    if not isinstance(tid, str) or not tid:
        raise WireError("batch has no string truck_id")
    stream = obj.get("stream", "")
    if not isinstance(stream, str) or len(stream) > MAX_STREAM_CHARS:
        raise WireError(f"batch stream is not a string of at most {MAX_STREAM_CHARS} "
                        f"characters: {stream!r:.80}")
    events = obj.get("events")
    if not isinstance(events, list):
        raise WireError("batch has no events list")
    for i, ev in enumerate(events):
        if not isinstance(ev, dict):
            raise WireError(f"events[{i}] is not an object")
        if not all(isinstance(k, str) for k in ev):
            raise WireError(f"events[{i}] has a non-string key")
        seq = ev.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise WireError(f"events[{i}].seq is not an integer >= 0: {seq!r}")
        if not _is_int(ev.get("ts")):
            raise WireError(f"events[{i}].ts is not an integer: {ev.get('ts')!r}")
        if not isinstance(ev.get("type"), str):
            raise WireError(f"events[{i}].type is not a string: {ev.get('type')!r}")
    return obj
