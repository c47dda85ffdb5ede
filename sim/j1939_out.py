"""J1939 frame encoders and a rate scheduler (pure: time is passed in).

Encoders turn a :class:`~sim.truck.TruckState` into 8-byte payloads with the SAE
scalings of the decode table in docs/can.md; unused bytes are 0xFF ("not available"). The
:class:`Schedule` emits each parameter group at its real-world rate and sends DM1
with several DTCs over the transport protocol as a BAM (TP.CM + TP.DT 50 ms apart).
HOURS and LFC are on-request PGNs: the schedule plays another ECU (the instrument
cluster) that requests them every few seconds, so the request and its answer both
appear on the bus, as on a real truck.

The FMS-Standard signals (docs/fleet-data.md) come from the ECUs that send them on a
real truck: gears from the transmission, brake pedal from the brake controller, the
tachograph's TCO1 and its driver identification (DI every 10 s and at once on a change:
a BAM while a card is in, a single frame with both fields empty while the ignition is
on without a card), one VW per axle, HRLFC/VDHR high-resolution counters, AdBlue, battery, ambient
temperature, service distance, the PTO (CCVS1's PTO state and PTODE, engaged while a
work stop is served) and the FMS gateway's identity. Every ECU sends its
Address Claimed when the ignition comes on.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

from sim.truck import Dtc, TruckState

SA_ENGINE = 0x00
SA_CAB = 0x17  # instrument cluster: fuel level, odometer
SA_BODY = 0x31  # cab controller (second fuel-level source in some trucks)
SA_TRANS = 0x03  # transmission: ETC2
SA_BRAKES = 0x0B  # brake system controller: EBC1, VW
SA_TACHO = 0xEE  # tachograph: TCO1, DI
SA_FMS = 0x27  # the FMS gateway: FMS identity
#: (SA, NAME function) of the ECUs the simulated truck has (J1939-81 NAME)
ECUS: tuple[tuple[int, int], ...] = ((SA_ENGINE, 0), (SA_TRANS, 3), (SA_BRAKES, 9),
                                     (SA_CAB, 23), (SA_TACHO, 38), (SA_FMS, 60))
MANUFACTURER = 0x0B6  # an arbitrary SAE manufacturer code for the simulator
FMS_VERSION = b"0400"  # FMS-Standard 04.00

PGN_EEC1, PGN_EEC2, PGN_CCVS1, PGN_DD = 61444, 61443, 65265, 65276
PGN_LFE, PGN_LFC, PGN_HOURS, PGN_ET1 = 65266, 65257, 65253, 65262
PGN_EFLP1, PGN_VDHR, PGN_VD, PGN_DM1 = 65263, 65217, 65248, 65226
PGN_ETC2, PGN_EBC1, PGN_TCO1, PGN_SERV = 61445, 61441, 65132, 65216
PGN_AMB, PGN_VEP1, PGN_AT1T1I, PGN_HRLFC = 65269, 65271, 65110, 64777
PGN_VW, PGN_DI, PGN_FMS, PGN_ADDRESS_CLAIMED = 65258, 65131, 64977, 60928
PGN_PTODE = 64932
PGN_REQUEST, PGN_TP_CM, PGN_TP_DT = 59904, 60416, 60160
TP_BAM = 32
BAM_GAP_S = 0.05
DI_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class Frame:
    """One extended CAN frame."""

    arbitration_id: int
    data: bytes

    @property
    def pgn(self) -> int:
        """The J1939 PGN of the identifier."""
        pf = (self.arbitration_id >> 16) & 0xFF
        ps = (self.arbitration_id >> 8) & 0xFF
        dp = (self.arbitration_id >> 24) & 0x3
        return (dp << 16) | (pf << 8) | (ps if pf >= 240 else 0)

    @property
    def sa(self) -> int:
        """Source address."""
        return self.arbitration_id & 0xFF


def can_id(priority: int, pgn: int, sa: int, da: int = 0xFF) -> int:
    """29-bit identifier; for PDU1 PGNs (PF < 240) the PS byte is the destination."""
    pf = (pgn >> 8) & 0xFF
    if pf < 240:
        pgn = (pgn & 0x3FF00) | da
    return ((priority & 0x7) << 26) | (pgn << 8) | (sa & 0xFF)


def _u8(value: float, scale: float, offset: float = 0.0) -> int:
    raw = round((value - offset) / scale)
    return max(0, min(0xFA, raw))


def _u16(value: float, scale: float, offset: float = 0.0) -> bytes:
    return struct.pack("<H", max(0, min(0xFAFF, round((value - offset) / scale))))


def _u32(value: float, scale: float) -> bytes:
    return struct.pack("<I", max(0, min(0xFAFFFFFF, round(value / scale))))


def eec1(s: TruckState) -> bytes:
    """EEC1: actual torque (byte 3), engine speed (bytes 4-5, 0.125 rpm/bit)."""
    torque = _u8(s.torque_pct, 1.0, -125.0)
    return bytes([0xF0, torque, torque]) + _u16(s.engine_rpm, 0.125) + b"\x00\xff" + \
        bytes([torque])


def eec2(s: TruckState) -> bytes:
    """EEC2: accelerator pedal (byte 2, 0.4 %/bit), load at current speed (byte 3)."""
    return bytes([0xFF, _u8(s.pedal_pct, 0.4), _u8(s.load_pct, 1.0), 0xFF, 0xFF, 0xFF,
                  0xFF, 0xFF])


def cruising(s: TruckState) -> bool:
    """The model's cruise control: on at a steady speed above 60 km/h."""
    return s.speed_kmh > 60.0 and abs(s.accel_ms2) < 0.05


