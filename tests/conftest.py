import os

# Qt must pick its platform before any QApplication exists.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest_plugins = [
    "tests.fixtures.secret_service",
    "tests.fixtures.cloud",
    "tests.fixtures.x_display",
    "tests.fixtures.node",
]
