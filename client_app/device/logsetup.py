"""Logging to a rotating file in the log directory. Nothing secret is ever logged, so nothing is redacted."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

LOG_FILE = "client-app.log"


def setup_logging(log_dir: Path, level: int = logging.INFO) -> Path | None:
    root = logging.getLogger()
    root.setLevel(level)
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            log_dir / LOG_FILE, maxBytes=2_000_000, backupCount=5, encoding="utf-8"
        )
    except OSError:
        return None  # logging is a help, not a reason to refuse to start
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    root.addHandler(handler)
    # The SDK and paho are chatty at INFO; their warnings are what support needs.
    for name in ("azure.iot.device", "paho"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return log_dir / LOG_FILE
