"""Typed settings for the router, loaded from ``router.yaml`` plus ``ROUTER_*`` overrides.

Why a strict model: an operator editing the file at 2 a.m. must learn at start-up,
in one line naming the file and the key, that ``listen.port`` is not a number,
rather than discover it when the first modality connects. Unknown keys are errors
for the same reason (a misspelt ``max_asociations`` would otherwise silently do
nothing).

Relative paths in the file are resolved against the directory of the file, so a
config behaves the same whatever the working directory of the process.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_CONFIG_PATH = "router.yaml"
ENV_PREFIX = "ROUTER_"
ENV_CONFIG = "ROUTER_CONFIG"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator."""


def parse_duration(value: object) -> float:
    """Turn ``2s``, ``10m``, ``1.5h`` or a bare number of seconds into seconds."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected a duration such as 30s, 10m or 2h, got {value!r}")
    return seconds


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(_Strict):
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)


class SpoolConfig(_Strict):
    dir: Path = Path("./var/spool")
    min_free_mb: int = Field(1024, ge=0)
    retention_hours: float = Field(24, ge=0)


class AcceptConfig(_Strict):
    calling_ae: list[str] | None = None
    networks: list[str] | None = None

    @field_validator("networks")
    @classmethod
    def _valid_networks(cls, value: list[str] | None) -> list[str] | None:
        for net in value or []:
            ipaddress.ip_network(net, strict=False)
        return value


class ServerTLSConfig(_Strict):
    port: int = Field(2762, ge=0, le=65535)
    cert: Path
    key: Path
    ca: Path | None = None
    require_client_cert: bool = True


class ClientTLSConfig(_Strict):
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


class MetricsConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(9102, ge=0, le=65535)
    worker_port: int | None = Field(9103, ge=0, le=65535)
    """Metrics port of a standalone ``dicom-router worker`` (None: no endpoint)."""


class SyslogConfig(_Strict):
    """Where DICOM audit messages (PS3.15 A.5) go, and how they wait until they can.

    ``port`` defaults to 6514 for TLS (RFC 5425) and 514 for UDP (RFC 5426, PS3.15
    A.7). ``queue_dir`` holds messages not yet sent; every process of one
    installation writes there. ``verify: false`` accepts any collector certificate
    (tests only: it gives up knowing who receives the audit trail).
    """

    host: str = Field(min_length=1)
    port: int = Field(6514, ge=1, le=65535)
    transport: Literal["tls", "udp"] = "tls"
    queue_dir: Path = Path("./var/audit-syslog")
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True
    source_id: str | None = Field(None, min_length=1)
    facility: int = Field(10, ge=0, le=23)
    reconnect_max_delay: float = 30.0

    @model_validator(mode="before")
    @classmethod
    def _port_for_transport(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("port") is None and data.get("transport") == "udp":
            return {**data, "port": 514}
        return data

    @field_validator("reconnect_max_delay", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        seconds = parse_duration(value)
        if seconds < 0.1:
            raise ValueError("must be at least 0.1s")
        return seconds

    @model_validator(mode="after")
    def _tls_files(self) -> SyslogConfig:
        tls_keys = [k for k in ("ca_file", "cert_file", "key_file") if getattr(self, k)]
        if self.transport == "udp" and tls_keys:
            raise ValueError(f"{', '.join(tls_keys)}: only for transport: tls")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file (the client certificate)")
        return self


class AuditConfig(_Strict):
    file: Path = Path("./var/audit.jsonl")
    max_mb: float = Field(100, gt=0)
    backups: int = Field(10, ge=1)
    syslog: SyslogConfig | None = None

    def resolved(self, res: Callable[[Path | None], Path | None]) -> AuditConfig:
        """This section with its relative paths resolved by ``res``."""
        syslog = self.syslog
        if syslog is not None:
            keys = ("queue_dir", "ca_file", "cert_file", "key_file")
            syslog = syslog.model_copy(update={k: res(getattr(syslog, k)) for k in keys})
        return self.model_copy(update={"file": res(self.file), "syslog": syslog})


class RetryConfig(_Strict):
    max_attempts: int = Field(8, ge=1)
    initial_delay: float = 2.0
    max_delay: float = 600.0

    @field_validator("initial_delay", "max_delay", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value)


def _known_transfer_syntax(value: str) -> str:
    """Refuse a ``transfer_syntaxes`` entry that names no transfer syntax.

    Why at load: an unknown entry (a typo such as ``explicit-litle``) would
    otherwise be left out of what the router proposes, and the destination would
    silently receive something other than what the operator asked for.
    """
    from router.transcode.syntaxes import TRANSFER_SYNTAX_NAMES, syntax_uid

    if syntax_uid(value) is None:
        names = ", ".join(TRANSFER_SYNTAX_NAMES)
        raise ValueError(
            f"{value!r} is not a transfer syntax name or UID; valid names: {names}, "
            "or a transfer syntax UID such as 1.2.840.10008.1.2.1"
        )
    return value


class DestinationConfig(_Strict):
    ae_title: str = Field(min_length=1, max_length=16)
    host: str
    port: int = Field(ge=1, le=65535)
    max_associations: int = Field(2, ge=1)
    transfer_syntaxes: list[Annotated[str, AfterValidator(_known_transfer_syntax)]] = Field(
        default_factory=list
    )
    retry: RetryConfig = Field(default_factory=lambda: RetryConfig())
    alternate: str | None = None
    tls: ClientTLSConfig | None = None
    timeout: float = 30.0
    resend_identical: bool = False
    """Send an instance received again with identical content again (a deliberate
    re-send); by default the delivery record of the first one stands for it."""

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value)


class RouterConfig(_Strict):
    """The whole of ``router.yaml``; see docs/configuration.md for each key."""

    ae_title: str = Field("ROUTER", min_length=1, max_length=16)
    listen: ListenConfig = Field(default_factory=lambda: ListenConfig())
    spool: SpoolConfig = Field(default_factory=lambda: SpoolConfig())
    broker_url: str = "redis://127.0.0.1:6379/0"
    broker_visibility_timeout: float = 300.0
    rules: Path = Path("./rules")
    accept: AcceptConfig | None = None
    max_associations: int = Field(32, ge=1)
    max_pdu: int = Field(0, ge=0)
    tls: ServerTLSConfig | None = None
    metrics: MetricsConfig = Field(default_factory=lambda: MetricsConfig())
    audit: AuditConfig = Field(default_factory=lambda: AuditConfig())
    destinations: dict[str, DestinationConfig] = Field(default_factory=dict)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    salt: SecretStr | None = None
    salt_file: Path | None = None
    source: Path | None = Field(None, exclude=True)

    @field_validator("broker_visibility_timeout", mode="before")
    @classmethod
    def _visibility(cls, value: object) -> float:
        seconds = parse_duration(value)
        if seconds < 5:
            raise ValueError("must be at least 5s (longer than any one delivery)")
        return seconds

    @field_validator("destinations")
    @classmethod
    def _alternates_exist(cls, value: dict[str, DestinationConfig]) -> dict[str, DestinationConfig]:
        for name, dest in value.items():
            if dest.alternate is not None and dest.alternate not in value:
                raise ValueError(
                    f"destination {name!r}: alternate {dest.alternate!r} is not defined"
                )
        return value


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def apply_env_overrides(tree: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``ROUTER_A__B=value`` as key ``a.b``; the value is read as YAML scalar.

    ``ROUTER_CONFIG`` names the file and is not a key. Double underscores separate
    nesting levels so that keys containing one underscore (``broker_url``) stay whole.
    """
    result = dict(tree)
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_path(result, path, value)
    return result


