"""Work-arounds for defects of the PySide6 build in use; each one checks that it is needed first.

PySide6 6.12.0 hands Python the singletons None, True and False without the reference it owes:
every call of a void Qt method (setText, QTimer.stop, processEvents, ...) drops a reference to
None, SignalInstance.emit() one to True, SignalInstance.disconnect() one to True or False. On
Python 3.11 these objects are reference-counted like any other, so after a few thousand calls
CPython aborts with "Fatal Python error: none_dealloc" (or bool_dealloc). Measured here: 1,000
setObjectName() calls, None's count falls by 1,000; 200 emits, True's by 200; a window's status
update costs None about 16 references, the reconnect countdown 10 a second.

No wrapper can cover every void method, so the fix does what CPython 3.12 does for these objects:
it makes them immortal, here by giving each an unspendable reserve of references. A reserve is
harmless where the probe misjudges; on 3.12+ the probe finds nothing to fix.
"""

from __future__ import annotations

import ctypes
import sys
import warnings
from collections.abc import Callable

from PySide6.QtCore import QObject, Signal

_PROBE_CALLS = 200  # enough that other threads' reference churn cannot hide the defect
# 2**61 on 64-bit: the app would need millions of years to spend it, and it cannot overflow.
_RESERVE = sys.maxsize >> 2


class _Probe(QObject):
    fired = Signal()


def _add_references(singleton: object, count: int) -> None:
    # ob_refcnt is the first field of every object in CPython 3.11 (the only version that needs this).
    # Written under the GIL, which every reference count change in this process also holds.
    refcount = ctypes.c_ssize_t.from_address(id(singleton))
    refcount.value += count


def _drops_a_reference(singleton: object, call: Callable[[], object]) -> bool:
    """Whether call() costs `singleton` a reference. Other threads (the demo's embedded cloud) also
    take and drop references to these objects: the probe keeps the GIL and allows for some noise."""
    _add_references(singleton, _PROBE_CALLS)  # the probe itself must not drain it (False has few)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(60)
    try:
        before = sys.getrefcount(singleton)
        for _ in range(_PROBE_CALLS):
            call()
        dropped = before - sys.getrefcount(singleton)
    finally:
        sys.setswitchinterval(interval)
    return dropped >= _PROBE_CALLS // 2


def defective_singletons() -> list[object]:
    probe = _Probe()

    def slot() -> None:  # never called: only connected and disconnected
        pass

    probes: list[tuple[object, Callable[[], object]]] = [
        (None, lambda: probe.setObjectName("probe")),
        (True, probe.fired.emit),
        (False, lambda: probe.fired.disconnect(slot)),  # nothing connected: returns False
    ]
    with warnings.catch_warnings():  # "Failed to disconnect": expected, it is the False case
        warnings.simplefilter("ignore", RuntimeWarning)
        return [singleton for singleton, call in probes if _drops_a_reference(singleton, call)]


def _apply() -> list[object]:
    if sys.implementation.name != "cpython" or sys.version_info >= (3, 12):
        return []  # immortal already (3.12+), or no reference counts to fix
    try:
        defective = defective_singletons()
        for singleton in defective:
            _add_references(singleton, _RESERVE)
    except Exception:  # never let a work-around stop the app from starting
        return []
    return defective


IMMORTALISED = _apply()