def ccvs1(s: TruckState) -> bytes:
    """CCVS1: wheel-based speed (bytes 2-3, 1/256 km/h), parking brake, cruise control,
    brake and clutch switches (byte 4), PTO state (byte 7 bits 1-5: 0 off, 5 set while a
    PTO works)."""
    parking = 0b01 if s.speed_kmh < 0.5 else 0b00
    braking = 0b01 if s.accel_ms2 < -0.2 else 0b00
    clutch = 0b01 if 0.5 < s.speed_kmh < 8.0 and s.accel_ms2 > 0.3 else 0b00  # pulling away
    b1 = 0xC3 | (parking << 2) | 0x30  # bits 1-2, 5-8 not available
    b4 = int(cruising(s)) | 0b1100 | (braking << 4) | (clutch << 6)  # enable switch n/a
    b7 = 0b111_00000 | (5 if s.pto else 0)  # PTO state 00000 off / 00101 set; cruise n/a
    return bytes([b1]) + _u16(s.speed_kmh, 1 / 256) + bytes([b4, 0xFF, 0xFF, b7, 0xFF])


def ptode(s: TruckState) -> bytes:
    """PTODE: at least one PTO engaged (byte 7 bits 1-2, SPN 3948); the per-PTO switch and
    engagement states of bytes 1-6 are not available."""
    return b"\xff" * 6 + bytes([0xFC | int(s.pto), 0xFF])


def dd(s: TruckState) -> bytes:
    """DD: fuel level 1 (byte 2, 0.4 %/bit)."""
    return bytes([0xFF, _u8(s.fuel_level_pct, 0.4), 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])


def lfe(s: TruckState) -> bytes:
    """LFE: fuel rate (bytes 1-2, 0.05 L/h), instantaneous economy (bytes 3-4, 1/512 km/L)."""
    econ = _u16(s.economy_kmpl, 1 / 512) if s.economy_kmpl is not None else b"\xff\xff"
    return _u16(s.fuel_rate_lph, 0.05) + econ + b"\xff\xff" + bytes([_u8(s.pedal_pct, 0.4),
                                                                      0xFF])


