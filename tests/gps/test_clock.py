"""Clock: GPS UTC corrects a wrong system clock; monotonic time carries intervals."""

from __future__ import annotations

import logging

import pytest

from gateway.clock import AGREE_MS, CONFIRM, Clock, read_boot_id, system_clock_synced
from gateway.ts_correct import Correction

TRUE_UTC_AT_MONO0 = 1_780_000_000_000  # ms: the real UTC when the monotonic clock read 0


class Fake:
    """A settable monotonic clock and a system clock that is ``wall_error_s`` off."""

    def __init__(self, wall_error_s: float) -> None:
        self.mono_s = 100.0
        self.wall_error_s = wall_error_s

    def mono(self) -> float:
        return self.mono_s

    def wall(self) -> float:
        return (TRUE_UTC_AT_MONO0 / 1000 + self.mono_s) + self.wall_error_s

    def true_ms(self, mono_s: float | None = None) -> int:
        return TRUE_UTC_AT_MONO0 + round((self.mono_s if mono_s is None else mono_s) * 1000)


def feed_fixes(clock: Clock, fake: Fake, n: int, *, delay_s: float = 0.3, step_s: float = 1.0,
               trusted: bool = True, utc_shift_ms: int = 0) -> None:
    """``n`` 1 Hz fixes, each arriving ``delay_s`` after its UTC time."""
    for _ in range(n):
        fake.mono_s += step_s
        fix_time = fake.true_ms(fake.mono_s - delay_s) + utc_shift_ms
        clock.on_gps_time(fix_time, fake.mono_s, trusted)


def test_uses_system_clock_until_gps_is_confirmed() -> None:
    fake = Fake(wall_error_s=-3 * 365 * 86400)  # a Pi that booted three years behind
    clock = Clock(wall=fake.wall, mono=fake.mono)
    states = [clock.synced]
    assert clock.now_ms() == int(fake.wall() * 1000)
    feed_fixes(clock, fake, CONFIRM - 1)
    states.append(clock.synced)
    feed_fixes(clock, fake, 1)
    states.append(clock.synced)
    assert states == [False, False, True]
    # off by the serial delay of the least-delayed fix only, not by three years
    assert abs(clock.now_ms() - fake.true_ms()) <= 300
    assert clock.wall_error_ms() == pytest.approx(-3 * 365 * 86400 * 1000, abs=1000)


def test_least_delayed_fix_wins_and_intervals_follow_monotonic() -> None:
    fake = Fake(wall_error_s=5000)
    clock = Clock(wall=fake.wall, mono=fake.mono)
    feed_fixes(clock, fake, 5, delay_s=0.6)
    feed_fixes(clock, fake, 1, delay_s=0.05)
    feed_fixes(clock, fake, 5, delay_s=0.7)
    assert abs(clock.now_ms() - fake.true_ms()) <= 50
    t0 = clock.now_ms()
    fake.mono_s += 12.5
    assert clock.now_ms() - t0 == 12_500
    fake.wall_error_s = -99999  # the system clock jumping (NTP, user) changes nothing
    assert clock.now_ms() - t0 == 12_500


def test_untrusted_gps_times_are_ignored() -> None:
    fake = Fake(wall_error_s=0)
    clock = Clock(wall=fake.wall, mono=fake.mono)
    feed_fixes(clock, fake, 10, trusted=False, utc_shift_ms=-1024 * 7 * 86400 * 1000)
    assert not clock.synced
    assert clock.untrusted == 10


def test_a_lone_outlier_does_not_move_the_clock_but_a_confirmed_step_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = Fake(wall_error_s=0)
    clock = Clock(wall=fake.wall, mono=fake.mono)
    feed_fixes(clock, fake, 5)
    before = clock.now_ms() - fake.true_ms()
    feed_fixes(clock, fake, 1, utc_shift_ms=3_600_000)  # one bogus hour
    feed_fixes(clock, fake, 2)
    assert clock.now_ms() - fake.true_ms() == before
    assert clock.rejected == 1
    with caplog.at_level(logging.WARNING, logger="gateway.clock"):
        feed_fixes(clock, fake, CONFIRM, utc_shift_ms=10 * AGREE_MS)
    assert clock.steps == 1
    assert abs(clock.now_ms() - fake.true_ms() - 10 * AGREE_MS) <= 300
    assert "stepped" in caplog.text


