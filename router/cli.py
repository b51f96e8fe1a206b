"""The ``dicom-router`` command.

Modules that create Prometheus metrics are imported inside the commands, after
``PROMETHEUS_MULTIPROC_DIR`` is set: prometheus-client decides at import time
whether values are per process or shared between processes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from router.config import (
    ConfigError,
    RouterConfig,
    config_path,
    destination_syntaxes,
    load_config,
    load_salt,
)
from router.logs import configure_logging

if TYPE_CHECKING:
    from router.rules.loader import Ruleset

_TARGET = re.compile(r"^(?P<aet>[^@]+)@(?P<host>[^:]+):(?P<port>\d{1,5})$")
_MAX_AE_TITLE = 16
DEFAULT_AE_TITLE: str = RouterConfig.model_fields["ae_title"].default

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2


def _load(args: argparse.Namespace) -> RouterConfig:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"dicom-router: invalid configuration\n{exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from exc
    if args.log_level is None:
        configure_logging(cfg.log_level)
    return cfg


def _multiprocess_metrics_dir() -> None:
    """Give this process tree a fresh, empty directory for shared metric values."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="dicom-router-metrics-")


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _load(args)
    _multiprocess_metrics_dir()
    os.environ["ROUTER_CONFIG"] = str(cfg.source)
    from router.service import serve

    assert cfg.source is not None
    return serve(cfg, cfg.source, args.workers)


