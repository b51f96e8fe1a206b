"""router.config: YAML + ROUTER_* overrides, durations, operator-facing error messages."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from router.config import (
    ConfigError,
    RouterConfig,
    apply_env_overrides,
    association_shortfalls,
    load_config,
    parse_duration,
)

MINIMAL_DEST = "ae_title: PACS\n    host: 10.0.0.1\n    port: 104\n"


def write_config(tmp_path: Path, text: str, name: str = "router.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> RouterConfig:
    return load_config(write_config(tmp_path, text), environ=environ or {})


def config_error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ or {})
    return str(info.value)


# --- parse_duration ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2s", 2.0),
        ("10m", 600.0),
        ("1.5h", 5400.0),
        ("500ms", 0.5),
        ("1d", 86400.0),
        ("30", 30.0),
        (" 3 s ", 3.0),
        (45, 45.0),
        (2.5, 2.5),
        ("0", 0.0),
    ],
)
def test_parse_duration_units(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad", ["", "abc", "10x", "s", "-5s", "1.2.3s", "5 minutes", True, False, None, [1], {}]
)
def test_parse_duration_refuses_bad_values(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", [-5, -0.5, math.inf, math.nan])
def test_parse_duration_refuses_negative_and_non_finite_numbers(bad: float) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@given(st.integers(min_value=0, max_value=10**9))
def test_parse_duration_seconds_suffix_is_identity(n: int) -> None:
    assert parse_duration(f"{n}s") == n
    assert parse_duration(str(n)) == n


@given(st.integers(min_value=0, max_value=10**6))
def test_parse_duration_units_scale_consistently(n: int) -> None:
    assert parse_duration(f"{n}m") == 60 * parse_duration(f"{n}s")
    assert parse_duration(f"{n}h") == 60 * parse_duration(f"{n}m")
    assert parse_duration(f"{n}ms") == pytest.approx(parse_duration(f"{n}s") / 1000)


# --- loading --------------------------------------------------------------------------
def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    assert cfg.ae_title == "ROUTER"
    assert cfg.listen.port == 11112
    assert cfg.listen.host == "0.0.0.0"
    assert cfg.destinations == {}
    assert cfg.source == (tmp_path / "router.yaml").resolve()


def test_values_from_file_and_durations_in_destinations(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        "ae_title: EDGE\n"
        "listen: {host: 127.0.0.1, port: 4000}\n"
        "destinations:\n"
        "  pacs:\n"
        "    ae_title: PACS\n"
        "    host: 10.0.0.1\n"
        "    port: 104\n"
        "    timeout: 1m\n"
        "    retry: {max_attempts: 3, initial_delay: 500ms, max_delay: 1.5h}\n",
    )
    assert cfg.ae_title == "EDGE"
    assert (cfg.listen.host, cfg.listen.port) == ("127.0.0.1", 4000)
    dest = cfg.destinations["pacs"]
    assert dest.timeout == 60.0
    assert dest.retry.max_attempts == 3
    assert dest.retry.initial_delay == pytest.approx(0.5)
    assert dest.retry.max_delay == 5400.0


def test_bad_duration_in_file_names_key_path(tmp_path: Path) -> None:
    msg = config_error(
        tmp_path,
        f"destinations:\n  pacs:\n    {MINIMAL_DEST}    timeout: soon\n",
    )
    assert "router.yaml: destinations.pacs.timeout:" in msg


def test_env_override_nested_with_double_underscore(tmp_path: Path) -> None:
    cfg = load(tmp_path, "listen: {port: 11112, host: 0.0.0.0}\n", {"ROUTER_LISTEN__PORT": "1234"})
    assert cfg.listen.port == 1234
    assert cfg.listen.host == "0.0.0.0"  # sibling keys are kept


def test_env_override_single_underscore_key_stays_whole(tmp_path: Path) -> None:
    cfg = load(tmp_path, "broker_url: redis://a:6379/0\n", {"ROUTER_BROKER_URL": "redis://b:1/2"})
    assert cfg.broker_url == "redis://b:1/2"


def test_env_override_creates_missing_section_and_ignores_other_variables(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        "",
        {
            "ROUTER_SPOOL__MIN_FREE_MB": "7",
            "ROUTER_MAX_ASSOCIATIONS": "5",
            "HOME": "/root",
            "ROUTERX_LISTEN__PORT": "1",
            "ROUTER_": "ignored",
        },
    )
    assert cfg.spool.min_free_mb == 7
    assert cfg.max_associations == 5
    assert cfg.listen.port == 11112


def test_router_config_variable_is_not_a_key(tmp_path: Path) -> None:
    # If ROUTER_CONFIG were treated as key "config", strict validation would refuse it.
    cfg = load(tmp_path, "", {"ROUTER_CONFIG": str(tmp_path / "router.yaml")})
    assert cfg.ae_title == "ROUTER"


def test_env_override_value_is_validated_with_key_path(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "", {"ROUTER_LISTEN__PORT": "not-a-port"})
    assert msg.startswith(f"{tmp_path / 'router.yaml'}: listen.port: ")


def test_env_override_unknown_key_is_refused(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "", {"ROUTER_LISTEN__PROT": "1"})
    assert "listen.prot: unknown key" in msg


def test_apply_env_overrides_reads_yaml_scalars() -> None:
    tree = apply_env_overrides(
        {"a": 1},
        {"ROUTER_X": "12", "ROUTER_Y": "true", "ROUTER_Z": "", "ROUTER_W": "[unclosed"},
    )
    assert tree == {"a": 1, "x": 12, "y": True, "z": "", "w": "[unclosed"}


def test_port_out_of_range_names_file_and_key(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "listen:\n  port: 70000\n")
    assert msg.startswith(f"{tmp_path / 'router.yaml'}: listen.port: ")
    assert "65535" in msg


def test_port_not_a_number_names_file_and_key(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "listen:\n  port: eleven\n")
    assert f"{tmp_path / 'router.yaml'}: listen.port:" in msg


def test_unknown_keys_refused_each_on_its_own_line(tmp_path: Path) -> None:
    msg = config_error(
        tmp_path,
        f"max_asociations: 3\ndestinations:\n  pacs:\n    {MINIMAL_DEST}    colour: red\n",
    )
    lines = msg.splitlines()
    assert f"{tmp_path / 'router.yaml'}: max_asociations: unknown key" in lines
    assert f"{tmp_path / 'router.yaml'}: destinations.pacs.colour: unknown key" in lines


def test_invalid_yaml_reports_file_and_line(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "ae_title: R\nlisten:\n  port: 1\n\tbad: 2\n")
    assert msg.startswith(f"{tmp_path / 'router.yaml'}:4: invalid YAML")


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "- a\n- b\n")
    assert "expected a mapping" in msg
    assert str(tmp_path / "router.yaml") in msg


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read config"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_relative_paths_resolved_against_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write_config(
        conf_dir,
        "rules: ./rules\n"
        "spool: {dir: spool}\n"
        "audit: {file: ../log/audit.jsonl}\n"
        "tls: {cert: tls/c.pem, key: /abs/k.pem}\n"
        "destinations:\n"
        f"  pacs:\n    {MINIMAL_DEST}    tls: {{ca: ca.pem}}\n",
    )
    cfg = load_config(path, environ={})
    base = conf_dir.resolve()
    assert cfg.rules == base / "rules"
    assert cfg.spool.dir == base / "spool"
    assert cfg.audit.file == (tmp_path / "log" / "audit.jsonl").resolve()
    assert cfg.tls is not None
    assert cfg.tls.cert == base / "tls" / "c.pem"
    assert cfg.tls.key == Path("/abs/k.pem")
    assert cfg.tls.ca is None
    dest_tls = cfg.destinations["pacs"].tls
    assert dest_tls is not None
    assert dest_tls.ca == base / "ca.pem"
    assert dest_tls.cert is None


def test_default_relative_paths_also_resolved(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    base = tmp_path.resolve()
    assert cfg.rules == base / "rules"
    assert cfg.spool.dir == base / "var" / "spool"
    assert cfg.audit.file == base / "var" / "audit.jsonl"


def test_alternate_destination_must_exist(tmp_path: Path) -> None:
    msg = config_error(
        tmp_path, f"destinations:\n  pacs:\n    {MINIMAL_DEST}    alternate: backup\n"
    )
    assert "destinations:" in msg
    assert "'backup' is not defined" in msg


def test_alternate_destination_that_exists_is_accepted(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        f"destinations:\n  pacs:\n    {MINIMAL_DEST}    alternate: backup\n"
        f"  backup:\n    {MINIMAL_DEST}",
    )
    assert cfg.destinations["pacs"].alternate == "backup"


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        ("ae_title: ''\n", "ae_title"),
        ("ae_title: WAY_TOO_LONG_AE_TITLE\n", "ae_title"),
        ("max_associations: 0\n", "max_associations"),
        ("accept: {networks: [not-a-net]}\n", "accept.networks"),
        ("spool: {retention_hours: -1}\n", "spool.retention_hours"),
    ],
)
def test_field_constraints_reported_with_key(tmp_path: Path, snippet: str, key: str) -> None:
    msg = config_error(tmp_path, snippet)
    assert f"router.yaml: {key}:" in msg


def test_accept_networks_valid(tmp_path: Path) -> None:
    cfg = load(tmp_path, "accept: {networks: [10.0.0.0/8, '::1'], calling_ae: [CT1]}\n")
    assert cfg.accept is not None
    assert cfg.accept.networks == ["10.0.0.0/8", "::1"]


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    with pytest.raises(ValidationError):
        cfg.ae_title = "X"  # type: ignore[misc]


def test_negative_timeout_in_file_is_refused(tmp_path: Path) -> None:
    msg = config_error(
        tmp_path,
        f"destinations:\n  pacs:\n    {MINIMAL_DEST}    retry: {{initial_delay: -5}}\n",
    )
    assert "destinations.pacs.retry.initial_delay:" in msg


def test_destinations_with_fewer_association_slots_than_worker_processes(
    tmp_path: Path,
) -> None:
    cfg = load(
        tmp_path,
        "destinations:\n"
        f"  pacs:\n    {MINIMAL_DEST}"
        f"  archive:\n    {MINIMAL_DEST}    max_associations: 4\n",
    )
    assert cfg.destinations["pacs"].max_associations == 2  # the default
    assert association_shortfalls(cfg, 2) == {}
    assert association_shortfalls(cfg, 3) == {"pacs": 2}
    assert association_shortfalls(cfg, 5) == {"pacs": 2, "archive": 4}


# --- destination transfer syntaxes -------------------------------------------------
def test_misspelt_transfer_syntax_is_refused_naming_key_value_and_valid_names(
    tmp_path: Path,
) -> None:
    msg = config_error(
        tmp_path,
        f"destinations:\n  pacs:\n    {MINIMAL_DEST}"
        "    transfer_syntaxes: [jpeg-ls-lossless, 1.2.840.10008.1.2.4.70, explicit-litle,"
        " 1.2.840.10008.1.2]\n",
    )
    (line,) = msg.splitlines()  # the names and UIDs around it are fine
    assert line.startswith(f"{tmp_path / 'router.yaml'}: destinations.pacs.transfer_syntaxes.2: ")
    assert "'explicit-litle'" in line
    for name in ("explicit-little", "implicit-little", "jpeg-ls-lossless", "jpeg-baseline"):
        assert name in line


@pytest.mark.parametrize("bad", ["1.2.3.4", "1.2.840.10008.5.1.4.1.1.2", "JPEG", ""])
def test_uid_that_is_not_a_transfer_syntax_is_refused(tmp_path: Path, bad: str) -> None:
    msg = config_error(
        tmp_path,
        f"destinations:\n  pacs:\n    {MINIMAL_DEST}    transfer_syntaxes: ['{bad}']\n",
    )
    assert "destinations.pacs.transfer_syntaxes.0:" in msg
    assert repr(bad) in msg


def test_rules_lint_reports_a_misspelt_transfer_syntax_as_a_config_problem(
    tmp_path: Path,
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.yaml").write_text("rules:\n  - name: all\n    forward: [pacs]\n")
    path = write_config(
        tmp_path,
        f"rules: rules\ndestinations:\n  pacs:\n    {MINIMAL_DEST}"
        "    transfer_syntaxes: [explicit-litle]\n",
    )
    lint = subprocess.run(
        [sys.executable, "-m", "router.cli", "--config", str(path), "rules", "lint"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert lint.returncode == 1, lint.stdout + lint.stderr
    out = lint.stdout
    assert f"{path}: destinations.pacs.transfer_syntaxes.0: " in out
    assert "'explicit-litle'" in out
    assert "ok:" not in out
