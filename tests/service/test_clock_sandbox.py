"""NTP sync state is readable under the shipped unit's own syscall filter.

The unit sets ``ProtectClock=yes`` and ``SystemCallFilter=~... @clock``: systemd then
answers every call of the ``@clock`` group, the read-only ``adjtimex(2)`` included,
with EPERM. The test installs that same filter (libseccomp, as systemd does) in a child
process and asks :func:`gateway.clock.system_clock_synced` there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = [ROOT / "systemd" / "truckgw.service", ROOT / "systemd" / "truckgw@.service"]
#: systemd's @clock group (src/shared/seccomp-util.c)
CLOCK_GROUP = ("adjtimex", "clock_adjtime", "clock_adjtime64", "clock_settime",
               "clock_settime64", "settimeofday", "stime")

CHILD = r"""
import ctypes, errno, json, sys
from pathlib import Path
lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
ctx = lib.seccomp_init(0x7FFF0000)  # SCMP_ACT_ALLOW
denied = []
for name in sys.argv[2].split(","):
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr >= 0:  # names this architecture does not have resolve to a negative number
        assert lib.seccomp_rule_add(ctx, 0x00050000 | errno.EPERM, nr, 0) == 0, name
        denied.append(name)
assert lib.seccomp_load(ctx) == 0
from gateway.clock import adjtimex_state, system_clock_synced
flag = Path(sys.argv[1])
print(json.dumps({"denied": denied, "adjtimex": adjtimex_state(),
                  "synced": system_clock_synced(flag)}))
"""


def run_sandboxed(flag: Path) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(flag), ",".join(CLOCK_GROUP)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_the_units_deny_the_clock_group() -> None:
    for unit in UNITS:
        text = unit.read_text()
        assert "ProtectClock=yes" in text, unit
        assert any(line.startswith("SystemCallFilter=~") and "@clock" in line
                   for line in text.splitlines()), unit


@pytest.mark.parametrize(("synced", "expected"), [(True, True), (False, False)])
def test_sync_state_is_read_under_the_units_filter(tmp_path: Path, synced: bool,
                                                   expected: bool) -> None:
    timesync = tmp_path / "timesync"
    timesync.mkdir()
    flag = timesync / "synchronized"
    if synced:
        flag.touch()
    got = run_sandboxed(flag)
    assert "adjtimex" in got["denied"]  # type: ignore[operator]
    assert got["adjtimex"] is None  # the filter really refused the read-only call
    assert got["synced"] is expected


def test_without_timesyncd_the_state_is_unknown_not_synced(tmp_path: Path) -> None:
    got = run_sandboxed(tmp_path / "no-timesyncd" / "synchronized")
    assert got["synced"] is None
