"""The Mosquitto fixture is real: a paho-mqtt publish reaches a paho-mqtt subscriber."""

from __future__ import annotations

import queue

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from sim.broker import Mosquitto


def _client(name: str) -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)


def test_publish_is_received(mosquitto: Mosquitto) -> None:
    got: queue.Queue[tuple[str, bytes | bytearray]] = queue.Queue()
    subscribed: queue.Queue[bool] = queue.Queue()
    sub = _client("sub")
    sub.on_message = lambda _c, _u, msg: got.put((msg.topic, msg.payload))
    sub.on_subscribe = lambda *_a: subscribed.put(True)
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    pub = _client("pub")
    try:
        sub.subscribe("fleet/#", qos=1)
        assert subscribed.get(timeout=10)
        pub.connect(mosquitto.host, mosquitto.port)
        pub.loop_start()
        info = pub.publish("fleet/TRK-1/events", b"hello", qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published()
        assert got.get(timeout=10) == ("fleet/TRK-1/events", b"hello")
    finally:
        for c in (pub, sub):
            c.disconnect()
            c.loop_stop()


def test_broker_stop_and_start_keeps_port(mosquitto: Mosquitto) -> None:
    port = mosquitto.port
    mosquitto.stop()
    assert mosquitto.proc is None
    mosquitto.start()
    assert mosquitto.running
    assert mosquitto.port == port
