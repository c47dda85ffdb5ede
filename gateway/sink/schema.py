"""SQL both backends share: the gap queries (window functions, SQLite >= 3.25 and PostgreSQL).

The tables and views themselves are in each backend's DDL (``jsonb`` and ``LATERAL`` in
PostgreSQL, ``json_extract`` in SQLite); docs/sink.md documents them. Placeholders here
are ``{p}``, filled with the backend's paramstyle.
"""

from __future__ import annotations

from typing import Final

#: Islands of consecutive stored seqs per truck: ``(truck_id, lo, hi)``.
ISLANDS: Final = """
SELECT truck_id, min(seq) AS lo, max(seq) AS hi FROM (
  SELECT truck_id, seq, seq - row_number() OVER (PARTITION BY truck_id ORDER BY seq) AS island
  FROM events {where}
) AS numbered
GROUP BY truck_id, island ORDER BY truck_id, lo
"""

#: ``seq_gap`` notices per truck: ``(truck_id, first, last)``.
NOTICES: Final = "SELECT truck_id, first, last FROM gap_notices {where}"
#: The latest status body per truck: ``(truck_id, body)``.
LATEST_STATUS: Final = "SELECT truck_id, {body} FROM latest_status {where}"

#: Every truck the sink has stored anything for.
TRUCKS: Final = "SELECT truck_id FROM trucks {where} ORDER BY truck_id"

#: The view of missing ranges between stored seqs (same text in both dialects).
SEQ_GAPS_VIEW: Final = """
CREATE VIEW seq_gaps AS
SELECT truck_id, seq + 1 AS first_missing, next_seq - 1 AS last_missing FROM (
  SELECT truck_id, seq, lead(seq) OVER (PARTITION BY truck_id ORDER BY seq) AS next_seq
  FROM events
) AS neighbours
WHERE next_seq > seq + 1
"""

#: Key of the PostgreSQL advisory lock that serialises schema creation between sinks.
SCHEMA_LOCK_KEY: Final = 0x7472_7563_6B67_77  # "truckgw"
