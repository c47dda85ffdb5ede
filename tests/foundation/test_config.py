"""The config loader: valid files load; every broken file names file, key and reason."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import EX_CONFIG, TruckConfig, load_config, parse_config
from config.errors import ConfigError
from config.loader import check_config
from gateway.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example.toml"

MINIMAL = """
truck_id = "TRK-0001"
[mqtt]
host = "127.0.0.1"
[gps]
port = "/dev/ttyACM0"
"""


def write(tmp_path: Path, text: str, name: str = "TRK-0001.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_example_is_valid_and_documents_every_key() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.truck_id == "TRK-0001"
    assert cfg.mqtt.port == 8883
    assert cfg.gps is not None and cfg.gps.baudrate == 9600
    assert cfg.can is not None and cfg.can.listen_only is True
    assert cfg.buffer.durability == "normal"
    text = EXAMPLE.read_text()
    # every schema key appears in the example (commented or not)
    sections: list[tuple[str, Any]] = [
        ("", cfg),
        ("gps", cfg.gps),
        ("gps.sampling", cfg.gps.sampling),
        ("can", cfg.can),
        ("can.sampling", cfg.can.sampling),
        ("buffer", cfg.buffer),
        ("mqtt", cfg.mqtt),
        ("metrics", cfg.metrics),
        ("log", cfg.log),
    ]
    for section, obj in sections:
        for name in obj.__dataclass_fields__:
            if name == "source":
                continue
            table = f"[{section}.{name}]" if section else f"[{name}]"
            assert f"{name} =" in text or table in text, (section, name)


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + '[buffer]\npath = "data/buf.db"\n'))
    assert cfg.buffer.path == tmp_path / "data" / "buf.db"
    assert cfg.client_id == "TRK-0001"
    assert cfg.mqtt.protocol == "5"
    assert cfg.gps is not None and cfg.gps.sampling.min_distance_m == 50.0
    assert cfg.can is None
    assert cfg.source == tmp_path / "TRK-0001.toml"
    with pytest.raises(AttributeError):
        cfg.truck_id = "x"  # type: ignore[misc]


def test_auto_baudrate(tmp_path: Path) -> None:
    text = MINIMAL.replace('"/dev/ttyACM0"', '"/dev/x"\nbaudrate = "auto"')
    cfg = load_config(write(tmp_path, text))
    assert cfg.gps is not None and cfg.gps.baudrate == "auto"


BROKEN: list[tuple[str, str, str, str]] = [
    # (id, toml text, key expected in message, reason fragment)
    ("bad-type", MINIMAL.replace('host = "127.0.0.1"', 'host = "h"\nport = "abc"'),
     "mqtt.port", 'expected an integer 1..65535, got "abc"'),
    ("out-of-range", MINIMAL.replace('host = "127.0.0.1"', 'host = "h"\nport = 70000'),
     "mqtt.port", "expected an integer 1..65535, got 70000"),
    ("unknown-key", MINIMAL + "hostt = 1\n", "gps.hostt", "unknown key"),
    ("unknown-top-key", "trucks_id = 1\n" + MINIMAL, "trucks_id", "unknown key"),
    ("bad-truck-id", MINIMAL.replace("TRK-0001", "TRK 0001!"), "truck_id", "matching"),
    ("long-truck-id", MINIMAL.replace("TRK-0001", "T" * 65), "truck_id", "matching"),
    ("missing-truck-id", MINIMAL.replace('truck_id = "TRK-0001"', ""), "truck_id", "required"),
    ("missing-mqtt-host", MINIMAL.replace('host = "127.0.0.1"', "port = 1883"), "mqtt.host",
     "required"),
    ("missing-gps-port", MINIMAL.replace('port = "/dev/ttyACM0"', "baudrate = 9600"), "gps.port",
     "required"),
    ("bad-choice", MINIMAL.replace('host = "127.0.0.1"', 'host = "h"\nprotocol = "4"'),
     "mqtt.protocol", 'expected one of "5", "3.1.1", got "4"'),
    ("bad-bool", MINIMAL + '[can]\nlisten_only = "yes"\n', "can.listen_only",
     'expected true or false, got "yes"'),
    ("bad-baud", MINIMAL.replace('"/dev/ttyACM0"', '"/dev/x"\nbaudrate = "fast"'),
     "gps.baudrate", 'got "fast"'),
    ("negative-threshold", MINIMAL + "[gps.sampling]\nmin_distance_m = -1\n",
     "gps.sampling.min_distance_m", "expected a number 0..1000000"),
    # numbers that passed check-config and then broke `run` (a restart loop, not exit 78)
    ("huge-ttl", MINIMAL + "[buffer.ttl_s]\ntelemetry = 1e308\n", "buffer.ttl_s.telemetry",
     "expected a number 0 < x <= 315360000"),
    ("huge-reconnect", MINIMAL.replace('host = "127.0.0.1"',
                                       'host = "h"\nreconnect_min_s = 1e300'),
     "mqtt.reconnect_min_s", "expected a number 0.01..3600"),
    ("empty-host", MINIMAL.replace('host = "127.0.0.1"', 'host = ""'), "mqtt.host",
     "expected a string matching"),
    ("unknown-can-interface", MINIMAL + '[can]\ninterface = "socketcn"\n', "can.interface",
     "unknown python-can interface 'socketcn'; did you mean 'socketcan'?"),
    ("did-you-mean", MINIMAL.replace('host = "127.0.0.1"', 'host = "h"\nprot = "5"'),
     "mqtt.prot", "did you mean 'protocol'?"),
    ("section-not-table", "gps = 3\n" + MINIMAL.replace('[gps]\nport = "/dev/ttyACM0"\n', ""),
     "gps", "expected a table"),
    ("unreadable-tls-file", MINIMAL + '[mqtt.tls]\nca_file = "missing-ca.pem"\n',
     "mqtt.tls.ca_file", "cannot read"),
    ("password-without-user", MINIMAL + "", "mqtt.password_file", "needs mqtt.username"),
    ("cross-field", MINIMAL + "[gps.sampling]\nmin_interval_s = 10\nmax_interval_s = 5\n",
     "gps.sampling.max_interval_s", "must be >="),
    ("toml-syntax", MINIMAL + "[mqtt\n", "", "line"),
    ("bad-durability", MINIMAL + '[buffer]\ndurability = "maybe"\n', "buffer.durability",
     'expected one of "normal", "full"'),
    ("bad-ttl-class", MINIMAL + "[buffer.ttl_s]\ngps = 10\n", "buffer.ttl_s.gps",
     "expected one of"),
]


@pytest.mark.parametrize(
    ("text", "key", "reason"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN]
)
def test_broken_configs_name_file_key_reason(
    tmp_path: Path, text: str, key: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if key == "mqtt.password_file":
        (tmp_path / "pw").write_text("secret")
        os.chmod(tmp_path / "pw", 0o600)
        text = text.replace('host = "127.0.0.1"', 'host = "h"\npassword_file = "pw"')
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = info.value.lines()
    expected_prefix = f"{path}: {key}: " if key else f"{path}: "
    assert any(line.startswith(expected_prefix) and reason in line for line in lines), lines
    # the CLI prints the same and exits 78 (EX_CONFIG)
    assert main(["check-config", str(path)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert str(path) in err and reason in err


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'truck_id = "T"\n\n[mqtt\nhost = "h"\n')
    with pytest.raises(ConfigError, match=r"line 3"):
        load_config(path)


def test_all_errors_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, 'truck_id = 5\n[mqtt]\nport = "x"\nfoo = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    keys = {key for _f, key, _r in info.value.problems}
    assert {"truck_id", "mqtt.port", "mqtt.foo", "mqtt.host"} <= keys


def test_rules_across_keys_run_in_the_same_pass_as_the_key_errors(tmp_path: Path) -> None:
    """A typo'd key and an empty host do not hide a bad CAN interface or reconnect
    bounds: one check-config run lists them all."""
    path = write(tmp_path, 'truck_id = "T 1"\n[gps]\nport = "/dev/null"\n'
                 '[can]\ninterface = "socketcn"\n'
                 '[mqtt]\nhost = ""\nprot = 1\nreconnect_min_s = 30\nreconnect_max_s = 5\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    keys = [key for _f, key, _r in info.value.problems]
    assert sorted(keys) == ["can.interface", "mqtt.host", "mqtt.prot", "mqtt.reconnect_max_s",
                            "truck_id"], info.value.problems


def test_check_config_shows_the_warnings_of_a_file_with_errors_in_the_same_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file with an error and warnings: one run prints both (not the warnings only once
    the error is fixed)."""
    key = tmp_path / "mqtt.password"
    key.write_text("pw\n")
    key.chmod(0o640)  # readable by its group: a warning
    path = write(tmp_path, 'truck_id = "TRK-0001"\n[gps]\nport = "/dev/null"\n'
                 '[mqtt]\nhost = "broker"\nprotocol = "3.1.1"\nusername = "u"\n'
                 'password_file = "mqtt.password"\nallow_insecure_password = true\n'
                 'keepalive_s = 0\n')
    with pytest.raises(ConfigError) as info:
        check_config(path)
    assert [k for _f, k, _r in info.value.problems] == ["mqtt.keepalive_s"]
    assert any("mqtt.protocol" in w for w in info.value.warnings), info.value.warnings
    assert any("password_file" in w and "its group" in w for w in info.value.warnings)
    assert main(["check-config", str(path)]) == 78
    err = capsys.readouterr().err
    assert "mqtt.keepalive_s" in err
    assert "warning:" in err and "mqtt.protocol" in err and "password_file" in err


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "nope.toml")


