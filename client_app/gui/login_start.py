""""Start at login", the way each platform does it; off by default, switched in Settings.

Linux: an XDG autostart entry ($XDG_CONFIG_HOME/autostart/client-app.desktop, the freedesktop
Desktop Application Autostart Specification). Windows: a value under HKCU\\Software\\Microsoft\\Windows\\
CurrentVersion\\Run. macOS: a LaunchAgent (~/Library/LaunchAgents/<label>.plist with RunAtLoad).
No Qt here: each platform's writer is a small function, tested where it can run and by its output elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import plistlib
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

APP_ID = "client-app"
MAC_LABEL = "com.client-app.client-app"
RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"


def launch_command() -> list[str]:
    """How this installation starts the app: the frozen executable, the `client-app` script, or Python."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.name.startswith(APP_ID) and script.is_file():
        return [str(script.resolve())]
    return [sys.executable, "-m", "client_app.main"]


def autostart_entry(command: Sequence[str]) -> str:
    exec_line = " ".join(shlex.quote(part) for part in command)
    return (
        "[Desktop Entry]\nType=Application\nName=client-app\n"
        "Comment=Connects this computer to its backend through Azure IoT Hub\n"
        f"Exec={exec_line}\nIcon={APP_ID}\nTerminal=false\nX-GNOME-Autostart-enabled=true\n"
    )


def launch_agent(command: Sequence[str]) -> bytes:
    return plistlib.dumps({"Label": MAC_LABEL, "ProgramArguments": list(command), "RunAtLoad": True})


def xdg_autostart_file(environ: dict[str, str] | None = None) -> Path:
    environ = dict(os.environ if environ is None else environ)
    base = Path(environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "autostart" / f"{APP_ID}.desktop"


def mac_agent_file() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{MAC_LABEL}.plist"


def _write_or_remove(path: Path, data: bytes | None) -> None:
    if data is None:
        path.unlink(missing_ok=True)
        return
    from client_app.pki import atomic_write  # lazily: cryptography is not on the way to the window

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, 0o644)


def _windows_run_value(enabled: bool, command: Sequence[str]) -> None:  # pragma: no cover - Windows only
    import subprocess
    import winreg  # type: ignore[import-not-found]

    with winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY, 0, winreg.KEY_SET_VALUE) as key:
        if enabled:
            winreg.SetValueEx(key, APP_ID, 0, winreg.REG_SZ, subprocess.list2cmdline(list(command)))
        else:
            with contextlib.suppress(FileNotFoundError):
                winreg.DeleteValue(key, APP_ID)


def set_start_at_login(
    enabled: bool, *, platform: str = sys.platform, command: Sequence[str] | None = None
) -> None:
    """Switch starting at login on or off for this user. Raises OSError when it cannot be written."""
    command = list(command or launch_command())
    if platform.startswith("win"):
        _windows_run_value(enabled, command)
    elif platform == "darwin":
        _write_or_remove(mac_agent_file(), launch_agent(command) if enabled else None)
    else:
        _write_or_remove(xdg_autostart_file(), autostart_entry(command).encode() if enabled else None)


def starts_at_login(platform: str = sys.platform) -> bool:
    if platform.startswith("win"):  # pragma: no cover - Windows only
        import winreg  # type: ignore[import-not-found]

        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY) as key:
                winreg.QueryValueEx(key, APP_ID)
            return True
        except OSError:
            return False
    return (mac_agent_file() if platform == "darwin" else xdg_autostart_file()).exists()
