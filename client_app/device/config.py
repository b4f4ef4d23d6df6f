"""Configuration: command line > demo > environment (CLIENT_APP_*) > config.toml > defaults.

ConfigStore is the one owner: it reads and merges the layers, validates, and saves the user's settings
to the file it read (config.toml, or the --config FILE), then merges again with the same precedence.
A proxy password never goes to the file: it is kept in the OS keyring, like the device key.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from client_app.cloud.info import CONNECTION_FILE, read_connection_json
from client_app.device import paths
from client_app.hosts import is_ip_address

log = logging.getLogger(__name__)

DEFAULT_PROVISIONING_HOST = "global.azure-devices-provisioning.net"
CONFIG_FILE_NAME = "config.toml"
ENV_PREFIX = "CLIENT_APP_"


class ConfigError(Exception):
    """A configuration problem explained in one line."""


@dataclass(frozen=True)
class ProxySetting:
    scheme: str  # "http" | "socks5" | "socks4"
    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> ProxySetting:
        parts = urlsplit(url.strip())
        scheme = {
            "http": "http",
            "socks": "socks5",
            "socks5": "socks5",
            "socks5h": "socks5",
            "socks4": "socks4",
        }.get(parts.scheme.lower())
        try:
            port = parts.port
        except ValueError:
            port = None
        if scheme is None or not parts.hostname or port is None:
            shown = url.strip().rpartition("@")[2] if "@" in parts.netloc else url  # never echo credentials
            raise ConfigError(f"proxy must look like http://host:port or socks5://host:port, got {shown!r}")
        return cls(
            scheme,
            parts.hostname,
            port,
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None,
        )

    def __str__(self) -> str:  # never shows the password
        return f"{self.scheme}://{self.host}:{self.port}"

    def to_sdk(self) -> Any:
        from azure.iot.device import ProxyOptions

        return ProxyOptions(self.scheme.upper(), self.host, self.port, self.username, self.password)


@dataclass(frozen=True)
class DeviceConfig:
    provisioning_host: str = DEFAULT_PROVISIONING_HOST
    id_scope: str = ""
    server_ca_pem: Path | None = None
    proxy: ProxySetting | None = None
    issuer_bundle: Path | None = None  # None: resources/issuer-bundle.pem of the installed app
    data_dir: Path = field(default_factory=paths.default_data_dir)
    log_dir: Path = field(default_factory=paths.default_log_dir)
    config_dir: Path = field(default_factory=paths.default_config_dir)
    local_cloud: Path | None = None  # a local cloud's --data dir; re-read on every (re)connect
    renew_fraction: float = 0.8  # renew the leaf once this share of its life has passed
    leaf_days: int = 365
    backoff_cap: float = 300.0  # seconds; longest wait between retries
    keep_alive: int = 60
    # The desktop app's own settings (the device core ignores them).
    do_not_disturb: bool = False  # no "new message" notifications
    start_at_login: bool = False  # off by default: the user opts in

    @property
    def issuer_bundle_path(self) -> Path:
        return self.issuer_bundle or paths.default_issuer_bundle()

    @property
    def layout(self) -> paths.DataLayout:
        return paths.DataLayout(self.data_dir)

    def server_ca_text(self) -> str | None:
        if self.server_ca_pem is None:
            return None
        try:
            return self.server_ca_pem.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the server CA file {self.server_ca_pem}: {exc.strerror}") from exc

    def refreshed(self) -> DeviceConfig:
        """Re-read the local cloud's connection.json: a restarted local cloud may listen on new ports."""
        if self.local_cloud is None:
            return self
        return dataclasses.replace(self, **_typed(read_local_cloud(self.local_cloud)))


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a yes/no value: {text!r}")


