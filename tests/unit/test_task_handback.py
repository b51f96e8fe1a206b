"""A task that loses the broker half-way goes back to its queue instead of being
acknowledged as failed (which would strand its instance in ``dr:pending``)."""

from __future__ import annotations

from pathlib import Path

import kombu.exceptions
import pytest
import redis
from celery.exceptions import Reject

from router.tasks import _hand_back_on_broker_error, forward
from tests.support.ports import free_port


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("Error 111 connecting"),
        redis.TimeoutError("timed out"),
        kombu.exceptions.OperationalError("broker gone"),
    ],
)
def test_broker_errors_requeue_the_task(error: Exception) -> None:
    def task() -> None:
        raise error

    with pytest.raises(Reject) as info:
        _hand_back_on_broker_error(task)()
    assert info.value.requeue is True
    assert info.value.__cause__ is error


def test_other_errors_are_not_swallowed() -> None:
    def task() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        _hand_back_on_broker_error(task)()


def test_forward_without_a_broker_is_handed_back(tmp_path: Path) -> None:
    """The real task, its Redis gone: the delivery goes back to the queue, untouched."""
    from router.config import RouterConfig
    from router.runtime import _set_runtime, build_runtime
    from router.spool import Spool

    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text("rules:\n  - name: all\n    forward: [pacs]\n")
    cfg = RouterConfig.model_validate({
        "broker_url": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        "spool": {"dir": str(tmp_path / "spool")},
        "rules": str(tmp_path / "rules"),
        "audit": {"file": str(tmp_path / "audit.jsonl")},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 1}},
    })  # fmt: skip
    spool = Spool(cfg.spool.dir)
    spool.ensure()
    key = spool.write_bytes(b"\0" * 128 + b"DICM")
    _set_runtime(build_runtime(cfg))
    with pytest.raises(Reject) as info:
        forward.run(key, "pacs", {"sop_instance_uid": "1.2.3"})
    assert info.value.requeue is True
    assert spool.path(key).exists()
