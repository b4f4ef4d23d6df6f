"""The production Connector: DPS registration and hub sessions through azure-iot-device."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from client_app.device.config import DeviceConfig
from client_app.device.identity import Identity
from client_app.device.provisioning import provision
from client_app.device.session import HubSession, SessionHandlers
from client_app.device.state import Assignment


class SdkConnector:
    def __init__(self, chain_file: Path) -> None:
        self._chain_file = chain_file  # the SDK reads the certificate chain from this file
        self._later: list[Callable[[], None]] = []  # clean-ups deferred until connected

    def provision(self, config: DeviceConfig, identity: Identity) -> Assignment:
        return provision(config, identity, self._chain_file, self._later)

    def session(
        self, config: DeviceConfig, identity: Identity, assignment: Assignment, handlers: SessionHandlers
    ) -> HubSession:
        return HubSession(config, identity, self._chain_file, assignment, handlers)

    def release(self) -> None:
        jobs, self._later = self._later, []
        if jobs:
            threading.Thread(
                target=lambda: [job() for job in jobs], name="device-cleanup", daemon=True
            ).start()
