"""SQL both backends share: the gap queries (window functions, SQLite >= 3.25 and PostgreSQL).

The tables and views themselves are in each backend's DDL (``jsonb`` and ``LATERAL`` in
PostgreSQL, ``json_extract`` in SQLite); docs/sink.md documents them. Placeholders here
are ``{p}``, filled with the backend's paramstyle.
"""

from __future__ import annotations

from typing import Final

#: Islands of consecutive stored seqs per truck and stream: ``(truck_id, stream, lo, hi)``
#: (seq is numbered per stream; served by the primary key's order).
ISLANDS: Final = """
SELECT truck_id, stream, min(seq) AS lo, max(seq) AS hi FROM (
  SELECT truck_id, stream, seq,
         seq - row_number() OVER (PARTITION BY truck_id, stream ORDER BY seq) AS island
  FROM events {where}
) AS numbered
GROUP BY truck_id, stream, island ORDER BY truck_id, stream, lo
"""

#: ``seq_gap`` notices per truck and stream: ``(truck_id, stream, first, last)``.
NOTICES: Final = "SELECT truck_id, stream, first, last FROM gap_notices {where}"
#: The latest status body per truck: ``(truck_id, body)``.
LATEST_STATUS: Final = "SELECT truck_id, {body} FROM latest_status {where}"
#: The newest status per truck and the stream it names: ``(truck_id, stream, body)``.
STREAM_STATUS: Final = """
SELECT truck_id, stream, body FROM (
  SELECT truck_id, {stream} AS stream, {body} AS body,
         row_number() OVER (PARTITION BY truck_id, {stream} ORDER BY ts DESC) AS newest
  FROM status_history {where}
) AS per_stream WHERE newest = 1
"""

#: Every truck the sink has stored anything for.
TRUCKS: Final = "SELECT truck_id FROM trucks {where} ORDER BY truck_id"

#: The events of a trip report, one truck and a closed ``ts`` range: ``(seq, ts, type, body)``
#: (served by the ``(truck_id, ts)`` index).
REPORT_EVENTS: Final = """
SELECT seq, ts, type, {body} FROM events
WHERE truck_id = {p} AND ts >= {p} AND ts <= {p} AND type IN ('gps', 'engine', 'dtc')
ORDER BY ts, seq
"""

#: Per J1939 source, the newest ``dtc`` event of a truck before a time (the faults active
#: when a report starts): ``(seq, ts, type, body)``.
REPORT_FAULTS_BEFORE: Final = """
SELECT seq, ts, type, body FROM (
  SELECT seq, ts, type, {body} AS body,
         row_number() OVER (PARTITION BY {src} ORDER BY ts DESC, seq DESC) AS newest
  FROM events WHERE truck_id = {p} AND type = 'dtc' AND ts < {p}
) AS per_source
WHERE newest = 1 ORDER BY ts, seq
"""

#: Open ends of a report range.
TS_MIN: Final = -(2**63)
TS_MAX: Final = 2**63 - 1

#: The view of missing ranges of one stream: below its lowest stored seq (from seq 1, where
#: every numbering starts) and between stored seqs (same text in both dialects; ``stream``
#: last, so that PostgreSQL can replace the view of older sinks).
SEQ_GAPS_VIEW: Final = """
CREATE VIEW seq_gaps AS
SELECT truck_id, seq + 1 AS first_missing, next_seq - 1 AS last_missing, stream FROM (
  SELECT truck_id, stream, seq,
         lead(seq) OVER (PARTITION BY truck_id, stream ORDER BY seq) AS next_seq
  FROM events
  UNION ALL
  SELECT truck_id, stream, 0 AS seq, min(seq) AS next_seq FROM events GROUP BY truck_id, stream
) AS neighbours
WHERE next_seq > seq + 1
"""

#: The views of both backends, dropped and made anew when ``events`` is migrated.
VIEWS: Final = ("seq_gaps", "gap_notices", "active_faults", "latest_state",
                "latest_position", "latest_status", "positions")

#: Key of the PostgreSQL advisory lock that serialises schema creation between sinks.
SCHEMA_LOCK_KEY: Final = 0x7472_7563_6B67_77  # "truckgw"