# name -> (type converter, help); the same names serve TOML keys, CLIENT_APP_<NAME> and --<name>.
_OPTIONS: dict[str, tuple[Any, str]] = {
    "provisioning_host": (str, f"DPS host name (default {DEFAULT_PROVISIONING_HOST})"),
    "id_scope": (str, "DPS ID scope"),
    "proxy": (ProxySetting.parse, "proxy for DPS and IoT Hub: http://host:port or socks5://host:port"),
    "server_ca_pem": (Path, "PEM file of the CA that signs the server certificates (local cloud)"),
    "issuer_bundle": (Path, "issuer bundle used to issue this device's certificate"),
    "local_cloud": (Path, "a local cloud's data directory (reads its connection.json)"),
    "renew_fraction": (float, "renew the device certificate after this share of its life (default 0.8)"),
    "leaf_days": (int, "validity of the device certificate in days (default 365)"),
    "backoff_cap": (float, "longest wait between retries in seconds (default 300)"),
    "keep_alive": (int, "MQTT keep-alive in seconds (default 60)"),
    "do_not_disturb": (parse_bool, "no notifications for new messages: true/false (default false)"),
    "start_at_login": (parse_bool, "start the app when you log in: true/false (default false)"),
}
_CLI_ALIASES = {"server_ca_pem": "--server-ca"}
_LOCATION_OPTIONS = ("data_dir", "log_dir")  # command line / environment only


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection and identity")
    for name, (_, help_text) in _OPTIONS.items():
        flag = _CLI_ALIASES.get(name, "--" + name.replace("_", "-"))
        group.add_argument(flag, dest=name, default=None, metavar=name.split("_")[-1].upper(), help=help_text)
    group.add_argument(
        "--data-dir",
        dest="data_dir",
        default=None,
        metavar="DIR",
        help="keep all app data (state, messages, logs, config.toml) under DIR",
    )
    group.add_argument("--log-dir", dest="log_dir", default=None, metavar="DIR", help="log directory")
    group.add_argument(
        "--config",
        dest="config_file",
        default=None,
        metavar="FILE",
        help="configuration file (default: config.toml in the user config directory)",
    )


def read_local_cloud(directory: Path) -> dict[str, Any]:
    """Map a local cloud's connection.json onto config fields (raw strings, converted later)."""
    if not Path(directory).is_dir():
        raise ConfigError(f"no local cloud found: {directory} is not a directory")
    try:
        info = read_connection_json(directory)
    except FileNotFoundError:
        # A stopped local cloud removes its connection.json; the runtime re-reads it on every attempt.
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {Path(directory) / CONNECTION_FILE}: {exc}") from exc
    values: dict[str, Any] = {}
    for key in ("id_scope", "provisioning_host"):
        if info.get(key):
            values[key] = str(info[key])
    if info.get("server_ca_pem"):
        ca = Path(info["server_ca_pem"])
        values["server_ca_pem"] = str(ca if ca.is_absolute() else Path(directory) / ca)
    if info.get("proxy_host") and info.get("proxy_port"):
        values["proxy"] = f"http://{info['proxy_host']}:{int(info['proxy_port'])}"
    return values


