"""Network work that one thread can interleave: generators that say what they wait for.

A route task sends one instance to every destination it already talks to, and
each send spends most of its time waiting for its peer. Sending from one thread
per destination made the threads take turns at the GIL at every system call:
about 30 thread switches per instance for three destinations, and a fifth more
CPU than the same sends interleaved here (docs/performance.md). Instead, the
sending code is written as generators (*steps*) that yield a :class:`Wait` when a
socket is not ready; ``run_all`` drives several at once from one thread with
``poll``, and ``run`` drives one.

A step generator yields :class:`Start` before its first operation on a socket.
``run`` leaves the socket as it is (blocking, with its timeout: a wait never
happens and the socket enforces the timeout itself); ``run_all`` makes it
non-blocking for the duration and enforces each wait's timeout by raising
``TimeoutError`` into the generator, as the blocking socket would have.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Start:
    """The generator is about to use ``sock``."""

    sock: socket.socket


@dataclass(frozen=True)
class Wait:
    """The generator can go on once ``sock`` is writable (``write``) or readable."""

    sock: socket.socket
    write: bool
    timeout: float | None
    """Seconds to wait at most; None waits for ever."""


Steps = Generator[Start | Wait, None, T]


def run(steps: Steps[T]) -> T:
    """Drive one generator to its end in this thread; its result, or its exception."""
    error: BaseException | None = None
    while True:
        try:
            request = steps.throw(error) if error is not None else next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
        error = None
        if isinstance(request, Wait) and not _ready(request):
            error = TimeoutError("timed out")


def _ready(wait: Wait) -> bool:
    return ready(wait.sock, wait.write, wait.timeout)


def ready(sock: socket.socket, write: bool, timeout: float | None) -> bool:
    """True once ``sock`` is writable (``write``) or readable, or has an error or a
    hang-up to report, within ``timeout`` seconds (None: for ever). ``poll``, not
    ``select``: no limit on descriptor numbers."""
    poller = select.poll()
    try:
        poller.register(sock, _EVENTS[write])
    except (OSError, ValueError):
        return True  # a closed socket: the next operation on it says what is wrong
    timeout_ms = None if timeout is None else max(0, int(timeout * 1000))
    return bool(poller.poll(timeout_ms))


_EVENTS = {True: select.POLLOUT, False: select.POLLIN}
"""What a wait polls for, by ``Wait.write``; errors and hang-ups are always reported."""


@dataclass
class Outcome:
    """How one of ``run_all``'s generators ended: a value, or an exception."""

    value: object = None
    error: Exception | None = None


def run_all(all_steps: Sequence[Steps[object]]) -> list[Outcome]:
    """Drive several generators at once from this thread; each one's outcome, in order.

    One generator's exception or timeout ends only that generator. A lone generator
    is run as it is (``run``): with nothing to interleave, its socket stays blocking,
    which takes fewer system calls than waiting in ``poll``.
    """
    if len(all_steps) == 1:
        try:
            return [Outcome(value=run(all_steps[0]))]
        except Exception as exc:
            return [Outcome(error=exc)]
    outcomes = [Outcome() for _ in all_steps]
    waiting: dict[int, tuple[Wait, float | None]] = {}
    switched: dict[socket.socket, float | None] = {}

    def advance(index: int, error: BaseException | None = None) -> None:
        steps = all_steps[index]
        waiting.pop(index, None)
        while True:
            try:
                request = steps.throw(error) if error is not None else next(steps)
            except StopIteration as done:
                outcomes[index].value = done.value
                return
            except Exception as exc:
                outcomes[index].error = exc
                return
            error = None
            if isinstance(request, Start):
                if request.sock not in switched:
                    switched[request.sock] = request.sock.gettimeout()
                    request.sock.setblocking(False)
                continue
            timeout = request.timeout
            deadline = None if timeout is None else time.monotonic() + timeout
            waiting[index] = (request, deadline)
            return

    try:
        for index in range(len(all_steps)):
            advance(index)
        while waiting:
            deadlines = [d for _w, d in waiting.values() if d is not None]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            ready = _poll_ready(waiting, timeout)
            now = time.monotonic()
            for index, (_wait, deadline) in list(waiting.items()):
                if index in ready:
                    advance(index)
                elif deadline is not None and now >= deadline:
                    advance(index, TimeoutError("timed out"))
    finally:
        for index in list(waiting):  # only after an error of this function's own
            all_steps[index].close()
        for sock, timeout in switched.items():
            with contextlib.suppress(OSError):
                sock.settimeout(timeout)
    return outcomes


def _poll_ready(waiting: dict[int, tuple[Wait, float | None]], timeout: float | None) -> set[int]:
    """The waits that can go on, after at most ``timeout`` seconds."""
    poller = select.poll()
    by_fd: dict[int, int] = {}
    ready: set[int] = set()
    for index, (wait, _deadline) in waiting.items():
        fd = wait.sock.fileno()
        if fd < 0:  # closed meanwhile: the next operation on it says so
            ready.add(index)
        else:
            poller.register(fd, _EVENTS[wait.write])
            by_fd[fd] = index
    if ready:
        timeout = 0.0
    timeout_ms = None if timeout is None else int(timeout * 1000) + 1
    ready.update(by_fd[fd] for fd, _events in poller.poll(timeout_ms))
    return ready