def lfc(s: TruckState) -> bytes:
    """LFC: trip fuel (bytes 1-4) and total fuel used (bytes 5-8), 0.5 L/bit."""
    return _u32(s.trip_fuel_l, 0.5) + _u32(s.total_fuel_l, 0.5)


def hours(s: TruckState) -> bytes:
    """HOURS: total engine hours (bytes 1-4, 0.05 h/bit); revolutions not available."""
    return _u32(s.engine_hours_h, 0.05) + b"\xff\xff\xff\xff"


def et1(s: TruckState) -> bytes:
    """ET1: coolant temperature (byte 1, 1 degC, offset -40)."""
    return bytes([_u8(s.coolant_c, 1.0, -40.0), _u8(s.coolant_c - 5, 1.0, -40.0)]) + \
        b"\xff" * 6


def eflp1(s: TruckState) -> bytes:
    """EFL/P1: engine oil pressure (byte 4, 4 kPa/bit)."""
    return bytes([0xFF, 0xFF, 0xFF, _u8(s.oil_kpa, 4.0), 0xFF, 0xFF, 0xFF, 0xFF])


def vdhr(s: TruckState) -> bytes:
    """VDHR: high-resolution total and trip distance (bytes 1-4, 5-8; 5 m/bit)."""
    return _u32(s.odometer_km * 1000.0, 5.0) + _u32(s.trip_km * 1000.0, 5.0)


def vd(s: TruckState) -> bytes:
    """VD: total vehicle distance (bytes 5-8, 0.125 km/bit); trip not available."""
    return b"\xff\xff\xff\xff" + _u32(s.odometer_km, 0.125)


def hrlfc(s: TruckState) -> bytes:
    """HRLFC: high-resolution trip and total fuel (bytes 1-4, 5-8; 0.001 L/bit)."""
    return _u32(s.trip_fuel_l, 0.001) + _u32(s.total_fuel_l, 0.001)


def etc2(s: TruckState) -> bytes:
    """ETC2: selected gear (byte 1) and current gear (byte 4), offset -125; 0 = neutral."""
    selected = s.gear if s.speed_kmh > 0.5 else 0
    return bytes([_u8(selected, 1.0, -125.0), 0xFF, 0xFF, _u8(s.gear, 1.0, -125.0), 0xFF,
                  0xFF, 0xFF, 0xFF])


def ebc1(s: TruckState) -> bytes:
    """EBC1: ABS inactive (byte 1 bits 5-6), brake pedal position (byte 2, 0.4 %/bit)."""
    pedal = min(100.0, -s.accel_ms2 / 1.8 * 100.0) if s.accel_ms2 < -0.2 else 0.0
    return bytes([0b11_00_11_11, _u8(pedal, 0.4)]) + b"\xff" * 6


def tco1(s: TruckState) -> bytes:
    """TCO1 from the model's tachograph: working states, cards, time state, overspeed,
    motion, forward direction (bytes 1-4) and tachograph speed (bytes 7-8)."""
    t = s.tacho
    b1 = int(t.driver1) | int(t.driver2) << 3 | int(t.motion) << 6
    b2 = t.time_state1 | int(t.card1) << 4 | int(t.overspeed) << 6
    b3 = 0 | int(t.card2) << 4 | 0b11 << 6  # driver 2 time state normal; bits 7-8 n/a
    b4 = 0b00_11_11_11  # direction forward; event, handling, performance not available
    return bytes([b1, b2, b3, b4, 0xFF, 0xFF]) + _u16(s.speed_kmh, 1 / 256)


def di(s: TruckState) -> bytes:
    """DI: driver 1 and driver 2 identification, each ended by ``*`` (an empty field: no
    card in that slot)."""
    return (s.tacho.driver1_id or "").encode("ascii") + b"**"