def _client_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A real client certificate and its key (trustme), as client.pem / client.key."""
    import trustme  # noqa: PLC0415

    issued = trustme.CA().issue_cert("TRK-0001")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


def test_secret_rule_is_0600_for_the_service_user_and_group_readable_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One rule: a secret is the service user's alone (0600); readable by its group or by
    everyone warns, through logging, never as a Python warning."""
    _cert, key = _client_pair(tmp_path)
    os.chmod(key, 0o644)
    text = MINIMAL + '[mqtt.tls]\ncert_file = "client.pem"\nkey_file = "client.key"\n'
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="config.loader"):
        warnings.simplefilter("error")
        cfg = load_config(write(tmp_path, text))
    assert cfg.mqtt.tls is not None and cfg.mqtt.tls.key_file == key
    assert any(re.search(r"mqtt\.tls\.key_file: .* readable by every user .*chmod 600", r.message)
               and r.levelno == logging.WARNING for r in caplog.records), caplog.text
    os.chmod(key, 0o640)  # the group truckgw is how administrators read the status
    _cfg, found = check_config(tmp_path / "TRK-0001.toml")
    assert [w for w in found if "key_file" in w and "readable by its group" in w]
    os.chmod(key, 0o600)
    _cfg, found = check_config(tmp_path / "TRK-0001.toml")
    assert not [w for w in found if "key_file" in w]
    os.chmod(key, 0o000)  # a reader of the status needs the key to exist, not to read it
    try:
        if os.geteuid() != 0:  # root reads any file
            with pytest.raises(ConfigError):
                check_config(tmp_path / "TRK-0001.toml")
        cfg, _found = check_config(tmp_path / "TRK-0001.toml", read_secrets=False)
        assert cfg.mqtt.tls is not None
        key.unlink()
        with pytest.raises(ConfigError, match="key_file"):
            check_config(tmp_path / "TRK-0001.toml", read_secrets=False)
    finally:
        if key.exists():
            os.chmod(key, 0o600)


