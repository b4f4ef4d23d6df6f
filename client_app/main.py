"""`client-app`: parse the shared options and dispatch to status / headless / self-test / demo / GUI."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from client_app.device.config import ConfigError, ConfigStore, DeviceConfig, add_config_arguments, log_dir_of
from client_app.logsetup import hold_logging, log_start, log_stop, open_held_log, setup_logging

log = logging.getLogger("client_app")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="client-app", description="Desktop client for Azure IoT Hub.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--status", action="store_true", help="print the device status as JSON and exit")
    mode.add_argument("--headless", action="store_true", help="run without a window until SIGTERM/SIGINT")
    mode.add_argument("--self-test", action="store_true", help="check the installation and exit")
    mode.add_argument("--send", metavar="TEXT", help="queue a device-to-cloud message and exit")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="start an embedded local cloud with a demo CA, then run the app against it",
    )
    # The desktop window's device-core process (core_service.py); started by the window, not by people.
    mode.add_argument("--core-service", metavar="HANDLE", help=argparse.SUPPRESS)
    add_config_arguments(parser)
    return parser


def _demo_module() -> ModuleType:
    # The end-user build leaves the local cloud (and so the demo) out on purpose.
    if importlib.util.find_spec("client_app.demo") is None:
        raise ConfigError("--demo is not part of this build; run it from a source checkout")
    return importlib.import_module("client_app.demo")


def _status(config: DeviceConfig, demo_cloud_dir: str | None) -> int:
    from client_app.device.support import current_status

    status = current_status(config).to_json_dict()
    if demo_cloud_dir is not None:
        status["local_cloud_dir"] = demo_cloud_dir
    print(json.dumps(status, indent=2))
    return 0


def _send(config: DeviceConfig, text: str) -> int:
    from client_app.device.store import Database, Outbox

    db = Database(config.layout.database)
    try:
        message = Outbox(db).add(text)
    finally:
        db.close()
    print(json.dumps({"queued": message.message_id}))  # a running instance picks it up within a second
    return 0


def _self_test(config: DeviceConfig) -> int:
    if importlib.util.find_spec("client_app.selftest") is None:
        print("client-app: self-test is not part of this build", file=sys.stderr)
        return 2
    return int(importlib.import_module("client_app.selftest").run(config) or 0)


def _gui(config: DeviceConfig, store: ConfigStore, demo: ModuleType | None) -> int:
    switch = demo.cloud_switch() if demo is not None else None
    return int(importlib.import_module("client_app.gui.startup").run_gui(config, store, switch) or 0)


def _mode(args: argparse.Namespace) -> str:
    for name in ("status", "headless", "self_test"):
        if getattr(args, name):
            return name.replace("_", "-")
    return "send" if args.send is not None else "window"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.core_service is not None:  # configured by the window over the socket, logs to its own file
        return importlib.import_module("client_app.core_service").run_core_service(args.core_service)
    code = 1
    try:
        code = _run(args)
    except ConfigError as exc:
        print(f"client-app: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # `client-app --status | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except Exception as exc:  # never a traceback to the user: one line here, the details in the log
        log.exception("client-app failed")
        # our own errors are written for people; anything else gets its type for support
        ours = type(exc).__module__.startswith("client_app.")
        text = str(exc).splitlines()[0] if ours and str(exc) else f"{exc.__class__.__name__}: {exc}"
        print(f"client-app: {text} (details in the log)", file=sys.stderr)
        code = 1
    finally:
        if logging.getLogger().handlers:
            log_stop(code)
            open_held_log()  # a window that never showed (already running, a bad setting): its lines too
    return code


def _run(args: argparse.Namespace) -> int:
    demo = _demo_module() if args.demo else None
    layer = demo.device_layer(args.data_dir) if demo else {}
    # Logging first: a failure while setting up the demo or reading the configuration is logged too. The
    # window's process writes its file after its first paint (gui/startup.py); until then records are held.
    log_dir = log_dir_of(args, os.environ, layer)
    if _mode(args) == "window":
        hold_logging(log_dir)
    else:
        setup_logging(log_dir)
    log_start(_mode(args))
    if demo is not None:
        data_dir = ConfigStore(args, os.environ, layer).load().data_dir
        # Only the window and --headless run the demo's cloud; the others read or queue and exit.
        locate_only = args.status or args.send is not None or args.self_test
        layer = {**layer, **demo.prepare_demo(data_dir, status_only=locate_only)}
    window = _mode(args) == "window"  # its device core runs in a process of its own, with the keyring
    store = ConfigStore(args, os.environ, layer, keyring=not window)
    config = store.load()
    if args.status:
        return _status(config, str(demo.cloud_dir()) if demo else None)
    if args.send is not None:
        return _send(config, args.send)
    if args.self_test:
        return _self_test(config)
    if args.headless:
        from client_app.headless import run_headless

        return run_headless(config)
    return _gui(config, store, demo)


if __name__ == "__main__":
    sys.exit(main())
