"""The dead-letter store: deliveries the router gave up on, visible and retryable.

Redis has no dead-letter queue, so the router keeps its own: one hash per record
(``dr:dl:ID``) with the destination, the reason, the last status, the number of
attempts and the times, an index sorted by time, and a per-destination count for
the ``dead_letters`` gauge. The instance itself stays in the spool: its pending
entry for that destination is marked ``dead:ID``, so the spool file is not removed
until the record is retried successfully or purged.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from router.deliveries import pending_key

PREFIX = "dr:dl:"
INDEX = "dr:dl-index"
COUNTS = "dr:dl-count"


@dataclass
class DeadLetter:
    """One delivery given up on."""

    id: str
    spool_key: str
    destination: str
    reason: str
    last_status: str
    attempts: int
    dead_at: float
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_redis(self) -> dict[str, str]:
        record = asdict(self)
        record["meta"] = json.dumps(self.meta)
        return {k: str(v) for k, v in record.items()}

    @classmethod
    def from_redis(cls, raw: dict[bytes, bytes]) -> DeadLetter:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            id=fields["id"],
            spool_key=fields["spool_key"],
            destination=fields["destination"],
            reason=fields["reason"],
            last_status=fields["last_status"],
            attempts=int(fields["attempts"]),
            dead_at=float(fields["dead_at"]),
            sop_instance_uid=fields.get("sop_instance_uid", ""),
            study_instance_uid=fields.get("study_instance_uid", ""),
            meta=json.loads(fields.get("meta") or "{}"),
        )


class DeadLetters:
    """Add, list, take back and purge dead letters (shared by every process)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def add(
        self,
        spool_key: str,
        destination: str,
        reason: str,
        last_status: str,
        attempts: int,
        meta: dict[str, Any],
    ) -> DeadLetter:
        letter = DeadLetter(
            id=uuid.uuid4().hex[:12],
            spool_key=spool_key,
            destination=destination,
            reason=reason,
            last_status=last_status,
            attempts=attempts,
            dead_at=time.time(),
            sop_instance_uid=str(meta.get("sop_instance_uid", "")),
            study_instance_uid=str(meta.get("study_instance_uid", "")),
            meta=meta,
        )
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(PREFIX + letter.id, mapping=letter.to_redis())  # type: ignore[arg-type]
        pipe.zadd(INDEX, {letter.id: letter.dead_at})
        pipe.hincrby(COUNTS, destination, 1)
        pipe.hset(pending_key(spool_key), destination, f"dead-{letter.id}@{letter.dead_at}")
        pipe.execute()
        return letter

    def get(self, letter_id: str) -> DeadLetter | None:
        raw: dict[bytes, bytes] = self.redis.hgetall(PREFIX + letter_id)  # type: ignore[assignment]
        return DeadLetter.from_redis(raw) if raw else None

    def list(self, limit: int = 1000) -> list[DeadLetter]:
        ids = self.redis.zrange(INDEX, 0, limit - 1)
        letters = [self.get(i.decode()) for i in ids]  # type: ignore[union-attr]
        return [letter for letter in letters if letter is not None]

    def counts(self) -> dict[str, int]:
        raw: dict[bytes, bytes] = self.redis.hgetall(COUNTS)  # type: ignore[assignment]
        return {k.decode(): int(v) for k, v in raw.items()}

    def take(self, letter_id: str) -> DeadLetter | None:
        """Remove a record (for retry or purge); None if it did not exist (already taken)."""
        letter = self.get(letter_id)
        if letter is None:
            return None
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(PREFIX + letter_id)
        pipe.zrem(INDEX, letter_id)
        pipe.hincrby(COUNTS, letter.destination, -1)
        removed = pipe.execute()[0]
        return letter if removed else None