def serv(s: TruckState) -> bytes:
    """SERV: service distance (bytes 2-3, 5 km/bit, offset -160,635 km)."""
    return b"\xff" + _u16(s.service_km, 5.0, -160_635.0) + b"\xff" * 5


def amb(s: TruckState) -> bytes:
    """AMB: barometric pressure (byte 1, 0.5 kPa), ambient air temperature (bytes 4-5,
    0.03125 degC, offset -273)."""
    return bytes([_u8(101.0, 0.5), 0xFF, 0xFF]) + _u16(s.ambient_c, 0.03125, -273.0) + \
        b"\xff\xff\xff"


def vep1(s: TruckState) -> bytes:
    """VEP1: charging system potential (bytes 3-4), battery potential (bytes 5-6), 0.05 V."""
    charging = s.battery_v + 0.2 if s.ignition else 0.0
    return b"\xff\xff" + _u16(charging, 0.05) + _u16(s.battery_v, 0.05) + b"\xff\xff"


def at1t1i(s: TruckState) -> bytes:
    """AT1T1I: DEF (AdBlue) tank level (byte 1, 0.4 %/bit) and temperature (byte 2)."""
    return bytes([_u8(s.def_level_pct, 0.4), _u8(s.ambient_c + 8.0, 1.0, -40.0)]) + \
        b"\xff" * 6


def vw(s: TruckState, axle: int) -> bytes:
    """VW of axle ``axle`` (1 = front): location byte, axle weight (bytes 2-3, 0.5 kg)."""
    kg = s.axle_kg[axle - 1] if axle <= len(s.axle_kg) else math.nan
    weight = _u16(kg, 0.5) if math.isfinite(kg) else b"\xff\xff"
    return bytes([axle << 4 | 0x0F]) + weight + b"\xff" * 5


def fms_identity(_s: TruckState) -> bytes:
    """FMS identity: diagnostics and requests supported (byte 1), version (bytes 2-5)."""
    return bytes([0b1111_01_01]) + FMS_VERSION + b"\xff\xff\xff"


def address_claimed(sa: int, function: int) -> Frame:
    """Address Claimed (PGN 60928) of ECU ``sa``: a NAME with ``function``, industry group 1."""
    name = (sa * 7919 + 1) & 0x1FFFFF | MANUFACTURER << 21 | function << 40 | 1 << 60
    return Frame(can_id(6, PGN_ADDRESS_CLAIMED, sa), name.to_bytes(8, "little"))


def _lamp_byte(lamps: dict[str, bool]) -> int:
    bits = 0
    for shift, name in ((6, "mil"), (4, "red_stop"), (2, "amber_warning"), (0, "protect")):
        bits |= (0b01 if lamps.get(name) else 0b00) << shift
    return bits


def dtc_bytes(d: Dtc) -> bytes:
    """Four DTC bytes: SPN (19 bits), FMI (5 bits), CM=0, OC (7 bits)."""
    return bytes([d.spn & 0xFF, (d.spn >> 8) & 0xFF, ((d.spn >> 16) & 0x7) << 5 | (d.fmi & 0x1F),
                  d.oc & 0x7F])


def dm1(lamps: dict[str, bool], dtcs: tuple[Dtc, ...]) -> bytes:
    """DM1 payload: lamps, flash byte, 4 bytes per DTC; no DTC -> ``00 FF 00 00 00 00 FF FF``."""
    head = bytes([_lamp_byte(lamps), 0xFF])
    if not dtcs:
        return head + b"\x00\x00\x00\x00\xff\xff"
    body = head + b"".join(dtc_bytes(d) for d in dtcs)
    return body + b"\xff\xff" if len(dtcs) == 1 else body


