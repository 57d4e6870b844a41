#!/usr/bin/python3
"""A stand-in for systemd's D-Bus API on a private bus, for the collector's bench.

systemd cannot run on the bench machine (it is not PID 1 there), so `run.sh` measures the
memory of a run that asks the bus against this instead: it owns org.freedesktop.systemd1 and
answers the calls a timer's run makes (Manager.GetUnitByPID, Manager.GetUnit, and
Properties.Get/GetAll on the Unit and Timer interfaces) with values of the types systemd 252
and 257 give, shaped as a timer start that has just fired: the timer triggered this instant
and its calendar entry is the elapse a moment ago. The answers are what the collector needs to
judge the start, not systemd's whole property sets.

Usage: systemd-standin.py BUS_ADDRESS (runs until killed).
"""

import sys
import time

import dbus
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
TIMER = "org.freedesktop.systemd1.Timer"
PROPERTIES = "org.freedesktop.DBus.Properties"
SERVICE_PATH = "/org/freedesktop/systemd1/unit/report_2dcollector_2eservice"
TIMER_PATH = "/org/freedesktop/systemd1/unit/report_2dcollector_2etimer"


def monotonic_usec():
    return dbus.UInt64(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)


def realtime_usec(offset=0.0):
    return dbus.UInt64(int((time.time() + offset) * 1_000_000))


def unit_properties(unit_id):
    started = monotonic_usec()
    return {
        "Id": dbus.String(unit_id),
        "ActiveState": dbus.String("activating"),
        "SubState": dbus.String("start"),
        "InactiveExitTimestamp": realtime_usec(),
        "InactiveExitTimestampMonotonic": started,
        "ActiveEnterTimestampMonotonic": dbus.UInt64(0),
    }


def timer_properties():
    return {
        "Unit": dbus.String("report-collector.service"),
        "LastTriggerUSec": realtime_usec(),
        "LastTriggerUSecMonotonic": monotonic_usec(),
        "NextElapseUSecRealtime": dbus.UInt64(2**64 - 1),
        "TimersCalendar": dbus.Array(
            [dbus.Struct(("OnCalendar", "*-*-* *:*:00", realtime_usec(-0.05)), signature="sst")],
            signature="(sst)",
        ),
    }


class Manager(dbus.service.Object):
    @dbus.service.method(MANAGER, in_signature="u", out_signature="o")
    def GetUnitByPID(self, pid):
        return dbus.ObjectPath(SERVICE_PATH)

    @dbus.service.method(MANAGER, in_signature="s", out_signature="o")
    def GetUnit(self, name):
        if name != "report-collector.timer":
            raise dbus.DBusException(
                "Unit %s not loaded." % name, name="org.freedesktop.systemd1.NoSuchUnit"
            )
        return dbus.ObjectPath(TIMER_PATH)


class Unit(dbus.service.Object):
    def __init__(self, bus, path, unit_id, is_timer):
        super().__init__(bus, path)
        self.unit_id = unit_id
        self.is_timer = is_timer

    def _all(self, interface):
        if interface == UNIT:
            return unit_properties(self.unit_id)
        if interface == TIMER and self.is_timer:
            return timer_properties()
        raise dbus.DBusException(
            "Unknown interface %s." % interface, name="org.freedesktop.DBus.Error.UnknownInterface"
        )

    @dbus.service.method(PROPERTIES, in_signature="s", out_signature="a{sv}")
    def GetAll(self, interface):
        return dbus.Dictionary(self._all(interface), signature="sv")

    @dbus.service.method(PROPERTIES, in_signature="ss", out_signature="v")
    def Get(self, interface, name):
        values = self._all(interface)
        if name not in values:
            raise dbus.DBusException(
                "Unknown property %s." % name, name="org.freedesktop.DBus.Error.UnknownProperty"
            )
        return values[name]


def main():
    DBusGMainLoop(set_as_default=True)
    bus = dbus.bus.BusConnection(sys.argv[1])
    name = dbus.service.BusName("org.freedesktop.systemd1", bus)
    objects = [
        Manager(bus, "/org/freedesktop/systemd1"),
        Unit(bus, SERVICE_PATH, "report-collector.service", False),
        Unit(bus, TIMER_PATH, "report-collector.timer", True),
    ]
    print("ready", flush=True)
    GLib.MainLoop().run()
    del name, objects


if __name__ == "__main__":
    main()
