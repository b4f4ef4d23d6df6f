import subprocess
import sys

import keyring.errors


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=30
    )


def test_secret_service_round_trip(keyring_env):
    code = (
        "import keyring; keyring.set_password('client-app-test', 'u', 'sécret');"
        "print(type(keyring.get_keyring()).__module__, keyring.get_password('client-app-test', 'u'))"
    )
    out = _run(code, keyring_env.env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["keyring.backends.SecretService", "sécret"]


def test_locked_collection_refuses(keyring_env):
    keyring_env.lock()
    try:
        out = _run("import keyring; keyring.get_password('client-app-test', 'u')", keyring_env.env)
        assert out.returncode != 0
        assert keyring.errors.KeyringLocked.__name__ in out.stderr
    finally:
        keyring_env.unlock()
    out = _run("import keyring; print(keyring.get_password('client-app-test', 'u'))", keyring_env.env)
    assert out.returncode == 0, out.stderr