def bam(pgn: int, payload: bytes, sa: int, priority: int = 7) -> list[Frame]:
    """A broadcast multi-packet message: TP.CM BAM then TP.DT packets (last padded)."""
    n = (len(payload) + 6) // 7
    cm = bytes([TP_BAM]) + struct.pack("<H", len(payload)) + bytes([n, 0xFF]) + \
        struct.pack("<I", pgn)[:3]
    out = [Frame(can_id(priority, PGN_TP_CM, sa), cm)]
    for i in range(n):
        chunk = payload[i * 7:(i + 1) * 7].ljust(7, b"\xff")
        out.append(Frame(can_id(priority, PGN_TP_DT, sa), bytes([i + 1]) + chunk))
    return out


def request(pgn: int, sa: int, da: int) -> Frame:
    """A Request (PGN 59904) for ``pgn`` from ``sa`` to ``da``."""
    return Frame(can_id(6, PGN_REQUEST, sa, da), struct.pack("<I", pgn)[:3])


Encoder = Callable[[TruckState], bytes]

#: (name, pgn, priority, sa, period_s, encoder) for the cyclic messages.
CYCLIC: tuple[tuple[str, int, int, int, float, Encoder], ...] = (
    ("EEC1", PGN_EEC1, 3, SA_ENGINE, 0.02, eec1),
    ("EEC2", PGN_EEC2, 3, SA_ENGINE, 0.05, eec2),
    ("CCVS1", PGN_CCVS1, 6, SA_ENGINE, 0.1, ccvs1),
    ("LFE", PGN_LFE, 6, SA_ENGINE, 0.1, lfe),
    ("VD", PGN_VD, 6, SA_CAB, 0.1, vd),
    ("EFL/P1", PGN_EFLP1, 6, SA_ENGINE, 0.5, eflp1),
    ("ET1", PGN_ET1, 6, SA_ENGINE, 1.0, et1),
    ("DD", PGN_DD, 6, SA_CAB, 1.0, dd),
    ("VDHR", PGN_VDHR, 6, SA_CAB, 1.0, vdhr),
    ("ETC2", PGN_ETC2, 6, SA_TRANS, 0.1, etc2),
    ("EBC1", PGN_EBC1, 6, SA_BRAKES, 0.1, ebc1),
    ("TCO1", PGN_TCO1, 3, SA_TACHO, 0.05, tco1),
    ("HRLFC", PGN_HRLFC, 6, SA_ENGINE, 1.0, hrlfc),
    ("AMB", PGN_AMB, 6, SA_ENGINE, 1.0, amb),
    ("VEP1", PGN_VEP1, 6, SA_ENGINE, 1.0, vep1),
    ("AT1T1I", PGN_AT1T1I, 6, SA_ENGINE, 1.0, at1t1i),
    ("VW1", PGN_VW, 6, SA_BRAKES, 1.0, functools.partial(vw, axle=1)),
    ("VW2", PGN_VW, 6, SA_BRAKES, 1.0, functools.partial(vw, axle=2)),
    ("VW3", PGN_VW, 6, SA_BRAKES, 1.0, functools.partial(vw, axle=3)),
    ("PTODE", PGN_PTODE, 6, SA_ENGINE, 0.1, ptode),
    ("SERV", PGN_SERV, 6, SA_CAB, 5.0, serv),
    ("FMS", PGN_FMS, 6, SA_FMS, 10.0, fms_identity),
)
ON_REQUEST: tuple[tuple[str, int, Encoder], ...] = (("HOURS", PGN_HOURS, hours),
                                                    ("LFC", PGN_LFC, lfc))


