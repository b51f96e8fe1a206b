"""Admitting an accepted instance: its inbox record and its route task, in one transaction.

The SCP answers a modality only after this returns, so it sits on the path every
instance waits for (storescu sends the next one only after the answer). Celery's
``send_task`` followed by a separate inbox write cost two Redis round trips and
about a millisecond of CPU per instance. Here Celery still builds the task message
(``as_task_v2``) and kombu still serializes it; only the last step, the LPUSH that
kombu's Redis transport would make, goes into one MULTI with the inbox record. A
broker lost before EXEC has stored neither. (Redis does not undo one command when
another fails inside EXEC, which only a key of the wrong type could cause; the SCP
then refuses the instance, and the route task the stalled-work sweep queues for the
orphan record finds no spool file and removes it.)

The envelope is the one kombu's Redis transport puts on a queue (and its consumers
read back); ``tests/integration/test_admission.py`` compares it with what
``send_task`` stores, so a kombu release that changes it fails there first.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

import redis
from celery import Celery
from kombu.serialization import dumps as serialize

from router.inbox import INBOX
from router.queue import ROUTE_QUEUE, ROUTE_TASK

PERSISTENT = 2
"""AMQP delivery mode 2, as Celery's producer sets it for every task."""


class RouteAdmission:
    """Writes an instance's inbox record and its route task in one Redis transaction."""

    def __init__(self, app: Celery, client: redis.Redis) -> None:
        self.app = app
        self.redis = client
        self.origin = f"dicom-router-scp-{os.getpid()}@{socket.gethostname()}"

    def __call__(self, spool_key: str, meta: dict[str, Any]) -> None:
        """Record and queue; raises redis.RedisError when the broker did not take both."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(INBOX, spool_key, json.dumps(meta))
            pipe.lpush(ROUTE_QUEUE, self.message(spool_key, meta))
            pipe.execute()

    def message(self, spool_key: str, meta: dict[str, Any]) -> bytes:
        """The route task as kombu's Redis transport stores it on the queue."""
        task_id = str(uuid.uuid4())
        task = self.app.amqp.as_task_v2(
            task_id,
            ROUTE_TASK,
            [spool_key, meta],
            {},
            # The default is a repr of the arguments; the key names the instance
            # well enough for monitoring tools, and costs nothing to make.
            argsrepr=repr([spool_key]),
            kwargsrepr="{}",
            origin=self.origin,
            ignore_result=None,  # as send_task sends it: the app's setting applies
        )
        content_type, content_encoding, body = serialize(  # type: ignore[no-untyped-call]
            task.body, serializer="json"
        )
        envelope = {
            "body": base64.b64encode(body.encode() if isinstance(body, str) else body).decode(),
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": task.headers,
            "properties": {
                **task.properties,
                "delivery_mode": PERSISTENT,
                "delivery_info": {"exchange": "", "routing_key": ROUTE_QUEUE},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        return json.dumps(envelope).encode()
