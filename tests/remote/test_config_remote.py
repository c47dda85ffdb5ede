"""``[remote]`` in the loader: the same file/key/reason lines as every other section."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.errors import ConfigError
from config.loader import check_config
from config.schema import REMOTE_COMMANDS

BASE = 'truck_id = "T1"\n[mqtt]\nhost = "127.0.0.1"\nport = 1883\n'


def check(tmp_path: Path, text: str) -> tuple[object, tuple[str, ...]]:
    p = tmp_path / "t.toml"
    p.write_text(BASE + text)
    return check_config(p)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        check(tmp_path, text)
    return info.value.lines()


def test_defaults_are_off_and_allow_every_command(tmp_path: Path) -> None:
    cfg, _ = check(tmp_path, "")
    r = cfg.remote  # type: ignore[attr-defined]
    assert (r.enabled, r.config_push, r.require_signed, r.grace_s, r.max_starts) == (
        False, True, False, 600.0, 3)
    assert r.commands == REMOTE_COMMANDS


def test_commands_allow_list(tmp_path: Path) -> None:
    cfg, _ = check(tmp_path, '[remote]\nenabled = true\ncommands = ["ping"]\n')
    assert cfg.remote.commands == ("ping",)  # type: ignore[attr-defined]
    lines = problems(tmp_path, '[remote]\ncommands = ["ping", "restrat"]\n')
    assert lines == [(f"{tmp_path / 't.toml'}: remote.commands: unknown command 'restrat'; "
                     f"did you mean 'restart'? (known: {', '.join(REMOTE_COMMANDS)})")]
    assert problems(tmp_path, '[remote]\ncommands = "ping"\n') == [
        f'{tmp_path / "t.toml"}: remote.commands: expected an array of strings, got "ping"']


def test_signing_needs_a_key_and_the_key_is_a_secret_file(tmp_path: Path) -> None:
    assert problems(tmp_path, "[remote]\nrequire_signed = true\n") == [
        (f"{tmp_path / 't.toml'}: remote.require_signed: needs remote.key_file "
        "(the per-truck HMAC key)")]
    key = tmp_path / "k"
    key.write_text("secret")
    key.chmod(0o644)
    _cfg, warnings = check(tmp_path, f'[remote]\nkey_file = "{key}"\nrequire_signed = true\n')
    assert any("remote.key_file" in w and "readable by every user" in w for w in warnings)
    lines = problems(tmp_path, '[remote]\nkey_file = "missing.key"\n')
    assert "remote.key_file: cannot read" in lines[0]


def test_mqtt311_without_a_key_warns_that_commands_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "t.toml"
    p.write_text(BASE.replace("port = 1883", 'port = 1883\nprotocol = "3.1.1"')
                 + "[remote]\nenabled = true\n")
    _cfg, warnings = check_config(p)
    assert any("remote.commands" in w and "refused unless signed" in w for w in warnings)


def test_grace_bounds(tmp_path: Path) -> None:
    assert "remote.grace_s: expected a number 1..86400, got 0" in problems(
        tmp_path, "[remote]\ngrace_s = 0\n")[0]