class Schedule:
    """Emits frames at their real rates; call :meth:`due` with the current time.

    ``rate_scale`` multiplies every rate (0.5 halves the bus load); ``request_every_s``
    is how often the cab ECU asks for HOURS and LFC (0 disables it).
    """

    def __init__(self, *, rate_scale: float = 1.0, request_every_s: float = 5.0,
                 dm1_every_s: float = 1.0) -> None:
        self.rate_scale = rate_scale
        self.request_every_s = request_every_s
        self.dm1_every_s = dm1_every_s
        self._next: dict[str, float] = {}
        self._pending: list[tuple[float, int, Frame]] = []
        self._tie = itertools.count()
        self._last_dtcs: tuple[Dtc, ...] | None = None
        self._last_di: bytes | None = None
        self.sent = 0
        self.corrupt_tp = False  # fault hook: emit a BAM with a skipped sequence number

    def _period(self, period: float) -> float:
        return period / self.rate_scale

    def _push(self, t: float, frames: list[Frame], gap: float = 0.0) -> None:
        for i, f in enumerate(frames):
            heapq.heappush(self._pending, (t + i * gap, next(self._tie), f))

    def due(self, now: float, state: TruckState) -> list[Frame]:
        """Frames whose time has come, oldest first. ECUs are silent with ignition off."""
        if state.ignition:
            self._cyclic(now, state)
        else:
            self._next.clear()
            self._last_dtcs = None
            self._last_di = None
        out: list[Frame] = []
        while self._pending and self._pending[0][0] <= now:
            out.append(heapq.heappop(self._pending)[2])
        self.sent += len(out)
        return out

    def _cyclic(self, now: float, s: TruckState) -> None:
        if "CLAIM" not in self._next:  # the ignition just came on: every ECU claims its SA
            self._push(now, [address_claimed(sa, fn) for sa, fn in ECUS])
            self._next["CLAIM"] = math.inf
        for name, pgn, prio, sa, period, enc in CYCLIC:
            t = self._next.get(name, now)
            if t <= now:
                self._push(now, [Frame(can_id(prio, pgn, sa), enc(s))])
                # catch up without bursts after a stall: next slot from now
                self._next[name] = max(t + self._period(period), now)
        payload = di(s)
        if self._next.get("DI", now) <= now or payload != self._last_di:  # 10 s, on change
            self._last_di = payload
            if len(payload) <= 8:  # no card: a single frame
                self._push(now, [Frame(can_id(6, PGN_DI, SA_TACHO), payload.ljust(8, b"\xff"))])
            else:
                self._push(now, bam(PGN_DI, payload, SA_TACHO), BAM_GAP_S)
            self._next["DI"] = now + self._period(DI_EVERY_S)
        t = self._next.get("DM1", now)
        if t <= now or s.dtcs != self._last_dtcs:  # every second and on change
            self._dm1(now, s)
            self._next["DM1"] = now + self._period(self.dm1_every_s)
        if self.request_every_s > 0:
            t = self._next.get("REQ", now + 0.5)
            if t <= now:
                for i, (_name, pgn, enc) in enumerate(ON_REQUEST):
                    at = now + i * 0.2
                    self._push(at, [request(pgn, SA_CAB, SA_ENGINE)])
                    self._push(at + 0.01, [Frame(can_id(6, pgn, SA_ENGINE), enc(s))])
                self._next["REQ"] = now + self._period(self.request_every_s)
            else:
                self._next.setdefault("REQ", t)

    def _dm1(self, now: float, s: TruckState) -> None:
        self._last_dtcs = s.dtcs
        payload = dm1(s.lamps, s.dtcs)
        if len(payload) <= 8:
            self._push(now, [Frame(can_id(6, PGN_DM1, SA_ENGINE), payload)])
            return
        frames = bam(PGN_DM1, payload, SA_ENGINE)
        if self.corrupt_tp and len(frames) > 2:
            self.corrupt_tp = False
            del frames[1]  # packet 1 lost: receivers must drop the whole message
        self._push(now, frames, BAM_GAP_S)

    def answer_request(self, now: float, pgn: int, state: TruckState) -> bool:
        """Queue the answer to a Request seen on the bus (from the gateway); True if known."""
        for _name, p, enc in ON_REQUEST:
            if p == pgn and state.ignition:
                self._push(now + 0.01, [Frame(can_id(6, p, SA_ENGINE), enc(state))])
                return True
        return False
