"""Simulator, log replay, cloud sink and demo (see docs/simulator.md).

Pure parts: :mod:`sim.truck` (model), :mod:`sim.route`, :mod:`sim.nmea_out`,
:mod:`sim.j1939_out`, :mod:`sim.faults`, :mod:`sim.sink_stats`, :mod:`sim.report`.
Shells: :mod:`sim.runner` (asyncio driver), :mod:`sim.ports` (ptys),
:mod:`sim.slcan_adapter`, :mod:`sim.replay`, :mod:`sim.sink`, :mod:`sim.fleet`,
:mod:`sim.demo`, :mod:`sim.gateway_proc`; commands in :mod:`sim.cli`.
"""
