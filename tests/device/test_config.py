import argparse
import json

import pytest

from client_app.device.config import (
    DEFAULT_PROVISIONING_HOST,
    ConfigError,
    ProxySetting,
    add_config_arguments,
    load_config,
)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_follow_platformdirs(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(var, raising=False)
    config = load_config(None, {})
    assert config.provisioning_host == DEFAULT_PROVISIONING_HOST
    assert config.data_dir.is_relative_to(tmp_path)
    assert config.config_dir.is_relative_to(tmp_path)
    assert config.issuer_bundle_path.name == "issuer-bundle.pem"
    assert config.issuer_bundle_path.parent.name == "resources"


def test_precedence_cli_over_env_over_file(tmp_path):
    data = tmp_path / "d"
    (data / "config").mkdir(parents=True)
    (data / "config" / "config.toml").write_text(
        'id_scope = "from-file"\nprovisioning_host = "file.example"\nproxy = "socks5://127.0.0.1:1080"\n'
        "leaf_days = 30\n"
    )
    env = {"CLIENT_APP_ID_SCOPE": "from-env", "CLIENT_APP_PROVISIONING_HOST": "env.example"}
    config = load_config(_args("--data-dir", str(data), "--id-scope", "from-cli"), env)
    assert config.id_scope == "from-cli"
    assert config.provisioning_host == "env.example"
    assert config.proxy == ProxySetting("socks5", "127.0.0.1", 1080)
    assert config.leaf_days == 30
    assert config.data_dir == data and config.log_dir == data / "logs"


def test_local_cloud_connection_json(tmp_path):
    cloud = tmp_path / "cloud"
    cloud.mkdir()
    (cloud / "connection.json").write_text(
        json.dumps(
            {
                "id_scope": "0ne00LOCAL",
                "provisioning_host": "dps.client-app.localhost",
                "hub_hostname": "hub",
                "server_ca_pem": str(cloud / "ca.pem"),
                "mqtt_host": None,
                "mqtt_port": None,
                "proxy_host": "127.0.0.1",
                "proxy_port": 41234,
                "api_url": "http://x",
                "api_token": "t",
            }
        )
    )
    config = load_config(_args("--local-cloud", str(cloud), "--data-dir", str(tmp_path / "d")), {})
    assert (config.id_scope, config.provisioning_host) == ("0ne00LOCAL", "dps.client-app.localhost")
    assert config.server_ca_pem == cloud / "ca.pem"
    assert str(config.proxy) == "http://127.0.0.1:41234"
    # A restarted local cloud may listen elsewhere: refreshed() re-reads it.
    info = json.loads((cloud / "connection.json").read_text())
    (cloud / "connection.json").write_text(json.dumps({**info, "proxy_port": 40000}))
    assert config.refreshed().proxy == ProxySetting("http", "127.0.0.1", 40000)


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--proxy", "ftp://x:1"], {}, "proxy"),
        (["--local-cloud", "/nonexistent/cloud"], {}, "no local cloud"),
        ([], {"CLIENT_APP_LEAF_DAYS": "many"}, "leaf_days"),
        (["--renew-fraction", "1.5"], {}, "renew_fraction"),
    ],
)
def test_bad_configuration_is_one_clear_line(tmp_path, argv, env, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        load_config(_args(*argv, "--data-dir", str(tmp_path)), env)
    assert "\n" not in str(info.value)


def test_unknown_key_in_file_is_reported(tmp_path):
    file = tmp_path / "c.toml"
    file.write_text('idscope = "typo"\n')
    with pytest.raises(ConfigError, match="idscope"):
        load_config(_args("--config", str(file), "--data-dir", str(tmp_path)), {})


def test_proxy_password_never_printed():
    proxy = ProxySetting.parse("http://user:s3cret@127.0.0.1:3128")
    assert proxy.password == "s3cret"
    assert "s3cret" not in str(proxy) and "s3cret" not in repr(proxy)
    with pytest.raises(ConfigError, match="proxy must look like") as info:
        ProxySetting.parse("http://user:s3cret@127.0.0.1")  # no port
    assert "s3cret" not in str(info.value) and "127.0.0.1" in str(info.value)
