"""GUI fixtures: a real device core against a real local cloud, and helpers to feed widgets."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from client_app.device.config import ConfigStore, DeviceConfig
from client_app.device.runtime import ConnectionState, DeviceStatus
from client_app.gui.app import AppController
from client_app.gui.main_window import MainWindow
from client_app.gui.tray import StatusTray


def make_status(state: ConnectionState = ConnectionState.CONNECTED, **fields) -> DeviceStatus:
    return DeviceStatus(state=state, **fields)


def second_launch(qtbot, data_dir: Path, call: str = "claim_lock().name") -> str:
    """What a second launch does, in a process of its own (as it is; a thread of this one would hold the
    interpreter lock in Qt's blocking socket calls, which the asked window's slots need to answer)."""
    code = "import sys; from client_app.gui.single_instance import SingleInstance as S; "
    code += f"print(S(sys.argv[1]).{call})"
    with subprocess.Popen(
        [sys.executable, "-c", code, str(data_dir)], stdout=subprocess.PIPE, text=True
    ) as process:
        qtbot.waitUntil(lambda: process.poll() is not None, timeout=30_000)
        assert process.stdout is not None
        return process.stdout.read().strip()


def cloud_store(tmp_path: Path, cloud_dir: Path, bundle: Path) -> ConfigStore:
    args = argparse.Namespace(
        local_cloud=str(cloud_dir),
        issuer_bundle=str(bundle),
        data_dir=str(tmp_path / "device"),
        backoff_cap="2",
    )
    return ConfigStore(args, {})


def cloud_config(tmp_path: Path, cloud_dir: Path, bundle: Path, **overrides) -> DeviceConfig:
    import dataclasses

    return dataclasses.replace(cloud_store(tmp_path, cloud_dir, bundle).load(), **overrides)


@pytest.fixture
def window(qtbot) -> Iterator[MainWindow]:
    main_window = MainWindow()
    qtbot.addWidget(main_window)
    yield main_window
    main_window.keep_running_in_tray = False


@pytest.fixture
def device_config(tmp_path, local_cloud, enrolled_ca, keyring_env) -> DeviceConfig:
    return cloud_config(tmp_path, Path(local_cloud.info.data_dir), enrolled_ca.bundle_path)


@pytest.fixture
def device_store(tmp_path, local_cloud, enrolled_ca, keyring_env) -> ConfigStore:
    return cloud_store(tmp_path, Path(local_cloud.info.data_dir), enrolled_ca.bundle_path)


@pytest.fixture
def running_app_factory(qtbot, device_config, device_store) -> Iterator:
    """Builds the real app minus QApplication.exec(): window, tray, bridge and a started DeviceRuntime."""
    made: list[AppController] = []

    def make(config: DeviceConfig | None = None) -> AppController:
        main_window = MainWindow()
        qtbot.addWidget(main_window)
        controller = AppController(
            config or device_config, main_window, tray=StatusTray(), store=device_store
        )
        main_window.show()
        controller.start()
        made.append(controller)
        return controller

    yield make
    for controller in made:
        controller.shutdown()
        if controller.tray is not None:
            controller.tray.dispose()
            controller.tray.deleteLater()
        controller.deleteLater()
    qtbot.wait(10)  # let deleteLater run before the next test


@pytest.fixture
def running_app(running_app_factory) -> AppController:
    return running_app_factory()
