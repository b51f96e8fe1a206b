"""The Redis bookkeeping of deliveries, on a real Redis: what one round trip records
and answers, and how long a circuit opened elsewhere may go unseen."""

from __future__ import annotations

import time

import pytest

from router.circuit import CLOSED_RECHECK_S, OPEN_AFTER, Circuits
from router.deliveries import (
    BUSY,
    CLAIMED,
    DELIVERED,
    Deliveries,
    delivered_key,
    derived_key,
    pending_key,
    sending_key,
)
from router.inbox import INBOX, Inbox
from tests.support.router_proc import RedisServer

pytestmark = pytest.mark.integration


def test_expect_records_clears_the_inbox_and_finds_earlier_deliveries(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    deliveries, inbox = Deliveries(client), Inbox(client)
    inbox.add("k1", {"sop_instance_uid": "1.2.3"})
    client.set(delivered_key("pacs", "1.2.3", "d1"), "1")  # sent before, same content

    found = deliveries.expect(
        "k1", ["pacs", "archive"], 100.0, {"pacs": {}, "archive": {}},
        also=inbox.done_in("k1"),
        check=[("pacs", "1.2.3", "d1"), ("archive", "1.2.3", "d1")],
    )  # fmt: skip

    assert found.delivered == {"pacs"}
    assert not client.hexists(INBOX, "k1")
    assert set(client.hgetall(pending_key("k1"))) == {b"pacs", b"archive"}
    # Changed content under the same UID is a new delivery.
    assert deliveries.expect("k2", ["pacs"], check=[("pacs", "1.2.3", "d2")]).delivered == set()


def test_the_last_delivery_hands_back_the_changed_copies(redis_server: RedisServer) -> None:
    client = redis_server.client()
    deliveries = Deliveries(client)
    deliveries.expect("k1", ["pacs", "archive"])
    deliveries.add_derived("k1", "copy-b")
    deliveries.add_derived("k1", "copy-a")

    assert deliveries.delivered("k1", "pacs", "1.2.3", "d") is None  # archive still waits
    assert client.exists(derived_key("k1"))
    assert deliveries.delivered("k1", "archive", "1.2.3", "d") == ["copy-a", "copy-b"]
    assert not client.exists(derived_key("k1"))
    assert not client.exists(pending_key("k1"))

    deliveries.expect("k2", ["pacs"])
    assert deliveries.delivered("k2", "pacs", "1.2.4", "d") == []  # last, no copies


def test_deliveries_to_several_destinations_are_recorded_together(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    deliveries = Deliveries(client)
    deliveries.expect("k1", ["pacs", "archive", "research"])
    deliveries.add_derived("k1", "copy-a")

    assert (
        deliveries.delivered_many("k1", [("pacs", "1.2.3", "d"), ("archive", "1.2.3", "d")]) is None
    )
    assert set(client.hgetall(pending_key("k1"))) == {b"research"}
    assert deliveries.already_delivered("pacs", "1.2.3", "d")
    assert deliveries.already_delivered("archive", "1.2.3", "d")
    assert not deliveries.already_delivered("research", "1.2.3", "d")
    assert deliveries.delivered_many("k1", [("research", "1.2.3", "d")]) == ["copy-a"]
    assert not client.exists(pending_key("k1"))


def test_a_circuit_opened_elsewhere_applies_within_the_recheck_interval(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    here, elsewhere = Circuits(client), Circuits(client)
    assert here.blocked_for("pacs", probe_timeout_s=5) == 0.0  # closed, and remembered
    for _ in range(OPEN_AFTER):
        elsewhere.failed("pacs")
    opened = time.monotonic()
    while here.blocked_for("pacs", probe_timeout_s=5) == 0.0:
        assert time.monotonic() - opened < CLOSED_RECHECK_S + 0.5
        time.sleep(0.02)
    assert here.blocked_for("pacs", probe_timeout_s=5) > 0


def test_a_failure_seen_here_is_not_hidden_by_the_remembered_closed_state(
    redis_server: RedisServer,
) -> None:
    circuits = Circuits(redis_server.client())
    assert circuits.blocked_for("pacs", probe_timeout_s=5) == 0.0
    for _ in range(OPEN_AFTER):
        circuits.failed("pacs")
    assert circuits.blocked_for("pacs", probe_timeout_s=5) > 0


def test_a_record_names_its_reception_for_destinations_that_resend_identical_content(
    redis_server: RedisServer,
) -> None:
    deliveries = Deliveries(redis_server.client())
    deliveries.expect("k1", ["pacs", "archive"])
    deliveries.delivered_many("k1", [("pacs", "1.2.3", "d"), ("archive", "1.2.3", "d")])

    # The same reception again (a redelivered task): nothing to send, either way.
    assert deliveries.already_delivered("pacs", "1.2.3", "d", spool_key="k1")
    assert deliveries.already_delivered("pacs", "1.2.3", "d")
    # The same content received again ("k2"): sent again only where the destination
    # resends identical content.
    assert not deliveries.already_delivered("pacs", "1.2.3", "d", spool_key="k2")
    checks = [("pacs", "1.2.3", "d"), ("archive", "1.2.3", "d")]
    assert deliveries.expect("k2", ["pacs", "archive"], check=checks,
                             resend_identical={"pacs"}).delivered == {"archive"}  # fmt: skip
    again = deliveries.expect("k1", ["pacs", "archive"], check=checks, resend_identical={"pacs"})
    assert again.delivered == {"pacs", "archive"}


def test_one_sender_at_a_time_per_content_and_destination(redis_server: RedisServer) -> None:
    """Two tasks for one delivery at once (a task redelivered while the first still
    sends, a second reception of the same content): only the first claims it; the
    claim goes with the booking, and then the record answers."""
    client = redis_server.client()
    deliveries = Deliveries(client)
    deliveries.expect("k1", ["pacs"])
    assert deliveries.claim("pacs", "1.2.3", "d", "first", 60) == CLAIMED
    assert deliveries.claim("pacs", "1.2.3", "d", "second", 60) == BUSY
    assert deliveries.claim("archive", "1.2.3", "d", "second", 60) == CLAIMED  # its own
    assert deliveries.claim("pacs", "1.2.3", "other", "second", 60) == CLAIMED  # changed
    deliveries.delivered_many("k1", [("pacs", "1.2.3", "d")], claim="first")
    assert not client.exists(sending_key("pacs", "1.2.3", "d"))
    assert deliveries.claim("pacs", "1.2.3", "d", "second", 60) == DELIVERED
    # resend_identical: a record of another reception does not count.
    assert deliveries.claim("pacs", "1.2.3", "d", "third", 60, reception="k2") == CLAIMED


def test_a_failed_sender_gives_up_only_its_own_claim(redis_server: RedisServer) -> None:
    client = redis_server.client()
    deliveries = Deliveries(client)
    assert deliveries.claim("pacs", "1.2.3", "d", "first", 60) == CLAIMED
    deliveries.release("pacs", "1.2.3", "d", "late")  # a sender whose lease ran out
    assert deliveries.claim("pacs", "1.2.3", "d", "second", 60) == BUSY
    deliveries.release("pacs", "1.2.3", "d", "first")
    assert deliveries.claim("pacs", "1.2.3", "d", "second", 60) == CLAIMED
    # A claim whose holder died lapses with its lease.
    assert deliveries.claim("archive", "1.2.3", "d", "dead", 0.05) == CLAIMED
    time.sleep(0.1)
    assert deliveries.claim("archive", "1.2.3", "d", "next", 60) == CLAIMED


def test_expect_claims_the_direct_sends_in_its_transaction(redis_server: RedisServer) -> None:
    client = redis_server.client()
    deliveries = Deliveries(client)
    client.set(delivered_key("pacs", "1.2.3", "d"), "k0")
    assert deliveries.claim("archive", "1.2.3", "d", "forward-task", 60) == CLAIMED
    checks = [(dest, "1.2.3", "d") for dest in ("pacs", "archive", "research")]
    found = deliveries.expect("k1", ["pacs", "archive", "research"], check=checks,
                              claim=("route", 60))  # fmt: skip
    assert found.delivered == {"pacs"} and found.busy == {"archive"}
    assert client.get(sending_key("research", "1.2.3", "d")) == b"route"
    assert not client.exists(sending_key("pacs", "1.2.3", "d"))