def _resolve_paths(cfg: RouterConfig, base: Path) -> RouterConfig:
    def res(p: Path | None) -> Path | None:
        if p is None or p.is_absolute():
            return p
        return (base / p).resolve()

    updates: dict[str, Any] = {
        "rules": res(cfg.rules),
        "salt_file": res(cfg.salt_file),
        "spool": cfg.spool.model_copy(update={"dir": res(cfg.spool.dir)}),
        "audit": cfg.audit.resolved(res),
    }
    if cfg.tls is not None:
        updates["tls"] = cfg.tls.model_copy(
            update={"cert": res(cfg.tls.cert), "key": res(cfg.tls.key), "ca": res(cfg.tls.ca)}
        )
    dests = {}
    for name, dest in cfg.destinations.items():
        if dest.tls is not None:
            paths = {"ca": res(dest.tls.ca), "cert": res(dest.tls.cert), "key": res(dest.tls.key)}
            tls = dest.tls.model_copy(update=paths)
            dest = dest.model_copy(update={"tls": tls})
        dests[name] = dest
    updates["destinations"] = dests
    return cfg.model_copy(update=updates)


def describe_validation_error(source: str, exc: ValidationError) -> str:
    """One line per problem: ``file: key.path: message``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{source}: {loc}: {msg}")
    return "\n".join(lines)


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The file to read: ``--config``, else ``$ROUTER_CONFIG``, else ``./router.yaml``."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(ENV_CONFIG, DEFAULT_CONFIG_PATH))


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> RouterConfig:
    """Read, overlay the environment, validate; raise :class:`ConfigError` on any problem."""
    file = config_path(path)
    env = os.environ if environ is None else environ
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config: {exc.strerror or exc}") from exc
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark is not None else str(file)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{file}: expected a mapping of keys at the top level")
    tree = apply_env_overrides(tree, env)
    try:
        cfg = RouterConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(str(file), exc)) from exc
    cfg = _resolve_paths(cfg, file.resolve().parent)
    return cfg.model_copy(update={"source": file.resolve()})


def load_salt(cfg: RouterConfig) -> bytes:
    """The secret for keyed actions: ``salt`` (e.g. ``ROUTER_SALT``) or the file ``salt_file``.

    Empty when neither is set; rules that need it are then refused at load.
    """
    if cfg.salt is not None:
        return cfg.salt.get_secret_value().encode()
    if cfg.salt_file is not None:
        try:
            return cfg.salt_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"salt_file {cfg.salt_file}: cannot read: {exc.strerror}") from exc
    return b""


def destination_syntaxes(cfg: RouterConfig) -> dict[str, list[str]]:
    """Destination name -> transfer syntax UIDs it accepts, names translated (every entry
    is known: ``DestinationConfig`` refuses the others at load)."""
    from router.transcode import syntax_uid

    return {
        name: [syntax_uid(ts) or ts for ts in dest.transfer_syntaxes]
        for name, dest in cfg.destinations.items()
    }


def association_shortfalls(cfg: RouterConfig, worker_processes: int) -> dict[str, int]:
    """Destinations allowing fewer associations than there are worker processes here.

    Each worker process holds at most one association per destination; a process
    that finds every slot taken puts its delivery back in the retry schedule for
    0.2-1 s, so more processes than slots make deliveries to that destination wait.
    Returns destination -> ``max_associations``.
    """
    return {
        name: dest.max_associations
        for name, dest in cfg.destinations.items()
        if dest.max_associations < worker_processes
    }
