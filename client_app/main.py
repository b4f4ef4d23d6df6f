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
from pathlib import Path
from types import ModuleType

from client_app.device.config import ConfigError, DeviceConfig, add_config_arguments, load_config, log_dir_of
from client_app.device.logsetup import setup_logging

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
    add_config_arguments(parser)
    return parser


def _demo_module() -> ModuleType:
    # The end-user build leaves the local cloud (and so the demo) out on purpose.
    if importlib.util.find_spec("client_app.demo") is None:
        raise ConfigError("--demo is not part of this build; run it from a source checkout")
    return importlib.import_module("client_app.demo")


def _apply_demo(args: argparse.Namespace) -> None:
    cloud_dir, bundle = _demo_module().prepare_demo(args)
    args.demo_cloud_dir = str(cloud_dir)
    # `--demo --status` before the demo ever ran: there is no cloud to read yet, only a status to print.
    if Path(cloud_dir).is_dir() or not args.status:
        args.local_cloud = str(cloud_dir)
    if not args.issuer_bundle:
        args.issuer_bundle = str(bundle)


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


def _gui(config: DeviceConfig) -> int:
    return int(importlib.import_module("client_app.gui.app").run_gui(config) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.demo:
            _demo_module().use_demo_device(args)
        # Logging first: a failure while setting up the demo or reading the configuration is logged too.
        setup_logging(log_dir_of(args, os.environ))
        if args.demo:
            _apply_demo(args)
        config = load_config(args, os.environ)
        if args.status:
            return _status(config, getattr(args, "demo_cloud_dir", None))
        if args.send is not None:
            return _send(config, args.send)
        if args.self_test:
            return _self_test(config)
        if args.headless:
            from client_app.device.headless import run_headless

            return run_headless(config)
        return _gui(config)
    except ConfigError as exc:
        print(f"client-app: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `client-app --status | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # never a traceback to the user: one line here, the details in the log
        log.exception("client-app failed")
        # our own errors are written for people; anything else gets its type for support
        ours = type(exc).__module__.startswith("client_app.")
        text = str(exc).splitlines()[0] if ours and str(exc) else f"{exc.__class__.__name__}: {exc}"
        print(f"client-app: {text} (details in the log)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
