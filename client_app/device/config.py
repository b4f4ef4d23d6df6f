"""Configuration: command line > environment (CLIENT_APP_*) > config.toml > defaults."""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from client_app.device import paths

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
    path = Path(directory) / "connection.json"
    if not Path(directory).is_dir():
        raise ConfigError(f"no local cloud found: {directory} is not a directory")
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        # A stopped local cloud removes its connection.json; the runtime re-reads it on every attempt.
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
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


def _locations(args: argparse.Namespace | None, environ: Mapping[str, str]) -> tuple[Path | None, Path, Path]:
    """(data dir or None for the platform default, log dir, config dir): they decide where config.toml is."""
    env = {k: environ.get(ENV_PREFIX + k.upper()) for k in _LOCATION_OPTIONS}
    cli = {k: getattr(args, k, None) for k in _LOCATION_OPTIONS} if args else {}
    locations = {**_layer(env, "environment"), **{k: v for k, v in cli.items() if v}}
    data_dir = Path(locations["data_dir"]).expanduser() if "data_dir" in locations else None
    config_dir = data_dir / "config" if data_dir else paths.default_config_dir()
    log_dir = (
        Path(locations["log_dir"])
        if "log_dir" in locations
        else (data_dir / "logs" if data_dir else paths.default_log_dir())
    )
    return data_dir, log_dir, config_dir


def log_dir_of(args: argparse.Namespace | None, environ: Mapping[str, str]) -> Path:
    """Where the log goes, known before the rest of the configuration is read (so its errors are logged)."""
    return _locations(args, environ)[1]


def load_config(args: argparse.Namespace | None, environ: Mapping[str, str]) -> DeviceConfig:
    cli = {k: v for k, v in vars(args).items() if k in _OPTIONS} if args else {}
    env = {name: environ.get(ENV_PREFIX + name.upper()) for name in _OPTIONS}
    env["server_ca_pem"] = env["server_ca_pem"] or environ.get(ENV_PREFIX + "SERVER_CA")
    data_dir, log_dir, config_dir = _locations(args, environ)
    config_file = Path(
        getattr(args, "config_file", None)
        or environ.get(ENV_PREFIX + "CONFIG")
        or config_dir / CONFIG_FILE_NAME
    )
    merged: dict[str, Any] = {}
    merged.update(_layer(_read_toml(config_file), str(config_file)))
    merged.update(_layer(env, "environment"))
    merged.update(_layer(cli, "command line"))
    typed = _typed(merged)
    config = DeviceConfig(
        **typed, data_dir=data_dir or paths.default_data_dir(), log_dir=log_dir, config_dir=config_dir
    )
    if not 0 < config.renew_fraction < 1:
        raise ConfigError("renew_fraction must be between 0 and 1")
    if config.leaf_days < 1 or config.backoff_cap <= 0 or not 5 <= config.keep_alive <= 1740:
        raise ConfigError("leaf_days must be ≥ 1, backoff_cap > 0 and keep_alive within 5..1740")
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc}") from exc