def _mqtt(tmp_path: Path, extra: str, *, tls: bool) -> Path:
    text = MINIMAL.replace('host = "127.0.0.1"', 'host = "127.0.0.1"\n' + extra)
    if tls:
        text += "[mqtt.tls]\n"
    return write(tmp_path, text)


def test_password_without_tls_is_an_error_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o640)
    creds = 'port = 1883\nusername = "u"\npassword_file = "pw"'
    with pytest.raises(ConfigError) as info:
        load_config(_mqtt(tmp_path, creds, tls=False))
    assert any("mqtt.password_file: a password without [mqtt.tls]" in ln
               for ln in info.value.lines())
    assert main(["check-config", str(tmp_path / "TRK-0001.toml")]) == EX_CONFIG
    assert "allow_insecure_password" in capsys.readouterr().err
    cfg, _found = check_config(_mqtt(tmp_path, creds + "\nallow_insecure_password = true",
                                     tls=False))
    assert cfg.mqtt.allow_insecure_password
    cfg, _found = check_config(_mqtt(tmp_path, creds.replace("1883", "8883"), tls=True))
    assert cfg.mqtt.tls is not None


@pytest.mark.parametrize(("extra", "tls", "expected"), [
    ('protocol = "3.1.1"\nport = 8883', True, "mqtt.protocol: MQTT 3.1.1 cannot report refusals"),
    ("port = 8883", False, "mqtt.port: port 8883 is MQTT over TLS but [mqtt.tls] is not"),
    ("port = 1883", True, "mqtt.port: [mqtt.tls] is configured but port 1883"),
])
def test_risky_transport_warns_in_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, tls: bool, expected: str
) -> None:
    path = _mqtt(tmp_path, extra, tls=tls)
    _cfg, found = check_config(path)
    assert any(expected in w for w in found), found
    assert main(["check-config", str(path)]) == 0  # a warning, not an error
    err = capsys.readouterr().err
    assert f"warning: {path}: {expected}" in err


