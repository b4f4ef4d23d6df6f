"""The `client-app-pki` commands, run in-process through click, plus one run of the installed script."""

import os
import pty
import select
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, pkcs12
from cryptography.x509.oid import ExtensionOID, NameOID

from client_app.pki import (
    certificate_to_pem,
    generate_key,
    load_certificates,
    load_issuer_bundle,
    load_private_key,
    private_key_to_pem,
)
from client_app.pki.cli import PASSPHRASE_ENV, main
from client_app.pki.keys import pem_begin
from client_app.pki.workspace import Workspace

from .oracles import hand_made_ca, openssl_verify, pkilint_findings

PASSPHRASE = "correct horse"
# The console script declared in pyproject (what `uv run client-app-pki` starts).
SCRIPT = Path(sys.executable).parent / "client-app-pki"


@pytest.fixture(autouse=True)
def _no_ambient_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)


def run(*args: object, passphrase: str | None = PASSPHRASE, stdin: str | None = None) -> Result:
    env = {PASSPHRASE_ENV: passphrase} if passphrase else {}
    return CliRunner().invoke(main, [str(arg) for arg in args], env=env, input=stdin, catch_exceptions=False)


def ok(*args: object, **kwargs: object) -> Result:
    result = run(*args, **kwargs)
    assert result.exit_code == 0, result.output
    return result


def assert_one_line_error(result: Result, fragment: str) -> None:
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.output


