"""The device private key in the OS keyring, and nowhere else.

Any keyring that would store the key in plain form (or not at all) is refused: the user gets a clear
error instead of a silent downgrade.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import keyring
import keyring.core
import keyring.errors
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from client_app.pki import PrivateKey

log = logging.getLogger(__name__)

T = TypeVar("T")
SERVICE = "client-app"
# Backends that do not keep a secret safe: no storage, plain files, or "always fail".
_UNSAFE_BACKENDS = ("keyring.backends.fail.", "keyring.backends.null.", "keyrings.alt.file.PlaintextKeyring")


class KeyringUnavailable(Exception):
    """No usable keyring; the message tells the user what to do."""


class KeyMissing(Exception):
    """The keyring works but holds no (valid) key for this device."""


def _entry(registration_id: str) -> str:
    return f"device-key/{registration_id}"


def backend_name() -> str:
    try:
        backend = keyring.get_keyring()
    except Exception as exc:  # a broken PYTHON_KEYRING_BACKEND raises at import time of the backend
        return f"unavailable ({exc.__class__.__name__})"
    return f"{type(backend).__module__}.{type(backend).__name__}"


def _unsafe(name: str) -> bool:
    return name.startswith("unavailable") or name.startswith(_UNSAFE_BACKENDS)


def redetect_backend() -> None:
    """Look for a keyring again: the user may have started a Secret Service since. keyring lists the viable
    backends once per process (keyring.backend.get_all_keyring is @once), so the list is reset first."""
    with contextlib.suppress(KeyError):  # KeyError: not listed yet
        keyring.backend.get_all_keyring.reset()
    with contextlib.suppress(Exception):
        keyring.core.init_backend()


def check_backend() -> None:
    """Cheap (no D-Bus round trip): is there a keyring that could keep a secret at all?"""
    if _unsafe(backend_name()):
        redetect_backend()
    if _unsafe(backend_name()):
        raise KeyringUnavailable(
            "No secure system keyring is available. Install and start a Secret Service "
            "(GNOME Keyring or KWallet) or use Windows Credential Manager / macOS Keychain, then press Retry."
        )


def _translate(exc: Exception) -> KeyringUnavailable:
    if isinstance(exc, keyring.errors.KeyringLocked):
        return KeyringUnavailable(
            "The system keyring is locked. Unlock it (log in to your desktop session "
            "or open your password manager) and press Retry."
        )
    if isinstance(exc, keyring.errors.NoKeyringError):
        return KeyringUnavailable(
            "No system keyring is available. Install and start a Secret Service "
            "(e.g. GNOME Keyring), then press Retry."
        )
    return KeyringUnavailable(
        f"The system keyring refused access ({exc.__class__.__name__}). "
        "Make sure it is running and unlocked, then press Retry."
    )


KEYRING_TIMEOUT = 20.0  # seconds for one keyring call; a Secret Service that never answers must not hang us


class _Pending:
    """Keyring calls one at a time, each on its own daemon thread; a stuck one is left, never joined."""

    lock = threading.Lock()
    stuck: threading.Thread | None = None


def _call(fn: Callable[..., T], *args: str, timeout: float = KEYRING_TIMEOUT) -> T:
    """Run one keyring call and give up after `timeout`: D-Bus calls to a Secret Service that hangs (stopped,
    deadlocked, waiting on a prompt nobody sees) have no timeout of their own."""
    if not _Pending.lock.acquire(timeout=timeout):
        raise _not_answering(timeout)
    try:
        if _Pending.stuck is not None:  # an earlier call still hangs: give it this call's time, no new thread
            _Pending.stuck.join(timeout)
            if _Pending.stuck.is_alive():
                raise _not_answering(timeout)
            _Pending.stuck = None
        outcome: list[tuple[bool, Any]] = []

        def call() -> None:
            try:
                outcome.append((True, fn(*args)))
            except BaseException as exc:  # handed to the caller's thread
                outcome.append((False, exc))

        thread = threading.Thread(target=call, name="keyring-call", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            _Pending.stuck = thread
            log.warning("the keyring did not answer within %.0f s", timeout)
            raise _not_answering(timeout)
    finally:
        _Pending.lock.release()
    ok, value = outcome.pop()
    if ok:
        return value
    if not isinstance(value, keyring.errors.KeyringError | RuntimeError):
        raise value
    error = _translate(value)  # deliberately not chained: the traceback would keep the leak below alive
    del value
    # keyring's SecretService backend leaves its D-Bus connection open when the collection is locked; free it
    # now instead of leaking one socket per retry in a long-running app.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    raise error


def _not_answering(timeout: float) -> KeyringUnavailable:
    return KeyringUnavailable(
        f"The system keyring did not answer within {timeout:.0f} s. Make sure it is running and unlocked "
        "(restart your desktop session if it stays stuck); the app tries again automatically."
    )


class KeyringStore:
    """The KeyStore port on the OS keyring: every call bounded by `timeout` seconds."""

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = KEYRING_TIMEOUT if timeout is None else timeout

    def backend_name(self) -> str:
        return backend_name()

    def check_backend(self) -> None:
        check_backend()

    def store(self, registration_id: str, key: PrivateKey) -> None:
        check_backend()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        _call(keyring.set_password, SERVICE, _entry(registration_id), pem, timeout=self.timeout)

    def load(self, registration_id: str) -> PrivateKey:
        check_backend()
        pem = _call(keyring.get_password, SERVICE, _entry(registration_id), timeout=self.timeout)
        if not pem:
            raise KeyMissing("the device key is missing from the keyring")
        try:
            key = serialization.load_pem_private_key(pem.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise KeyMissing("the device key in the keyring is unreadable") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise KeyMissing("the device key in the keyring is of an unsupported type")
        return key

    def delete(self, registration_id: str) -> None:
        """Best effort: a stale entry is harmless, a failure here must not block anything else."""
        try:
            _call(_delete_if_present, SERVICE, _entry(registration_id), timeout=self.timeout)
        except KeyringUnavailable as exc:
            log.warning("could not delete the device key from the keyring: %s", exc)


def proxy_entry(proxy: str) -> str:
    """The keyring entry of a proxy's password, named by the proxy URL without it."""
    return f"proxy-password/{proxy}"


def store_secret(entry: str, value: str) -> None:
    check_backend()
    _call(keyring.set_password, SERVICE, entry, value)


def load_secret(entry: str) -> str | None:
    check_backend()
    return _call(keyring.get_password, SERVICE, entry)


def _delete_if_present(service: str, entry: str) -> None:
    with contextlib.suppress(keyring.errors.PasswordDeleteError):
        keyring.delete_password(service, entry)


_default = KeyringStore()
store_key, load_key, delete_key = _default.store, _default.load, _default.delete
