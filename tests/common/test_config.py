"""Settings: defaults run the simulator; TOML, environment and flags layer; bad values fail
at start with a message that names the setting and where the value came from."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import fleet_command

from common.config import SIM_DEMO_KEY, describe, load_settings
from common.errors import ConfigError


def test_defaults_run_the_embedded_simulator() -> None:
    s = load_settings(env={})
    assert s.simulated
    assert s.api_key == SIM_DEMO_KEY
    assert s.base_url == "http://127.0.0.1:8787"
    assert s.broker.address == "tcp://127.0.0.1:5555"


def test_a_key_switches_to_the_real_api() -> None:
    s = load_settings(env={"KEEPA_API_KEY": "k" * 64})
    assert not s.simulated
    assert s.base_url == "https://api.keepa.com"
    assert "k" * 64 not in repr(s)


def test_layers_toml_env_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "fleet.toml"
    cfg.write_text('[broker]\nheartbeat_s = 2.5\nliveness = 7\n[worker]\ndb = "a.db"\n')
    s = load_settings(
        cfg,
        env={"FLEET_BROKER_LIVENESS": "9", "FLEET_DB": "b.db"},
        overrides={"broker.address": "tcp://127.0.0.1:7000"},
    )
    assert s.broker.heartbeat_s == 2.5
    assert s.broker.liveness == 9
    assert s.worker.db == "b.db"
    assert s.broker.address == "tcp://127.0.0.1:7000"
    assert s.source == str(cfg)


def test_fleet_config_env_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "x.toml"
    cfg.write_text("[filters]\nmax_offers = 3\n")
    assert load_settings(env={"FLEET_CONFIG": str(cfg)}).filters.max_offers == 3


@pytest.mark.parametrize(
    ("text", "env", "names"),
    [
        ("[broker]\nheartbeat_s = 'fast'\n", {}, "broker.heartbeat_s"),
        ("[broker]\nliveness = 1\n", {}, "broker.liveness"),
        ("[broker]\nbogus = 1\n", {}, "broker.bogus"),
        ("[nosuch]\nx = 1\n", {}, "nosuch"),
        ("", {"FLEET_WORKER_ROLE": "boss"}, "worker.role"),
        ("", {"FLEET_BROKER": "localhost:5555"}, "broker.address"),
        ("", {"KEEPA_BASE_URL": "ftp://x"}, "keepa.base_url"),
        ("", {"KEEPA_REFILL_PERIOD_S": "0"}, "keepa.refill_period_s"),
        ("", {"FLEET_WORKER_INGEST_BATCH": "2.5"}, "worker.ingest_batch"),
        ("", {"FLEET_BROKER_HEARTBEAT_S": "nan"}, "broker.heartbeat_s"),
        ("[broker]\nlease_ttl_s = 10\n", {}, "broker.lease_ttl_s"),
        ("[worker\n", {}, "--config"),
    ],
)
def test_bad_values_name_the_setting(
    tmp_path: Path, text: str, env: dict[str, str], names: str
) -> None:
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env=env)
    assert str(info.value).startswith(names)


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings("/nonexistent/fleet.toml", env={})


def test_secret_value_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"KEEPA_API_KEY": "x"}, overrides={"keepa.domain": 99})
    assert "x" not in str(info.value).replace("maximum", "")


def test_describe_lists_every_setting_with_env() -> None:
    rows = describe()
    names = {r[0] for r in rows}
    assert {"keepa.api_key", "broker.address", "worker.db", "filters.max_offers"} <= names
    assert rows[0][:3] == ("keepa.api_key", "''", "KEEPA_API_KEY")


def test_cli_exits_78_naming_the_setting(tmp_path: Path) -> None:
    import subprocess

    cfg = tmp_path / "fleet.toml"
    cfg.write_text("[broker]\nliveness = 0\n")
    proc = subprocess.run(
        fleet_command("--config", str(cfg), "status", "--json"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 78, proc.stderr
    assert "broker.liveness" in proc.stderr
