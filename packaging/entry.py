"""Frozen entry point: the same `client-app` command the Python package installs."""

import sys

from client_app.main import main

if __name__ == "__main__":
    sys.exit(main())
