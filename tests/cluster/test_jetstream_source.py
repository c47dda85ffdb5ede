"""The pure parts of the JetStream source: subjects back to MQTT topics, option checks."""

from __future__ import annotations

import pytest

from gateway.sink.jetstream import JetStreamOptions, subject_to_topic


def test_subject_to_topic() -> None:
    assert subject_to_topic("$MQTT.msgs.fleet.truck-01.events") == "fleet/truck-01/events"
    assert subject_to_topic("$MQTT.msgs.fleet.t.events.json-zstd") == "fleet/t/events/json-zstd"
    assert subject_to_topic("fleet.t.events") is None


def test_filter_subject_follows_the_prefix() -> None:
    assert JetStreamOptions().filter_subject == "$MQTT.msgs.fleet.>"
    assert JetStreamOptions(prefix="acme/fleet").filter_subject == "$MQTT.msgs.acme.fleet.>"


@pytest.mark.parametrize(("kw", "message"), [
    ({"servers": ()}, "at least one NATS server"),
    ({"durable": "a.b"}, "durable name"),
    ({"replicas": 7}, "replicas must be 1..5"),
    ({"prefix": "fleet.eu"}, "NATS cannot carry MQTT topics"),
])
def test_bad_options(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JetStreamOptions(**kw)  # type: ignore[arg-type]