def _layer(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """One precedence layer; a local cloud expands in place, explicit values of the same layer win."""
    out = {k: v for k, v in values.items() if v is not None and v != ""}
    if "local_cloud" in out:
        out = {**read_local_cloud(Path(out["local_cloud"])), **out}
    unknown = set(out) - set(_OPTIONS) - set(_LOCATION_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown setting(s) in {where}: {', '.join(sorted(unknown))}")
    return out


def _typed(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in values.items():
        convert = _OPTIONS[name][0] if name in _OPTIONS else Path
        if isinstance(raw, ProxySetting | Path):
            out[name] = raw
            continue
        numeric = isinstance(raw, int | float) and convert in (int, float)
        try:
            out[name] = convert(raw if numeric else str(raw))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid value for {name}: {raw!r}") from exc
    return out


def _locations(
    args: argparse.Namespace | None, environ: Mapping[str, str], layer: Mapping[str, Any] | None = None
) -> tuple[Path | None, Path, Path]:
    """(data dir or None for the platform default, log dir, config dir): they decide where config.toml is."""
    env = {k: environ.get(ENV_PREFIX + k.upper()) for k in _LOCATION_OPTIONS}
    cli = {k: getattr(args, k, None) for k in _LOCATION_OPTIONS} if args else {}
    demo = {k: v for k, v in (layer or {}).items() if k in _LOCATION_OPTIONS and v}
    locations = {**_layer(env, "environment"), **demo, **{k: v for k, v in cli.items() if v}}
    data_dir = Path(locations["data_dir"]).expanduser() if "data_dir" in locations else None
    config_dir = data_dir / "config" if data_dir else paths.default_config_dir()
    log_dir = (
        Path(locations["log_dir"])
        if "log_dir" in locations
        else (data_dir / "logs" if data_dir else paths.default_log_dir())
    )
    return data_dir, log_dir, config_dir


def log_dir_of(
    args: argparse.Namespace | None, environ: Mapping[str, str], layer: Mapping[str, Any] | None = None
) -> Path:
    """Where the log goes, known before the rest of the configuration is read (so its errors are logged)."""
    return _locations(args, environ, layer)[1]


def load_config(
    args: argparse.Namespace | None, environ: Mapping[str, str], layer: Mapping[str, Any] | None = None
) -> DeviceConfig:
    return ConfigStore(args, environ, layer).load()


# The settings a person edits in the app (the Settings dialog); the rest are for installers and support.
USER_SETTINGS = ("provisioning_host", "id_scope", "proxy", "do_not_disturb", "start_at_login")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_ID_SCOPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{2,63}$")


def clean_host(text: str) -> str:
    """What people paste: 'https://dps.example.com/' or 'dps.example.com:443' -> 'dps.example.com'."""
    host = text.strip()
    if "://" in host:
        host = urlsplit(host).hostname or ""
    else:
        host = host.split("/", 1)[0]
        if host.count(":") == 1:  # host:port (an IPv6 address has more colons)
            host = host.partition(":")[0]
    return host.strip().rstrip(".")


def validate_settings(values: Mapping[str, str]) -> dict[str, str]:  # the text settings
    """Setting name -> problem in plain words, for the values a person typed; empty when all is fine."""
    problems: dict[str, str] = {}
    if "provisioning_host" in values:
        host = clean_host(values["provisioning_host"])
        if not host:
            problems["provisioning_host"] = (
                "Enter the provisioning endpoint, e.g. global.azure-devices-provisioning.net."
            )
        elif not ((_HOST.match(host) and len(host) <= 253) or is_ip_address(host)):
            problems["provisioning_host"] = (
                "The provisioning endpoint must be a host name such as dps.example.com."
            )
    if "id_scope" in values:
        scope = values["id_scope"].strip()
        if not scope:
            problems["id_scope"] = "Enter the ID scope of your provisioning service (e.g. 0ne00ABC123)."
        elif not _ID_SCOPE.match(scope):
            problems["id_scope"] = "The ID scope is letters and digits only, like 0ne00ABC123."
    proxy = values.get("proxy", "").strip()
    if proxy:
        try:
            ProxySetting.parse(proxy)
        except ConfigError:
            problems["proxy"] = (
                "Write the proxy as http://host:port or socks5://host:port (or leave it empty)."
            )
    return problems


def proxy_text(proxy: ProxySetting | None, *, with_password: bool = True) -> str:
    """The proxy as a URL a person can edit (the password included only where asked)."""
    if proxy is None:
        return ""
    if not proxy.username:
        return str(proxy)
    secret = f":{quote(proxy.password, safe='')}" if proxy.password and with_password else ""
    return f"{proxy.scheme}://{quote(proxy.username, safe='')}{secret}@{proxy.host}:{proxy.port}"


class ConfigStore:
    """Loads, validates and saves the configuration; the only place that reads or writes config.toml.

    `layer` is what `--demo` contributes (its data dir, local cloud and issuer bundle): above the
    environment, below the command line."""

    def __init__(
        self,
        args: argparse.Namespace | None,
        environ: Mapping[str, str],
        layer: Mapping[str, Any] | None = None,
        *,
        keyring: bool = True,
    ) -> None:
        # keyring=False: the window's process, which never opens the keyring; its device-core process fills
        # in a proxy password (with_proxy_password) before it connects.
        self._keyring = keyring
        # Where a proxy password from save() goes; the window's process routes it to its core's process.
        self.keep_proxy_password: Callable[[ProxySetting], None] = store_proxy_password
        self._cli = {k: v for k, v in vars(args).items() if k in _OPTIONS} if args else {}
        env = {name: environ.get(ENV_PREFIX + name.upper()) for name in _OPTIONS}
        env["server_ca_pem"] = env["server_ca_pem"] or environ.get(ENV_PREFIX + "SERVER_CA")
        self._env = env
        self._demo = {k: v for k, v in (layer or {}).items() if k in _OPTIONS}
        self._data_dir, self._log_dir, self._config_dir = _locations(args, environ, layer)
        self.path = Path(
            getattr(args, "config_file", None)
            or environ.get(ENV_PREFIX + "CONFIG")
            or self._config_dir / CONFIG_FILE_NAME
        )

    def load(self) -> DeviceConfig:
        merged: dict[str, Any] = {}
        for values, where in self._layers():
            merged.update(_layer(values, where))
        config = DeviceConfig(
            **_typed(merged),
            data_dir=self._data_dir or paths.default_data_dir(),
            log_dir=self._log_dir,
            config_dir=self._config_dir,
        )
        if not 0 < config.renew_fraction < 1:
            raise ConfigError("renew_fraction must be between 0 and 1")
        if config.leaf_days < 1 or config.backoff_cap <= 0 or not 5 <= config.keep_alive <= 1740:
            raise ConfigError("leaf_days must be ≥ 1, backoff_cap > 0 and keep_alive within 5..1740")
        return config

    def _layers(self) -> list[tuple[Mapping[str, Any], str]]:
        return [
            (self._file_values(), str(self.path)),
            (self._env, "environment"),
            (self._demo, "demo"),
            (self._cli, "command line"),
        ]

    def _file_values(self) -> dict[str, Any]:
        values = _read_toml(self.path)
        proxy = values.get("proxy")
        if isinstance(proxy, str) and proxy.strip():
            parsed = _try_proxy(proxy)
            if self._keyring and parsed is not None and parsed.username and not parsed.password:
                password = _proxy_password(parsed)
                if password:
                    values["proxy"] = dataclasses.replace(parsed, password=password)
        return values

    def owned_elsewhere(self) -> dict[str, str]:
        """User settings whose value comes from above the file -> where from (the dialog shows them
        read-only; saving them would change nothing)."""
        owners: dict[str, str] = {}
        for values, where in self._layers()[1:]:
            present = _layer(values, where)
            for name in USER_SETTINGS:
                if name in present:
                    owners[name] = "the local cloud" if "local_cloud" in present else f"the {where}"
        return owners

    def save(self, values: Mapping[str, str | bool]) -> DeviceConfig:
        """Validate, write the user settings to the file this store read, and load again (same precedence).

        Settings owned by a higher layer are left as they are in the file. Raises ConfigError with the
        problems in plain words, or OSError when the file cannot be written."""
        owned = self.owned_elsewhere()
        editable = {k: v for k, v in values.items() if k in USER_SETTINGS and k not in owned}
        problems = validate_settings({k: v for k, v in editable.items() if isinstance(v, str)})
        if problems:
            raise ConfigError(" ".join(problems.values()))
        try:
            existing = _read_toml(self.path)
        except ConfigError:
            existing = {}  # unreadable: rewritten with what the user just entered
        for name, raw in editable.items():
            if isinstance(raw, bool):
                existing[name] = raw
                continue
            value = clean_host(raw) if name == "provisioning_host" else raw.strip()
            if name == "proxy" and value:
                proxy = ProxySetting.parse(value)
                if proxy.password:
                    self.keep_proxy_password(proxy)
                value = proxy_text(proxy, with_password=False)
            if value:
                existing[name] = value
            else:
                existing.pop(name, None)
        write_private(self.path, dump_toml(existing).encode())
        return self.load()


def _try_proxy(text: str) -> ProxySetting | None:
    try:
        return ProxySetting.parse(text)
    except ConfigError:
        return None


def _proxy_key(proxy: ProxySetting) -> str:
    return proxy_text(proxy, with_password=False)


def _proxy_password(proxy: ProxySetting) -> str | None:
    from client_app.device import secrets

    try:
        return secrets.load_secret(secrets.proxy_entry(_proxy_key(proxy)))
    except secrets.KeyringUnavailable as exc:
        # The app still starts; the proxy then refuses it, which the status shows and the log explains.
        log.warning("the proxy password is in the system keyring, which is not available: %s", exc)
        return None


def with_proxy_password(config: DeviceConfig) -> DeviceConfig:
    """`config` with its proxy's password from the keyring, if read without it (ConfigStore keyring=False)."""
    proxy = config.proxy
    if proxy is None or not proxy.username or proxy.password:
        return config
    password = _proxy_password(proxy)
    return (
        dataclasses.replace(config, proxy=dataclasses.replace(proxy, password=password))
        if password
        else config
    )


def store_proxy_password(proxy: ProxySetting) -> None:
    from client_app.device import secrets

    try:
        secrets.store_secret(secrets.proxy_entry(_proxy_key(proxy)), proxy.password or "")
    except secrets.KeyringUnavailable as exc:
        # No silent fallback to the plain file: the user is told and nothing is written.
        raise ConfigError(f"the proxy password could not be kept in the system keyring: {exc}") from exc


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # A JSON string is a valid TOML basic string (same escapes, \uXXXX included).
    return json.dumps(str(value), ensure_ascii=False)


def dump_toml(values: Mapping[str, Any]) -> str:
    """Enough TOML for a flat settings file plus one level of tables."""
    lines = ["# client-app settings (edited by the app's Settings dialog)"]
    tables = {k: v for k, v in values.items() if isinstance(v, dict)}
    lines += [f"{key} = {_toml_value(value)}" for key, value in values.items() if key not in tables]
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def write_private(path: Path, data: bytes) -> None:
    """Atomic write readable by this user only (0600 in a 0700 directory), with the app's one helper."""
    from client_app.pki import atomic_write  # cryptography: not on the way to the window

    paths.private_dir(path.parent)
    atomic_write(path, data, 0o600)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return {}  # the usual case: nothing saved yet, and no TOML parser to import on the way to the window
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc}") from exc
    import tomllib

    try:
        with handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc}") from exc