def cmd_worker(args: argparse.Namespace) -> int:
    cfg = _load(args)
    _multiprocess_metrics_dir()  # a standalone worker sums its own pool processes
    os.environ["ROUTER_CONFIG"] = str(cfg.source)
    from router import tasks  # noqa: F401 - registers the tasks
    from router.queue import FORWARD_QUEUE, ROUTE_QUEUE, configure

    app = configure(cfg)
    from router.audit import dicom_sink_from_config, install_dicom_sink
    from router.service import (
        AUDIT_FLUSH_TIMEOUT_S,
        PARENT_ENV,
        check_destination_tls,
        die_with_parent,
        start_audit_sender,
        start_retry_pump,
    )

    # Started by `serve`: its sender drains the queue this worker writes to.
    embedded = PARENT_ENV in os.environ
    die_with_parent()
    try:
        check_destination_tls(cfg)
        audit_sender = None if embedded else start_audit_sender(cfg)
    except ConfigError as exc:
        print(f"dicom-router: {exc}", file=sys.stderr)
        return EXIT_USAGE
    start_retry_pump(cfg)
    port = args.metrics_port if args.metrics_port is not None else cfg.metrics.worker_port
    if not embedded and port is not None:  # embedded workers are counted by `serve`
        from router.service import start_worker_exporter

        start_worker_exporter(cfg, port)
    dicom = dicom_sink_from_config(cfg)
    install_dicom_sink(dicom)  # for the task processes, forked later
    argv = [
        "worker",
        "--queues", f"{ROUTE_QUEUE},{FORWARD_QUEUE}",
        "--concurrency", str(args.concurrency),
        "--pool", "prefork",
        "--loglevel", args.log_level or cfg.log_level,
        "--hostname", f"dicom-router-{os.getpid()}@%h",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    if dicom is not None:
        dicom.application(started=True)
    try:
        app.worker_main(argv)
    finally:
        if dicom is not None:
            dicom.application(started=False)
        if audit_sender is not None:
            audit_sender.stop(AUDIT_FLUSH_TIMEOUT_S)
    return EXIT_OK


def cmd_echo(args: argparse.Namespace) -> int:
    from router.scu import Peer, destination_peer, echo

    target: str = args.target
    match = _TARGET.match(target)
    calling = DEFAULT_AE_TITLE
    if match and len(match["aet"]) > _MAX_AE_TITLE:
        print(
            f"dicom-router echo: AE title {match['aet']!r} is longer than "
            f"{_MAX_AE_TITLE} characters",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if match:
        peer = Peer(match["aet"], match["host"], int(match["port"]), timeout=args.timeout)
        with contextlib.suppress(ConfigError):
            calling = load_config(args.config).ae_title
    else:
        cfg = _load(args)
        calling = cfg.ae_title
        dest = cfg.destinations.get(target)
        if dest is None:
            known = ", ".join(sorted(cfg.destinations)) or "none"
            print(
                f"dicom-router echo: {target!r} is neither a configured destination "
                f"(known: {known}) nor AET@host:port",
                file=sys.stderr,
            )
            return EXIT_USAGE
        try:
            peer = destination_peer(dest, timeout=args.timeout)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            print(f"dicom-router echo: {target}: cannot load the TLS files: {exc}",
                  file=sys.stderr)  # fmt: skip
            return EXIT_PROBLEMS
    ok, message = echo(calling, peer)
    print(message, file=sys.stdout if ok else sys.stderr)
    return EXIT_OK if ok else EXIT_PROBLEMS


class _Rules(NamedTuple):
    """A loaded ruleset with what the rule commands need from the config."""

    ruleset: Ruleset
    salt: bytes
    ae_title: str
    """The router's own AE title: the called AE of a dry run unless told otherwise."""


def _salt(cfg: RouterConfig, needed: bool) -> bytes:
    """The config's salt; when not ``needed`` (rule tests and dry runs, which use a test
    salt), an unreadable salt file is no reason to refuse."""
    try:
        return load_salt(cfg)
    except ConfigError:
        if needed:
            raise
        return b""


def _ruleset_for(
    args: argparse.Namespace, path: str | None, check_salt: bool = True
) -> _Rules | int:
    """Load the rules named on the command line or in the config; print problems.

    Returns the rules, or an exit code when config or rules are invalid. Without a
    config file, rules are checked on their own (no destination names to verify).
    """
    from router.rules.loader import RulesetError, load_ruleset

    destinations = None
    salt: bytes | None = None
    ae_title = DEFAULT_AE_TITLE
    rules_path = Path(path) if path else None
    try:
        cfg = load_config(args.config)
        destinations = destination_syntaxes(cfg)
        ae_title = cfg.ae_title
        rules_path = rules_path or cfg.rules
        salt = _salt(cfg, check_salt)
    except ConfigError as exc:
        if path is None or config_path(args.config).exists():
            print(exc, file=sys.stdout)
            return EXIT_PROBLEMS
    assert rules_path is not None
    try:
        salt_available = bool(salt) if salt is not None and check_salt else None
        ruleset = load_ruleset(rules_path, destinations, salt_available)
    except RulesetError as exc:
        for problem in exc.problems:
            print(problem)
        return EXIT_PROBLEMS
    return _Rules(ruleset, salt or b"", ae_title)


def cmd_rules_lint(args: argparse.Namespace) -> int:
    loaded = _ruleset_for(args, args.path)
    if isinstance(loaded, int):
        return loaded
    ruleset = loaded.ruleset
    print(
        f"ok: {len(ruleset.rules)} rules in {len(ruleset.files)} files, version {ruleset.version}"
    )
    return EXIT_OK


def cmd_rules_test(args: argparse.Namespace) -> int:
    """Run rule tests; a test file named on its own runs against the rules of its folder."""
    from router.rules.ruletests import is_test_file, run_tests, test_files

    named = Path(args.path) if args.path else None
    single = named is not None and is_test_file(named)
    rules_path = str(named.parent) if named is not None and single else args.path
    loaded = _ruleset_for(args, rules_path, check_salt=False)  # tests use a test salt
    if isinstance(loaded, int):
        return loaded
    where = named or Path(loaded.ruleset.files[0]).parent
    files = [where] if single else test_files(where)
    results = run_tests(files, loaded.ruleset, loaded.salt, loaded.ae_title)
    for result in results:
        for problem in result.problems:
            print(problem)
        if result.passed:
            print(f"ok   {result.file}:{result.line}: {result.name}")
        for failure in result.failures:
            print(f"FAIL {result.file}:{result.line}: {result.name}: {failure}")
        if result.problems and not result.failures:
            print(f"FAIL {result.file}:{result.line}: {result.name}: the case is written wrongly")
    failed = sum(1 for r in results if not r.passed)
    print(f"rules test: {len(results) - failed} passed, {failed} failed")
    if not files:
        print(f"no *_test.yaml files beside {where}")
    return EXIT_PROBLEMS if failed or not files else EXIT_OK


def cmd_rules_reference(args: argparse.Namespace) -> int:
    from router.rules.reference import render

    sys.stdout.write(render())
    return EXIT_OK


def _unreadable(exc: Exception) -> str:
    """Why a DICOM file cannot be read, from the kind of error only (never its values)."""
    from pydicom.errors import InvalidDicomError

    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, InvalidDicomError):
        return "not a DICOM file (no DICM prefix)"
    return f"not a readable DICOM file ({type(exc).__name__})"


def cmd_rules_explain(args: argparse.Namespace) -> int:
    from pydicom import dcmread

    from router.rules import InstanceView
    from router.rules.actions import ActionError
    from router.rules.ruletests import explain

    loaded = _ruleset_for(args, args.rules, check_salt=False)
    if isinstance(loaded, int):
        return loaded
    try:
        dataset = dcmread(args.file, stop_before_pixels=True)
    except Exception as exc:  # any failure to parse the operator's file is one line
        print(f"{args.file}: cannot read: {_unreadable(exc)}", file=sys.stderr)
        return EXIT_PROBLEMS
    called = args.called_ae or loaded.ae_title
    view = InstanceView(dataset, calling_ae=args.calling_ae, called_ae=called,
                        peer_ip=args.peer_ip)  # fmt: skip
    try:
        lines = explain(loaded.ruleset, view, loaded.salt)
    except ActionError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    for line in lines:
        print(line)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    import redis

    from router.queue import FORWARD_QUEUE, ROUTE_QUEUE, configure
    from router.rules.loader import RulesetError, load_ruleset
    from router.status_report import collect

    cfg = _load(args)
    client = redis.Redis.from_url(cfg.broker_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        report = collect(client, cfg.destinations, (ROUTE_QUEUE, FORWARD_QUEUE))
    except redis.RedisError as exc:
        print(f"dicom-router status: broker unreachable: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    try:
        report.ruleset_version = load_ruleset(cfg.rules, destination_syntaxes(cfg)).version
    except RulesetError:
        report.ruleset_version = None
    replies = configure(cfg).control.ping(timeout=1.0) or []
    report.workers = sorted(name for reply in replies for name in reply)
    print(report.as_json() if args.json else report.as_table())
    return EXIT_OK


def _utc(epoch: float) -> str:
    """An epoch time as ISO 8601 UTC: unambiguous whichever zone the operator is in."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def _shown_value(name: str, value: Any) -> str:
    """How ``deadletter show`` prints one field: ``*_at`` epoch times as ISO 8601 UTC."""
    if name.endswith("_at") and isinstance(value, int | float) and not isinstance(value, bool):
        return _utc(value)
    return str(value)


def _show_letter(letter: Any) -> None:
    """Every field on its own line; ``meta`` indented, so nested times read the same."""
    for name, value in vars(letter).items():
        if name == "meta" and isinstance(value, dict):
            print("meta:")
            for key, item in value.items():
                print(f"  {key}: {_shown_value(key, item)}")
        else:
            print(f"{name}: {_shown_value(name, value)}")


def cmd_deadletter(args: argparse.Namespace) -> int:
    import redis

    from router import redelivery
    from router.deadletters import DeadLetters
    from router.deliveries import Deliveries
    from router.queue import configure
    from router.spool import Spool

    cfg = _load(args)
    configure(cfg)
    client = redis.Redis.from_url(cfg.broker_url, socket_connect_timeout=3)
    store = DeadLetters(client)
    try:
        if args.action == "list":
            letters = store.list()
            for letter in letters:
                when = _utc(letter.dead_at)
                status = f"{letter.reason}: {letter.last_status}"
                print(
                    f"{letter.id}  {when}  {letter.destination:16}  "
                    f"attempts={letter.attempts}  {status}  {letter.sop_instance_uid}"
                )
            print(f"{len(letters)} dead letters")
            return EXIT_OK
        if args.action == "show":
            for letter_id in args.ids:
                found = store.get(letter_id)
                if found is None:
                    print(f"no dead letter {letter_id}", file=sys.stderr)
                    return EXIT_PROBLEMS
                _show_letter(found)
            return EXIT_OK
        if not args.ids and not args.all:
            print(f"deadletter {args.action}: name IDs or --all", file=sys.stderr)
            return EXIT_USAGE
        taken = redelivery.take_all(store, args.ids, args.all)
        if args.all and not taken:
            print("no dead letters")
        deliveries = Deliveries(client)
        for letter in taken:
            if args.action == "retry":
                redelivery.retry(letter, deliveries)
                print(f"retrying {letter.id} -> {letter.destination}")
            else:
                released = redelivery.purge(letter, deliveries, Spool(cfg.spool.dir), cfg)
                print(f"purged {letter.id}" + (" (spool file released)" if released else ""))
        missing = set(args.ids) - {letter.id for letter in taken}
        for letter_id in sorted(missing):
            print(f"no dead letter {letter_id}", file=sys.stderr)
        return EXIT_PROBLEMS if missing else EXIT_OK
    except redis.RedisError as exc:
        print(f"dicom-router deadletter: broker unreachable: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS


def _add_common_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--config", default=default, help="config file (default $ROUTER_CONFIG or ./router.yaml)"
    )
    parser.add_argument(
        "--log-level",
        default=default,
        help="DEBUG, INFO, WARNING or ERROR (default: the config's log_level)",
    )


def _common_options() -> argparse.ArgumentParser:
    """The top-level options again, for every subcommand: ``rules lint --config X`` works.

    Their default is SUPPRESS, so a value given after the subcommand wins and one
    given before it (``--config X rules lint``) is not overwritten by a default.
    """
    parent = argparse.ArgumentParser(add_help=False)
    _add_common_options(parent, argparse.SUPPRESS)
    return parent


def _add_rules_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    rules = sub.add_parser("rules", parents=[common], help="lint, test and explain rule files")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    lint = rules_sub.add_parser("lint", parents=[common], help="validate rule files and the config")
    lint.add_argument("path", nargs="?")
    lint.set_defaults(func=cmd_rules_lint)
    reference = rules_sub.add_parser(
        "reference", parents=[common], help="print the rule file reference"
    )
    reference.set_defaults(func=cmd_rules_reference)
    test = rules_sub.add_parser(
        "test",
        parents=[common],
        help="run the *_test.yaml rule tests (a folder, rule or test file)",
    )
    test.add_argument("path", nargs="?")
    test.set_defaults(func=cmd_rules_test)
    explain = rules_sub.add_parser(
        "explain", parents=[common], help="dry-run the rules on a DICOM file"
    )
    explain.add_argument("file")
    explain.add_argument("--calling-ae", default="")
    explain.add_argument(
        "--called-ae", default=None, help="the called AE title (default: the config's ae_title)"
    )
    explain.add_argument("--peer-ip", default="")
    explain.add_argument("--rules", help="rule file or folder (default: the config's)")
    explain.set_defaults(func=cmd_rules_explain)


def _add_deadletter_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    deadletter = sub.add_parser(
        "deadletter", parents=[common], help="list, show, retry or purge dead letters"
    )
    deadletter.set_defaults(func=cmd_deadletter, ids=[], all=False)
    actions = deadletter.add_subparsers(dest="action", required=True)
    actions.add_parser("list", parents=[common], help="every dead letter, oldest first")
    show = actions.add_parser("show", parents=[common], help="every field of dead letters")
    show.add_argument("ids", nargs="+", metavar="ID")
    for name, verb in (("retry", "send again"), ("purge", "drop")):
        action = actions.add_parser(name, parents=[common], help=f"{verb} dead letters")
        action.add_argument("ids", nargs="*", metavar="ID")
        action.add_argument("--all", action="store_true", help=f"{verb} every one")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicom-router", description=__doc__.splitlines()[0])
    _add_common_options(parser, None)
    common = _common_options()
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the SCP and the metrics endpoint")
    serve.add_argument("--workers", type=int, default=0, help="also run N worker processes")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", parents=[common], help="run a routing/forwarding worker")
    worker.add_argument("--concurrency", type=int, default=2)
    worker.add_argument(
        "--metrics-port", type=int, default=None,
        help="serve /metrics, /healthz and /readyz here (default: metrics.worker_port)",
    )  # fmt: skip
    worker.set_defaults(func=cmd_worker)

    echo = sub.add_parser(
        "echo", parents=[common], help="C-ECHO a destination name or AET@host:port"
    )
    echo.add_argument("target")
    echo.add_argument("--timeout", type=float, default=10.0)
    echo.set_defaults(func=cmd_echo)

    _add_rules_commands(sub, common)
    _add_deadletter_commands(sub, common)

    status = sub.add_parser(
        "status", parents=[common], help="per-destination state, queues, workers, ruleset"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level or "INFO")
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