@pytest.mark.parametrize(("extra", "tls"), [("port = 8883", True), ("port = 1883", False)])
def test_consistent_transport_gives_no_warning(tmp_path: Path, extra: str, tls: bool) -> None:
    _cfg, found = check_config(_mqtt(tmp_path, extra, tls=tls))
    assert not [w for w in found if "mqtt." in w], found


def test_shipped_template_is_secure_by_default(tmp_path: Path) -> None:
    """systemd/truckgw.toml.in as install.sh fills it: TLS on at 8883, no warning."""
    text = (ROOT / "systemd" / "truckgw.toml.in").read_text()
    for key, value in {"TRUCK_ID": "TRK-1", "MQTT_HOST": "broker.example.com",
                       "MQTT_PORT": "8883", "GPS_PORT": "/dev/ttyACM0", "CAN_CHANNEL": "can0",
                       "STATE_DIR": str(tmp_path)}.items():
        text = text.replace(f"@{key}@", value)
    text = text.replace("#@CA@", "# ").replace("#@CERT@", "# ")
    cfg, found = check_config(write(tmp_path, text))
    assert cfg.mqtt.tls is not None and cfg.mqtt.port == 8883
    assert cfg.mqtt.protocol == "5"
    assert found == ()


def test_check_config_cli_subprocess(tmp_path: Path) -> None:
    """The installed console script: exit 0 for the example, 78 for a broken file."""
    bad = write(tmp_path, MINIMAL + "typo = 1\n", "bad.toml")
    exe = Path(sys.executable).with_name("truckgw")
    ok = subprocess.run([exe, "check-config", EXAMPLE], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    res = subprocess.run(
        [exe, "check-config", EXAMPLE, bad], capture_output=True, text=True, check=False
    )
    assert res.returncode == EX_CONFIG
    assert f"{bad}: gps.typo: unknown key" in res.stderr
    ver = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    assert ver.returncode == 0 and ver.stdout.startswith("truckgw ")


@pytest.mark.parametrize("cmd", [[], ["run"], ["check-config"], ["status"]])
def test_help_on_every_command(cmd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*cmd, "--help"])
    assert info.value.code == 0
    assert "usage: truckgw" in capsys.readouterr().out


toml_scalars = st.one_of(
    st.integers(-(2**40), 2**40), st.floats(allow_nan=True), st.text(max_size=20), st.booleans()
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
known_keys = st.sampled_from(
    ["truck_id", "mqtt", "gps", "can", "buffer", "metrics", "log", "port", "host", "sampling"]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.one_of(known_keys, st.text(max_size=8)), toml_values, max_size=6))
def test_fuzz_loader_raises_only_config_error(doc: dict[str, Any]) -> None:
    """Any document either loads or raises ConfigError: never another exception."""
    try:
        cfg = parse_config(doc, name="fuzz.toml")
    except ConfigError as exc:
        assert all(f == "fuzz.toml" for f, _k, _r in exc.problems)
    else:
        assert isinstance(cfg, TruckConfig)


def test_config_is_immutable_all_the_way_down() -> None:
    """Mapping fields are read-only views, both when given and when defaulted."""
    given = parse_config({"truck_id": "T1", "mqtt": {"host": "h"},
                          "buffer": {"ttl_s": {"telemetry": 60}},
                          "can": {"sampling": {"deadbands": {"engine_speed_rpm": 50}}}})
    default = parse_config({"truck_id": "T1", "mqtt": {"host": "h"}, "can": {}})
    for cfg in (given, default):
        assert cfg.can is not None
        for mapping in (cfg.buffer.ttl_s, cfg.can.sampling.deadbands):
            with pytest.raises(TypeError):
                mapping["x"] = 1.0  # type: ignore[index]
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.buffer.max_bytes = 1  # type: ignore[misc]