def test_now_ms_does_not_jitter_backwards() -> None:
    fake = Fake(wall_error_s=0)
    clock = Clock(wall=fake.wall, mono=fake.mono)
    feed_fixes(clock, fake, 3, delay_s=0.05)
    readings = []
    # the least-delayed samples age out of the 60 s window: the estimate drops ~0.5 s
    for _ in range(70):
        fake.mono_s += 1.0
        readings.append(clock.now_ms())
        clock.on_gps_time(fake.true_ms(fake.mono_s - 0.55), fake.mono_s, True)
        readings.append(clock.now_ms())
    assert readings == sorted(readings)
    assert abs(clock.now_ms() - fake.true_ms()) <= 600
    fake.mono_s += 1.0
    assert abs(clock.now_ms() - fake.true_ms()) <= 600


def verified(clock: Clock) -> bool:
    """Read the property through a call, so each read is a fresh question to mypy too."""
    return clock.verified


def test_verified_needs_gps_or_an_ntp_synced_system_clock() -> None:
    fake = Fake(wall_error_s=-2 * 86400)  # fake-hwclock: two days behind after a weekend
    ntp: dict[str, bool | None] = {"synced": False}
    clock = Clock(wall=fake.wall, mono=fake.mono, system_synced=lambda: ntp["synced"])
    assert not verified(clock)
    ntp["synced"] = True
    fake.mono_s += 10  # the kernel's answer is cached for a few seconds
    assert verified(clock)
    ntp["synced"] = None  # cannot ask the kernel: not verified
    fake.mono_s += 10
    assert not verified(clock)
    feed_fixes(clock, fake, CONFIRM)
    assert clock.synced
    assert verified(clock)  # GPS time confirmed: verified whatever the kernel says
    assert clock.stats().verified is True


def test_system_clock_synced_asks_the_kernel() -> None:
    # a real adjtimex(2) call; its answer depends on the machine, its type does not
    assert system_clock_synced() in (True, False, None)


def correction(clock: Clock) -> Correction | None:
    """``clock.correction`` (a call, so that asserts on it do not narrow the type)."""
    return clock.correction


class FakeBoot:
    """CLOCK_BOOTTIME of a machine that booted ``up_s`` before the monotonic clock's 0
    and was suspended for ``suspended_s`` since (BOOTTIME counts that, MONOTONIC not)."""

    def __init__(self, fake: Fake, up_s: float = 7.0) -> None:
        self.fake = fake
        self.up_s = up_s
        self.suspended_s = 0.0

    def boot(self) -> float:
        return self.fake.mono_s + self.up_s + self.suspended_s


def test_correction_is_utc_minus_boottime_once_gps_verifies() -> None:
    fake = Fake(wall_error_s=-14 * 86400)
    boot = FakeBoot(fake)
    clock = Clock(wall=fake.wall, mono=fake.mono, system_synced=lambda: False,
                  boot=boot.boot, boot_id="b-1")
    stamped_at = clock.boot_ms()  # an event stamped now, unverified
    truth_then = fake.true_ms()
    assert correction(clock) is None and not clock.verified
    feed_fixes(clock, fake, CONFIRM, delay_s=0.05)
    fix = correction(clock)
    assert fix is not None and fix.boot_id == "b-1"
    # the stamp, corrected, lands at the true time of the event (serial delay aside)
    assert abs(stamped_at + fix.offset_ms - truth_then) <= 100
    # a suspend afterwards: BOOTTIME ran on, the offset follows at the next fix
    boot.suspended_s += 600
    feed_fixes(clock, fake, 1, delay_s=0.05)
    later = correction(clock)
    assert later is not None
    assert abs((clock.boot_ms() + later.offset_ms) - clock.now_ms()) <= 5


def test_correction_from_ntp_and_none_without_a_boot_id() -> None:
    fake = Fake(wall_error_s=0)
    boot = FakeBoot(fake)
    ntp = {"synced": False}
    clock = Clock(wall=fake.wall, mono=fake.mono, system_synced=lambda: ntp["synced"],
                  boot=boot.boot, boot_id="b-2")
    assert not verified(clock) and correction(clock) is None
    ntp["synced"] = True
    fake.mono_s += 10  # past the cache of the kernel's answer
    assert verified(clock)
    fix = correction(clock)
    assert fix is not None
    assert fix.offset_ms == round(fake.wall() * 1000 - boot.boot() * 1000)
    anonymous = Clock(wall=fake.wall, mono=fake.mono, system_synced=lambda: True,
                      boot=boot.boot, boot_id="")
    assert anonymous.verified and anonymous.correction is None  # cannot tell boots apart


def test_boot_id_is_this_boots() -> None:
    boot_id = read_boot_id()
    assert len(boot_id) == 36 and boot_id.count("-") == 4, boot_id
    assert Clock().boot_id == boot_id
