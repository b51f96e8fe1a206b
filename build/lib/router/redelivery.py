"""Operator actions on dead letters: send again through the normal path, or purge.

Used by ``dicom-router deadletter``. A retried dead letter becomes an ordinary
forward task (attempt 1, the destination's full retry budget) for the same spooled
file; a purged one releases its claim on the spool file, which is removed once no
destination waits for it any more.
"""

from __future__ import annotations

from router.config import RouterConfig
from router.deadletters import DeadLetter, DeadLetters
from router.deliveries import Deliveries, release_instance
from router.queue import enqueue_forward
from router.spool import Spool


def retry(letter: DeadLetter, deliveries: Deliveries) -> None:
    """Queue the delivery again; the letter has already been taken from the store."""
    meta = {k: v for k, v in letter.meta.items() if k != "alternate_of"}
    deliveries.requeued(letter.spool_key, letter.destination, meta)
    enqueue_forward(letter.spool_key, letter.destination, meta, attempt=1)


def purge(letter: DeadLetter, deliveries: Deliveries, spool: Spool, cfg: RouterConfig) -> bool:
    """Give the delivery up for good; True if the spool file was released too."""
    if not deliveries.drop(letter.spool_key, letter.destination):
        return False
    release_instance(deliveries, spool, letter.spool_key, cfg.spool.retention_hours)
    return True


def take_all(store: DeadLetters, ids: list[str], everything: bool) -> list[DeadLetter]:
    """Take the named letters (or all of them) out of the store, skipping unknown IDs."""
    wanted = [letter.id for letter in store.list()] if everything else ids
    taken = [store.take(letter_id) for letter_id in wanted]
    return [letter for letter in taken if letter is not None]