def _numeric_fields(cls: type, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(dotted key, metadata) of every number in the schema, nested tables included."""
    import typing  # noqa: PLC0415

    out: list[tuple[str, dict[str, Any]]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        tp = hints[f.name]
        if typing.get_origin(tp) in (Mapping, dict):
            continue  # mapping values: bounded by the loader's cross-field checks
        args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        for a in args:
            if dataclasses.is_dataclass(a):
                out += _numeric_fields(a, f"{prefix}{f.name}.")  # type: ignore[arg-type]
            elif a in (int, float):
                out.append((f"{prefix}{f.name}", dict(f.metadata)))
    return out


def test_every_number_in_the_schema_has_both_bounds() -> None:
    """A number without an upper bound lets a typo (1e308) through check-config."""
    fields = _numeric_fields(TruckConfig)
    assert len(fields) > 20
    unbounded = [k for k, meta in fields if meta.get("lo") is None or meta.get("hi") is None]
    assert unbounded == []


def test_recording_modes_and_curve_errors() -> None:
    base = {"truck_id": "T-1", "mqtt": {"host": "h"}}
    cfg = parse_config({**base, "gps": {"port": "/dev/ttyS0", "sampling": {"mode": "curve"}},
                        "can": {"sampling": {"mode": "curve",
                                             "curve_errors": {"fuel_rate_lph": 20}}}})
    assert cfg.gps is not None and cfg.gps.sampling.mode == "curve"
    assert cfg.can is not None and cfg.can.sampling.mode == "curve"
    assert dict(cfg.can.sampling.curve_errors) == {"fuel_rate_lph": 20.0}
    for bad, key in (({"mode": "spline"}, "can.sampling.mode"),
                     ({"curve_errors": {"engine_speed_rpm": 0}},
                      "can.sampling.curve_errors.engine_speed_rpm"),
                     ({"curve_errors": {"engine_speed_rpm": "50"}},
                      "can.sampling.curve_errors.engine_speed_rpm")):
        with pytest.raises(ConfigError) as info:
            parse_config({**base, "can": {"sampling": bad}})
        assert key in {k for _f, k, _r in info.value.problems}, info.value.problems


def test_run_logs_config_warnings_never_python_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What `truckgw run` does with a config's warnings: log records (a journald priority
    under systemd), not warnings.warn (which under filterwarnings=error would raise)."""
    from gateway.cli import _load_or_exit  # noqa: PLC0415  # the run path, not the API

    path = _mqtt(tmp_path, 'protocol = "3.1.1"\nport = 1883', tls=False)
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error")
        cfg = _load_or_exit(path, log_warnings=True)
    assert cfg.mqtt.protocol == "3.1.1"
    assert [r.name for r in caplog.records if "MQTT 3.1.1" in r.message] == ["config.loader"]


def test_metrics_folder_that_does_not_exist_warns(tmp_path: Path) -> None:
    text = MINIMAL + f'[metrics]\ntextfile = "{tmp_path}/nope/truckgw.prom"\n'
    _cfg, found = check_config(write(tmp_path, text))
    assert any(f"metrics.textfile: folder {tmp_path}/nope does not exist" in w for w in found)
    text = MINIMAL + f'[metrics]\ntextfile = "{tmp_path}/truckgw.prom"\n'
    _cfg, found = check_config(write(tmp_path, text))
    assert not [w for w in found if "metrics." in w]


def test_tls_files_that_would_never_load_are_config_errors(tmp_path: Path) -> None:
    """A CA file that is not PEM, a key that is not the certificate's: no restart fixes
    them, so check-config (and the start, exit 78) says so instead of a retry loop."""
    import trustme  # noqa: PLC0415

    _cert, key = _client_pair(tmp_path)
    other = tmp_path / "other.key"
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(str(other))
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    for f in (key, other):
        f.chmod(0o600)
    tls = '[mqtt.tls]\ncert_file = "client.pem"\nkey_file = "client.key"\n'
    write(tmp_path, MINIMAL + tls)
    cfg, _ = check_config(tmp_path / "TRK-0001.toml")  # the pair loads
    assert cfg.mqtt.tls is not None
    write(tmp_path, MINIMAL + tls.replace('"client.key"', '"other.key"')
          + 'ca_file = "ca.pem"\n')
    with pytest.raises(ConfigError) as info:
        check_config(tmp_path / "TRK-0001.toml")
    lines = info.value.lines()
    assert any("mqtt.tls.ca_file" in ln and "not a PEM CA certificate" in ln for ln in lines)
    assert any("mqtt.tls.cert_file" in ln and "does not load" in ln for ln in lines), lines
    # a reader of the status reads no key: only the CA file is checked then
    with pytest.raises(ConfigError) as info:
        check_config(tmp_path / "TRK-0001.toml", read_secrets=False)
    assert [ln for ln in info.value.lines() if "cert_file" in ln] == []
