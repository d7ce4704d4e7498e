"""The session bus every part of convocationsd agrees on: the variable, else $XDG_RUNTIME_DIR/bus."""

from __future__ import annotations

import socket

from convocationsd.common import session_bus


def test_address(tmp_path):
    assert session_bus.address({"DBUS_SESSION_BUS_ADDRESS": "unix:path=/x"}) == "unix:path=/x"
    assert session_bus.address({"XDG_RUNTIME_DIR": str(tmp_path)}) is None
    (tmp_path / "bus").write_text("")  # not a socket
    assert session_bus.address({"XDG_RUNTIME_DIR": str(tmp_path)}) is None
    odd = tmp_path / "a b,c"
    odd.mkdir()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(odd / "bus"))
        got = session_bus.address({"DBUS_SESSION_BUS_ADDRESS": "", "XDG_RUNTIME_DIR": str(odd)})
        assert session_bus.address({"XDG_RUNTIME_DIR": "relative/dir"}) is None
    assert got == "unix:path=" + str(odd / "bus").replace(" ", "%20").replace(",", "%2c")
    assert session_bus.address({}) is None


def test_export_fills_the_variable_only_from_a_bus_that_exists(short_tmp):
    environ = {"XDG_RUNTIME_DIR": str(short_tmp)}
    assert session_bus.export(environ) is None
    assert "DBUS_SESSION_BUS_ADDRESS" not in environ
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(short_tmp / "bus"))
        assert session_bus.export(environ) == f"unix:path={short_tmp}/bus"
    assert environ["DBUS_SESSION_BUS_ADDRESS"] == f"unix:path={short_tmp}/bus"
    given = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/elsewhere", "XDG_RUNTIME_DIR": str(short_tmp)}
    assert session_bus.export(given) == "unix:path=/elsewhere"  # the variable wins
