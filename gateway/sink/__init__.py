"""The fleet side: ``truckgw sink`` lands every event of a fleet exactly once in a database.

Layers, bottom up (docs/sink.md has the schema and the guarantees):

- :mod:`gateway.sink.rows`: pure. One MQTT message (topic, payload, content type, arrival
  time) becomes one :data:`~gateway.sink.rows.Outcome`: event rows, a status row or a
  quarantine row. The truck id comes from the topic.
- :mod:`gateway.sink.gaps`: pure. Seq islands, ``seq_gap`` notices and the latest status
  of a truck become its :class:`~gateway.sink.gaps.GapReport`.
- :mod:`gateway.sink.base`: the storage seam (:class:`~gateway.sink.base.SinkStore`) and
  its errors; :mod:`gateway.sink.sqlite_store` and :mod:`gateway.sink.pg_store` are the two
  real backends, chosen by URL in :func:`gateway.sink.store.open_store`.
- :mod:`gateway.sink.consumer`: the MQTT shell. One transaction per message, PUBACK only
  after the commit; a database outage stops acking and retries with backoff.
"""
