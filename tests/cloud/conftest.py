"""Local-cloud SDK tests: collect the SDK's abandoned sockets inside the test that made them."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _collect_sdk_garbage(request: pytest.FixtureRequest) -> Iterator[None]:
    # paho 1.6.1 inside azure-iot-device drops sockets without closing them (after refusals, drops, shutdown).
    # Collected later, they would raise ResourceWarning in whatever test runs then (filterwarnings=error).
    # The transport's own tests (tests/cloud/mqtt) are left alone: there a leak would be a real finding.
    yield
    if request.module.__name__.startswith("tests.cloud.mqtt"):
        return
    if not _uses_fixtures(request):
        return  # a pure function test (no cloud, no SDK client): spare it a full collection (a second, late)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    gc.freeze()  # what survived is live: later collections scan only what later tests make


def _uses_fixtures(request: pytest.FixtureRequest) -> bool:
    callspec = getattr(request.node, "callspec", None)
    parameters = set(callspec.params) if callspec else set()
    return bool(set(request.fixturenames) - parameters - {"request", "_collect_sdk_garbage"})
