"""Work-arounds for defects of the PySide6 build in use; each one checks that it is needed first.

PySide6 6.12.0: SignalInstance.emit() returns True without taking a reference to it, so every
Python-side emit() drops one reference to the True singleton. After a few thousand emits (one
status update or one arriving message is a few) CPython aborts with "Fatal Python error:
bool_dealloc: deallocating True or False". Measured here: 300 emits, True's count falls by 300.
The fix gives the reference back after each emit. An extra reference on True is harmless, so
the patch is safe even on a build where the probe misjudges.
"""

from __future__ import annotations

import ctypes
import sys

from PySide6.QtCore import QObject, Signal, SignalInstance


def _incref(obj: object) -> None:
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


class _Probe(QObject):
    fired = Signal()


def emit_drops_a_reference() -> bool:
    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(10):
        probe.fired.emit()
    dropped = before - sys.getrefcount(True)
    if dropped > 0:
        for _ in range(dropped):  # give back what the probe itself took
            _incref(True)
    probe.deleteLater()
    return dropped >= 10


def _patch_emit() -> bool:
    if getattr(SignalInstance.emit, "_client_app_fixed", False) or not emit_drops_a_reference():
        return False
    original = SignalInstance.emit

    def emit(self: SignalInstance, *args: object) -> object:
        result = original(self, *args)
        if result is True:
            _incref(True)
        return result

    emit._client_app_fixed = True  # type: ignore[attr-defined]
    SignalInstance.emit = emit  # type: ignore[method-assign]
    return True


try:
    EMIT_PATCHED = _patch_emit()
except Exception:  # never let a work-around stop the app from starting
    EMIT_PATCHED = False