def on_a_terminal(args: list[object], answers: list[str]) -> tuple[int, str]:
    """Run the installed script on a pseudo-terminal, typing each answer after a prompt ending in ': '.

    The child gets a new session, so getpass cannot reach this test run's own terminal through
    /dev/tty and reads the pseudo-terminal on stdin, with echo off, as it would for a person.
    """
    master, slave = pty.openpty()
    child = subprocess.Popen(
        [SCRIPT, *map(str, args)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={"PATH": "/usr/bin:/bin"},
        start_new_session=True,
    )
    os.close(slave)
    output = b""
    try:
        for answer in answers:
            output += _read_until_prompt(master)
            os.write(master, answer.encode() + b"\n")
        code = child.wait(timeout=60)
        output += _read_until_prompt(master, until_closed=True)
    finally:
        child.kill()
        os.close(master)
    return code, output.decode(errors="replace")


def _read_until_prompt(master: int, *, until_closed: bool = False) -> bytes:
    data = b""
    deadline = time.monotonic() + 30
    while until_closed or not data.endswith(b": "):
        assert time.monotonic() < deadline, f"no prompt within 30 s: {data!r}"
        if select.select([master], [], [], 1)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child has gone and closed the terminal
                chunk = b""
            if not chunk:
                break
            data += chunk
    return data


def files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")) if directory.exists() else []


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An encrypted two-intermediate workspace shared by the read-only tests."""
    directory = tmp_path_factory.mktemp("ca") / "ws"
    result = CliRunner().invoke(
        main, ["init", str(directory), "--intermediates", "2"], env={PASSPHRASE_ENV: PASSPHRASE}
    )
    assert result.exit_code == 0, result.output
    return directory


def test_init_layout_profiles_and_key_protection(workspace: Path, tmp_path: Path) -> None:
    assert files(workspace) == [
        "intermediate-1.cert.pem",
        "intermediate-2.cert.pem",
        "private",
        "private/intermediate-1.key.pem",
        "private/intermediate-2.key.pem",
        "private/root.key.pem",
        "root.cert.pem",
    ]
    assert stat.S_IMODE((workspace / "private").stat().st_mode) == 0o700
    for key_file in (workspace / "private").iterdir():
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert key_file.read_bytes().startswith(pem_begin("ENCRYPTED PRIVATE KEY"))
    root, first, second = (
        load_certificates(workspace / f"{n}.cert.pem")[0] for n in Workspace(workspace).names
    )
    path_lengths = [
        c.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
        for c in (root, first, second)
    ]
    assert path_lengths == [None, 1, 0]
    first.verify_directly_issued_by(root)
    second.verify_directly_issued_by(first)
    assert root.not_valid_after_utc > first.not_valid_after_utc >= second.not_valid_after_utc
    assert all(pkilint_findings(cert) == [] for cert in (root, first, second))
    issuing = Workspace(workspace).load_ca("intermediate-2", PASSPHRASE.encode())
    assert issuing.chain == (first, root)
    leaf = issuing.issue_device("dev", generate_key().public_key())
    assert openssl_verify(tmp_path, leaf, [root], [second, first]).returncode == 0


def test_init_no_passphrase_rsa_and_force(tmp_path: Path) -> None:
    directory = tmp_path / "ws"
    ok(
        "init",
        directory,
        "--no-passphrase",
        "--key-type",
        "rsa-2048",
        "--intermediates",
        "3",
        passphrase=None,
    )
    key_pem = (directory / "private" / "root.key.pem").read_bytes()
    assert key_pem.startswith(pem_begin("PRIVATE KEY"))
    assert load_private_key(key_pem, None, "root").key_size == 2048
    assert_one_line_error(run("init", directory, "--no-passphrase"), "already holds a CA workspace")
    assert (directory / "private" / "root.key.pem").read_bytes() == key_pem
    ok("init", directory, "--no-passphrase", "--force", passphrase=None)
    assert Workspace(directory).names == ["root", "intermediate-1"]
    assert files(directory / "private") == ["intermediate-1.key.pem", "root.key.pem"]


def test_init_failing_half_way_leaves_no_workspace(tmp_path: Path) -> None:
    directory = tmp_path / "ws"
    (directory / "intermediate-1.cert.pem").mkdir(parents=True)  # the last file cannot be written
    assert_one_line_error(run("init", directory, "--force"), "intermediate-1.cert.pem: Is a directory")
    assert files(directory) == ["intermediate-1.cert.pem", "private"]  # no key, no root certificate
    (directory / "intermediate-1.cert.pem").rmdir()
    ok("init", directory)  # and nothing blocks a second attempt


def test_init_never_replaces_a_lone_key_and_locks_the_private_dir(tmp_path: Path) -> None:
    private = tmp_path / "ws" / "private"
    private.mkdir(parents=True, mode=0o755)
    private.chmod(0o755)
    (private / "root.key.pem").write_bytes(b"an earlier key")
    assert_one_line_error(run("init", tmp_path / "ws"), "root.key.pem exists")
    assert (private / "root.key.pem").read_bytes() == b"an earlier key"
    ok("init", tmp_path / "ws", "--force")
    assert stat.S_IMODE(private.stat().st_mode) == 0o700


def test_passphrase_from_file_and_prompt(tmp_path: Path) -> None:
    secret = tmp_path / "pass.txt"
    secret.write_text("from a file\n")
    ok("init", tmp_path / "a", "--passphrase-file", secret, passphrase=None)
    Workspace(tmp_path / "a").load_ca("root", b"from a file")
    code, output = on_a_terminal(["init", tmp_path / "b"], ["typed", "typed"])
    assert code == 0, output
    assert "Workspace passphrase:" in output and "Repeat for confirmation:" in output
    assert "typed" not in output  # not echoed
    Workspace(tmp_path / "b").load_ca("root", b"typed")
    code, output = on_a_terminal(
        ["issuer-bundle", tmp_path / "b", "--out", tmp_path / "bundle.pem"], ["typed"]
    )
    assert code == 0, output
    load_issuer_bundle(tmp_path / "bundle.pem")


def test_no_terminal_means_no_prompt(tmp_path: Path) -> None:
    """CI: stdin is an open pipe that never delivers a line; the command must fail at once, not hang."""
    command = subprocess.Popen(
        [SCRIPT, "init", tmp_path / "ws"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin"},
    )
    try:
        code = command.wait(timeout=30)
    finally:
        command.kill()
        _, stderr = command.communicate()
    assert code == 1
    assert stderr.decode().splitlines() == [
        f"Error: no passphrase: use --passphrase-file or set {PASSPHRASE_ENV} (no terminal to ask)"
    ]
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("ca", ["root", "intermediate-1"])
def test_verification_cert(workspace: Path, tmp_path: Path, ca: str) -> None:
    out = tmp_path / "verify.pem"
    ok("verification-cert", workspace, "--code", "A1B2C3", "--ca", ca, "--out", out)
    assert files(tmp_path) == ["verify.cer", "verify.pem"]  # the throwaway key is not written
    pem, der = load_certificates(out)[0], load_certificates(tmp_path / "verify.cer")[0]
    assert pem == der
    assert pem.subject.rfc4514_string() == "CN=A1B2C3"
    pem.verify_directly_issued_by(load_certificates(workspace / f"{ca}.cert.pem")[0])


def test_issue_device_files_chain_and_pfx(workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (tmp_path / "pfx.txt").write_text("pfx secret\n")
    ok("issue-device", workspace, "dev-01", "--out", out, "--pfx-password-file", tmp_path / "pfx.txt")
    assert files(out) == ["dev-01.cert.pem", "dev-01.fullchain.pem", "dev-01.key.pem", "dev-01.pfx"]
    assert stat.S_IMODE((out / "dev-01.key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "dev-01.pfx").stat().st_mode) == 0o600
    key = load_private_key(
        (out / "dev-01.key.pem").read_bytes(), PASSPHRASE.encode(), "key"
    )  # workspace passphrase
    leaf = load_certificates(out / "dev-01.cert.pem")[0]
    assert leaf.public_key() == key.public_key()
    assert leaf.subject.rfc4514_string() == "CN=dev-01"
    first, second = (load_certificates(workspace / f"intermediate-{k}.cert.pem")[0] for k in (1, 2))
    root = load_certificates(workspace / "root.cert.pem")[0]
    assert load_certificates(out / "dev-01.fullchain.pem") == [leaf, second, first]  # never the root
    assert openssl_verify(tmp_path, leaf, [root], [second, first]).returncode == 0
    assert openssl_verify(tmp_path, leaf, [second], extra=["-partial_chain"]).returncode == 0
    pfx_key, pfx_cert, pfx_chain = pkcs12.load_key_and_certificates(
        (out / "dev-01.pfx").read_bytes(), b"pfx secret"
    )
    assert pfx_cert == leaf and pfx_chain == [second, first] and pfx_key.public_key() == key.public_key()
    openssl = subprocess.run(
        ["openssl", "pkcs12", "-in", out / "dev-01.pfx", "-passin", "pass:pfx secret", "-nokeys"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert openssl.stdout.count("BEGIN CERTIFICATE") == 3


def test_reissue_keeps_the_key_and_needs_force(workspace: Path, tmp_path: Path) -> None:
    ok("issue-device", workspace, "dev-02", "--out", tmp_path, "--ca", "intermediate-1", "--days", "10")
    key_pem = (tmp_path / "dev-02.key.pem").read_bytes()
    first = load_certificates(tmp_path / "dev-02.cert.pem")[0]
    assert first.issuer.rfc4514_string() == "CN=client_app Intermediate CA 1"
    assert load_certificates(tmp_path / "dev-02.fullchain.pem") == [
        first,
        load_certificates(workspace / "intermediate-1.cert.pem")[0],
    ]
    assert_one_line_error(run("issue-device", workspace, "dev-02", "--out", tmp_path), "use --force")
    assert load_certificates(tmp_path / "dev-02.cert.pem") == [first]
    ok("issue-device", workspace, "dev-02", "--out", tmp_path, "--force")
    renewed = load_certificates(tmp_path / "dev-02.cert.pem")[0]
    assert (tmp_path / "dev-02.key.pem").read_bytes() == key_pem
    assert renewed.serial_number != first.serial_number
    assert renewed.public_key() == first.public_key()


def test_issue_device_failing_on_a_later_file_writes_no_key(workspace: Path, tmp_path: Path) -> None:
    (tmp_path / "dev-03.fullchain.pem").mkdir()
    assert_one_line_error(
        run("issue-device", workspace, "dev-03", "--out", tmp_path, "--force"), "dev-03.fullchain.pem"
    )
    assert files(tmp_path) == ["dev-03.fullchain.pem"]


def test_issue_device_days_beyond_the_issuer_end_with_it(workspace: Path, tmp_path: Path) -> None:
    ok("issue-device", workspace, "dev-04", "--out", tmp_path, "--days", 10**12)
    leaf = load_certificates(tmp_path / "dev-04.cert.pem")[0]
    issuer = load_certificates(workspace / "intermediate-2.cert.pem")[0]
    assert leaf.not_valid_after_utc == issuer.not_valid_after_utc


def test_issue_device_in_a_no_passphrase_workspace(tmp_path: Path) -> None:
    ok("init", tmp_path / "ws", "--no-passphrase", passphrase=None)
    ok(
        "issue-device",
        tmp_path / "ws",
        "dev",
        "--out",
        tmp_path / "out",
        "--key-type",
        "rsa-2048",
        passphrase=None,
    )
    key = load_private_key((tmp_path / "out" / "dev.key.pem").read_bytes(), None, "key")
    assert key.key_size == 2048


def test_issuer_bundle_round_trip(workspace: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "issuer-bundle.pem"
    ok("issuer-bundle", workspace, "--out", bundle)
    ca = load_issuer_bundle(bundle)
    root = load_certificates(workspace / "root.cert.pem")[0]
    assert ca.certificate == load_certificates(workspace / "intermediate-2.cert.pem")[0]
    assert ca.chain[-1] == root and len(ca.chain) == 2
    leaf = ca.issue_device("from-bundle", generate_key().public_key())
    assert openssl_verify(tmp_path, leaf, [root], [ca.certificate, *ca.chain[:-1]]).returncode == 0
    (tmp_path / "bp.txt").write_text("bundle pass\n")
    other = tmp_path / "other.pem"
    ok("issuer-bundle", workspace, "--out", other, "--bundle-passphrase-file", tmp_path / "bp.txt")
    assert load_issuer_bundle(other, b"bundle pass").certificate == ca.certificate
    assert_one_line_error(
        run("issuer-bundle", workspace, "--out", tmp_path / "r.pem", "--ca", "root"), "root CA"
    )
    assert_one_line_error(
        run("issuer-bundle", workspace, "--out", tmp_path / "r.pem", "--ca", "intermediate-1"),
        "pathLenConstraint is 1",
    )
    assert_one_line_error(run("issuer-bundle", workspace, "--out", bundle), "already exists")
    assert not (tmp_path / "r.pem").exists()


def test_show(workspace: Path, tmp_path: Path) -> None:
    root = load_certificates(workspace / "root.cert.pem")[0]
    (tmp_path / "root.cer").write_bytes(root.public_bytes(Encoding.DER))
    for source in (workspace / "root.cert.pem", tmp_path / "root.cer"):
        text = ok("show", source).stdout
        for expected in (
            "subject:     CN=client_app Root CA",
            "EC secp384r1",
            "basicConstraints (critical): CA:TRUE",
            "keyCertSign",
            "SHA-1:",
            "SHA-256:",
        ):
            assert expected in text
    ok("issuer-bundle", workspace, "--out", tmp_path / "b.pem")
    text = ok("show", tmp_path / "b.pem").stdout
    assert "[certificate 3 of 3]" in text and "pathlen:0" in text
    assert "private key: present (encrypted PKCS#8)" in text


def test_show_a_malformed_certificate_is_one_line(tmp_path: Path) -> None:
    """cryptography parses extensions lazily: loading succeeds, reading the key usage fails."""
    key = generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bad")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.UnrecognizedExtension(ExtensionOID.KEY_USAGE, b"\x05\x00"), critical=True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "bad.pem").write_bytes(certificate_to_pem(cert))
    assert_one_line_error(run("show", tmp_path / "bad.pem"), "malformed certificate")


def test_verify(workspace: Path, tmp_path: Path) -> None:
    ok("issue-device", workspace, "dev", "--out", tmp_path)
    root = workspace / "root.cert.pem"
    assert ok("verify", tmp_path / "dev.fullchain.pem", "--root", root).stdout == "OK\n"
    chain = tmp_path / "chain.pem"
    chain.write_bytes(
        (workspace / "intermediate-2.cert.pem").read_bytes()
        + (workspace / "intermediate-1.cert.pem").read_bytes()
    )
    assert ok("verify", tmp_path / "dev.cert.pem", "--root", root, "--chain", chain).stdout == "OK\n"
    assert_one_line_error(run("verify", tmp_path / "dev.cert.pem", "--root", root), "verification failed")


def _expired_workspace(directory: Path) -> Path:
    ok("init", directory, "--no-passphrase", passphrase=None)
    workspace = Workspace(directory)
    expired = hand_made_ca(
        workspace.load_ca("root", None),
        "Expired CA",
        path_length=0,
        not_after=datetime.now(UTC) - timedelta(days=1),
    )
    workspace.cert_path("intermediate-1").write_bytes(certificate_to_pem(expired.certificate))
    workspace.key_path("intermediate-1").write_bytes(private_key_to_pem(expired.key, None))
    return directory


def _issue(workspace: Path, tmp_path: Path, *extra: object) -> list[object]:
    return ["issue-device", workspace, "dev", "--out", tmp_path / "out", *extra]


# case -> (arguments from (workspace, tmp_path), passphrase in the environment, expected error fragment)
BAD_INPUT = {
    "invalid registration id": (
        lambda ws, tmp: ["issue-device", ws, "bad/id", "--out", tmp / "out"],
        PASSPHRASE,
        "invalid registration id 'bad/id'",
    ),
    "wrong passphrase": (_issue, "not it", "wrong passphrase"),
    "missing workspace": (lambda ws, tmp: _issue(tmp / "nowhere", tmp), PASSPHRASE, "no CA workspace here"),
    "unknown CA": (lambda ws, tmp: _issue(ws, tmp, "--ca", "intermediate-9"), PASSPHRASE, "unknown CA"),
    "expired issuer": (
        lambda ws, tmp: _issue(_expired_workspace(tmp / "old"), tmp),
        None,
        "is not valid now",
    ),
    "unreadable passphrase file": (
        lambda ws, tmp: _issue(ws, tmp, "--passphrase-file", tmp / "absent"),
        None,
        "cannot read",
    ),
    "unreadable pfx password file": (
        lambda ws, tmp: _issue(ws, tmp, "--pfx-password-file", tmp / "absent"),
        PASSPHRASE,
        "cannot read",
    ),
    "unreadable certificate": (lambda ws, tmp: ["show", tmp / "absent.pem"], None, "cannot read"),
    "not a certificate": (
        lambda ws, tmp: ["verify", tmp / "junk.pem", "--root", ws / "root.cert.pem"],
        None,
        "not a readable PEM or DER certificate",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_line_and_writes_nothing(workspace: Path, tmp_path: Path, case: str) -> None:
    make_args, passphrase, fragment = BAD_INPUT[case]
    (tmp_path / "junk.pem").write_text("hello\n")
    assert_one_line_error(run(*make_args(workspace, tmp_path), passphrase=passphrase), fragment)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "nowhere").exists()


def test_installed_entry_point(tmp_path: Path) -> None:
    """The console script declared in pyproject runs end to end."""
    env = {"PATH": "/usr/bin:/bin", PASSPHRASE_ENV: "s3cret"}

    def cli(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, env=env, check=False)

    assert cli("init", tmp_path / "ws").returncode == 0
    assert cli("issue-device", tmp_path / "ws", "dev-1", "--out", tmp_path / "out").returncode == 0
    done = cli(
        "verify", tmp_path / "out" / "dev-1.fullchain.pem", "--root", tmp_path / "ws" / "root.cert.pem"
    )
    assert (done.returncode, done.stdout) == (0, "OK\n")
    failed = cli("issue-device", tmp_path / "ws", "Bad Id", "--out", tmp_path / "out")
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr
