"""Thin wrappers around the DCMTK command line tools (``storescu``,
``dcmsend``, ``echoscu``).

Every wrapper

* runs the binary with ``TCP_NODELAY=1`` added to the environment: DCMTK
  leaves Nagle's algorithm on unless asked, and a DCMTK peer then stalls about
  40 ms per DIMSE message on loopback (delayed-ACK interaction);
* never raises on a non-zero exit status: it returns the
  :class:`subprocess.CompletedProcess` (text mode, stdout and stderr
  captured) so the caller can assert on ``returncode`` and show the output;
* raises :class:`subprocess.TimeoutExpired` (after killing the child) only if
  the tool runs longer than ``timeout`` seconds.

Files are passed explicitly on the command line, so the caller decides
exactly what is sent and in which order (hundreds of files are fine: the
limit is the kernel's argument size, ~2 MiB).  Only when the arguments would
exceed 100 kB (a few thousand files) are the files symlinked into a
temporary directory handed over with ``+sd +r`` (scan directories, recurse);
the tools then send them in directory order, not in the given order.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .ports import LOCALHOST

__all__ = [
    "dcmsend",
    "dcmtk_env",
    "echoscu",
    "storescu",
]

#: Above this many bytes of file arguments the files go through a directory.
_MAX_INLINE_ARGS_BYTES = 100_000


def dcmtk_env() -> dict[str, str]:
    """Return a copy of the current environment with ``TCP_NODELAY=1`` set."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"DCMTK tool {name!r} not found on PATH (apt-get install dcmtk)")
    return path


@contextmanager
def _file_arguments(files: Sequence[Path]) -> Iterator[list[str]]:
    """Yield the command line arguments that name ``files``.

    Short lists are passed verbatim.  Long lists are symlinked (numbered, so
    equal base names do not collide) into a temporary directory which is
    passed with ``+sd +r``; DCMTK then sends in directory order.
    """
    paths = [str(Path(f).resolve()) for f in files]
    if not paths:
        raise ValueError("no files to send")
    if sum(len(p) + 1 for p in paths) <= _MAX_INLINE_ARGS_BYTES:
        yield paths
        return
    with tempfile.TemporaryDirectory(prefix="dcmtk-files-") as tmp:
        width = len(str(len(paths)))
        for index, path in enumerate(paths):
            os.symlink(path, Path(tmp) / f"{index:0{width}d}.dcm")
        yield ["+sd", "+r", tmp]


def _run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        env=dcmtk_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def storescu(
    files: Sequence[Path],
    port: int,
    called_ae: str = "ROUTER",
    calling_ae: str = "STORESCU",
    host: str = LOCALHOST,
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` with DCMTK ``storescu`` over one association.

    ``storescu`` proposes the uncompressed transfer syntaxes (plus the file's
    own one for compressed files) and may convert between uncompressed
    encodings; use :func:`dcmsend` to send files strictly as they are
    encoded.  By default ``storescu`` halts on the first failed C-STORE; pass
    ``extra_args=("-nh",)`` to carry on.

    Parameters
    ----------
    files:
        DICOM files (Part 10 format) to send, in order (see the module
        docstring for very long lists).
    port, host:
        Address of the storage SCP.
    called_ae, calling_ae:
        AE titles put in the A-ASSOCIATE-RQ.
    extra_args:
        Further ``storescu`` options, inserted before the peer address.
    timeout:
        Seconds before the process is killed and
        :class:`subprocess.TimeoutExpired` is raised.

    Returns
    -------
    subprocess.CompletedProcess[str]
        The finished process; ``returncode`` is 0 when every store succeeded.
    """
    with _file_arguments(files) as file_args:
        argv = [
            _binary("storescu"),
            "-aet",
            calling_ae,
            "-aec",
            called_ae,
            *extra_args,
            host,
            str(port),
            *file_args,
        ]
        return _run(argv, timeout)


def dcmsend(
    files: Sequence[Path],
    port: int,
    called_ae: str = "ROUTER",
    calling_ae: str = "DCMSEND",
    host: str = LOCALHOST,
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` with DCMTK ``dcmsend`` in their own transfer syntax.

    Runs ``dcmsend -nuc --decompress-never``: UID values are not checked and
    compressed data sets are never decompressed, so each instance travels in
    the transfer syntax it is stored in (the peer must accept it).
    ``dcmsend`` opens further associations if the presentation contexts do
    not fit into one.

    Parameters are as for :func:`storescu`; ``extra_args`` could for example
    be ``("-nh",)`` (do not halt on the first failure) or ``("-v",)``.
    """
    with _file_arguments(files) as file_args:
        argv = [
            _binary("dcmsend"),
            "-nuc",
            "--decompress-never",
            "-aet",
            calling_ae,
            "-aec",
            called_ae,
            *extra_args,
            host,
            str(port),
            *file_args,
        ]
        return _run(argv, timeout)


def echoscu(
    port: int,
    called_ae: str = "ROUTER",
    calling_ae: str = "ECHOSCU",
    host: str = LOCALHOST,
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Send one C-ECHO with DCMTK ``echoscu``; ``returncode`` 0 on success."""
    argv = [
        _binary("echoscu"),
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        *extra_args,
        host,
        str(port),
    ]
    return _run(argv, timeout)


@contextmanager
def storescp(
    out_dir: Path, ae_title: str = "STORESCP", options: Sequence[str] = ()
) -> Iterator[int]:
    """Run DCMTK ``storescp`` on a free port for the duration of a ``with``; yields the port.

    Received instances are written into ``out_dir`` (which must exist); ``options``
    are further storescp options (``+xa`` to accept every transfer syntax, the TLS
    ones, ...).
    """
    from .ports import free_port, wait_for_port

    port = free_port()
    argv = [_binary("storescp"), "-aet", ae_title, *options, "-od", str(out_dir), str(port)]
    proc = subprocess.Popen(argv, env=dcmtk_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(LOCALHOST, port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
