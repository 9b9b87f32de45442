"""`--address`: check that a Ray cluster answers before any command waits on `ray.init`.

`ray.init` on an address where nothing listens waits about a minute (a GCS address) or ends in a
traceback (`auto` with no cluster, a Ray Client address); every command that takes `--address`
(`vlprep prepare`, `stats`, `score`, `verify`) calls `check_ray_address` first instead, which
answers in one line within `timeout_s` (exit 2, jobs.cli).
"""
from __future__ import annotations

import socket

from processors.errors import UserInputError

_HINT = ("start the cluster (`ray start --head` on the head node; Ray Client listens on port 10001), "
         "fix the address, or drop --address for an embedded local Ray")


class ClusterUnreachable(UserInputError, ConnectionError):
    """No Ray cluster answers at the given address."""


def check_ray_address(address: str | None, timeout_s: float = 5.0) -> None:
    """Return when `address` (None / local / auto / host:port / ray://host:port) names a Ray cluster
    that accepts a TCP connection; else raise ClusterUnreachable naming the address and what to do."""
    if not address or address == "local":
        return
    target = address
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address
        except ImportError:       # another Ray layout: let ray.init say it
            return
        try:
            target = canonicalize_bootstrap_address("auto") or ""
        except (ConnectionError, ValueError) as exc:
            raise ClusterUnreachable(f"--address auto: no running Ray cluster found on this machine "
                                     f"({_first_line(exc)}); {_HINT}") from None
        if not target:
            return
    host, port = _host_port(address, target)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            answer = _grpc_answer(sock)
    except OSError as exc:
        why = "no answer" if isinstance(exc, (TimeoutError, socket.timeout)) else (exc.strerror or str(exc))
        raise ClusterUnreachable(f"--address {address}: no Ray cluster answers at {host}:{port} "
                                 f"({why} within {timeout_s:g} s); {_HINT}") from None
    if answer is not None:
        raise ClusterUnreachable(f"--address {address}: {host}:{port} answers, but not as a Ray cluster ({answer}; "
                                 f"the GCS listens on 6379, Ray Client on 10001, the dashboard's 8265 is not "
                                 f"an --address); {_HINT}")


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"   # + empty SETTINGS


def _grpc_answer(sock: socket.socket) -> str | None:
    """None when the peer speaks HTTP/2 as every gRPC server does (Ray's GCS and its Client server):
    it answers the client preface with a SETTINGS frame. Else what it did instead, in a few words.
    (Without this, `ray.init` on a port held by something else waits for minutes.)"""
    sock.sendall(_H2_PREFACE)
    head = b""
    while len(head) < 9:
        chunk = sock.recv(9 - len(head))     # socket timeout: raises, reported as "no answer"
        if not chunk:
            return "it closed the connection" if not head else f"it sent {head!r} and closed"
        head += chunk
    if head[3] == 0x04:                      # frame header: length (3 bytes), type 4 = SETTINGS
        return None
    return "it speaks HTTP/1" if head.startswith(b"HTTP/") else f"it sent {head[:9]!r}"


def unreachable(address: str | None, exc: BaseException) -> ClusterUnreachable:
    """`ray.init`'s ConnectionError (something answered at the address, but no Ray cluster) as one line."""
    if isinstance(exc, ClusterUnreachable):
        return exc
    return ClusterUnreachable(f"--address {address}: cannot connect to a Ray cluster there "
                              f"({_first_line(exc)}); {_HINT}")


def _host_port(address: str, target: str) -> tuple[str, int]:
    rest = target.split("://", 1)[1] if "://" in target else target
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterUnreachable(f"--address {address} is not a Ray address: give auto, host:port (the GCS, "
                                 f"e.g. 10.0.0.1:6379) or ray://host:port (Ray Client, e.g. ray://10.0.0.1:10001)")
    return host.strip("[]"), int(port)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
