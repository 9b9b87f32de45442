"""`--address`: check that a Ray cluster answers before any command waits on `ray.init`.

`ray.init` on an address where nothing listens waits about a minute (a GCS address) or ends in a
traceback (`auto` with no cluster, a Ray Client address); every command that takes `--address`
(`vlprep prepare`, `stats`, `score`, `verify`) calls `check_ray_address` first instead, which
answers in one line within `timeout_s` (exit 2, jobs.cli).
"""
from __future__ import annotations

import socket
import time
from contextlib import contextmanager

from processors.errors import UserInputError

_HINT = ("start the cluster (`ray start --head` on the head node; Ray Client listens on port 10001), "
         "fix the address, or drop --address for an embedded local Ray")


class ClusterUnreachable(UserInputError, ConnectionError):
    """No Ray cluster answers at the given address."""


def check_ray_address(address: str | None, timeout_s: float = 5.0) -> None:
    """Return when `address` (None / local / auto / host:port / ray://host:port) may name a Ray
    cluster: it accepts a TCP connection, does not show itself to be something else (silent, or
    HTTP/1) at the gRPC handshake, and does not answer "unimplemented" to the Ray service the address
    names (a gRPC server of another kind, or the GCS given as ray://, Ray Client given as host:port);
    else raise ClusterUnreachable naming the address and what to do.
    Anything less certain is left to `ray.init`, whose ConnectionError `ray_connection` words."""
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
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            answer = None if _tls() else _grpc_answer(sock)
    except OSError as exc:
        why = (f"no answer within {timeout_s:g} s" if isinstance(exc, (TimeoutError, socket.timeout))
               else (exc.strerror or str(exc)))
        raise ClusterUnreachable(f"--address {address}: no Ray cluster answers at {host}:{port} "
                                 f"({why}); {_HINT}") from None
    if answer is None and not _tls():
        client = address.startswith("ray://")
        answer = _ray_service_answer(host, port, client, deadline)
        if answer == _OTHER_KIND:
            what, form = (("the Ray GCS, which takes no ray:// prefix", f"{host}:{port}") if client else
                          ("a Ray Client server, which takes the ray:// form", f"ray://{host}:{port}"))
            raise ClusterUnreachable(f"--address {address}: {host}:{port} is {what}: give --address {form}")
    if answer is not None:
        raise ClusterUnreachable(f"--address {address}: {host}:{port} answers, but not as a Ray cluster ({answer}; "
                                 f"the GCS listens on 6379, Ray Client on 10001, the dashboard's 8265 is not "
                                 f"an --address); {_HINT}")


_SETTINGS = 0x4                # the HTTP/2 frame type a server's preface starts with
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"   # + empty SETTINGS


def _tls() -> bool:
    """Ray's gRPC over TLS (RAY_USE_TLS): a plaintext handshake proves nothing there."""
    import os

    return os.environ.get("RAY_USE_TLS", "0").strip().lower() in ("1", "true", "yes")


def _grpc_answer(sock: socket.socket) -> str | None:
    """A gRPC server (Ray's GCS, its Client server) answers the HTTP/2 client preface with a SETTINGS
    frame, its first frame (RFC 9113 §3.4). Returns what the peer did instead — an HTTP/1 or HTML reply,
    other bytes (an SSH banner, a Redis error), or closing the connection without a byte — else None
    (a SETTINGS frame header). Without this, `ray.init` waits 30 s (Ray Client) to minutes (the GCS)
    on such a port. Silence raises socket.timeout, reported as "no answer"."""
    sock.sendall(_H2_PREFACE)
    head = b""
    while len(head) < 9:
        chunk = sock.recv(9 - len(head))     # socket timeout: raises, reported as "no answer"
        if not chunk:
            break
        head += chunk
    if head.startswith(b"HTTP/"):
        return "it speaks HTTP/1"
    if head.lstrip().startswith(b"<"):
        return "it sends HTML"
    if not head:
        return "it closes the connection without a reply"
    if len(head) < 9 or head[3] != _SETTINGS:
        return f"it does not speak HTTP/2: it replies {head[:16]!r}"
    return None


# One method of each Ray service an --address names, asked with an empty request (Ray Client: its PING,
# ClusterInfoType.PING = 6): a gRPC server without that service answers UNIMPLEMENTED at once, while
# `ray.init` would retry it for ~20 s; Ray answers anything else (OK; UNAUTHENTICATED under token auth).
_GCS_METHOD = ("/ray.rpc.NodeInfoGcsService/GetClusterId", b"")      # what ray.init asks the GCS first
_CLIENT_METHOD = ("/ray.rpc.RayletDriver/ClusterInfo", b"\x08\x06")
_OTHER_KIND = "the other Ray service"


def _ray_service_answer(host: str, port: int, client: bool, deadline: float) -> str | None:
    """After the HTTP/2 handshake: does host:port serve the Ray service the address names (the GCS for
    host:port, Ray Client for ray://)? None: it does, or the call cannot tell (no grpc module, a time-out,
    a dropped connection: left to `ray.init`); `_OTHER_KIND`: it serves the other one; else what it is."""
    try:
        import grpc
    except ImportError:
        return None
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def status(method: tuple[str, bytes]):
        try:
            channel.unary_unary(method[0])(method[1], timeout=max(deadline - time.monotonic(), 0.5))
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    want, other = (_CLIENT_METHOD, _GCS_METHOD) if client else (_GCS_METHOD, _CLIENT_METHOD)
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        if status(want) != grpc.StatusCode.UNIMPLEMENTED:
            return None
        if status(other) in (grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED):   # what Ray answers
            return _OTHER_KIND
    return f"a gRPC server, but not {'Ray Client' if client else 'the Ray GCS'}"


@contextmanager
def ray_connection(address: str | None):
    """Around the code that calls `ray.init(address=...)`: its ConnectionError (something answered at
    the address, but no Ray cluster) leaves as one ClusterUnreachable line (jobs.cli: exit 2)."""
    try:
        yield
    except ClusterUnreachable:
        raise
    except ConnectionError as exc:
        raise ClusterUnreachable(f"--address {address}: cannot connect to a Ray cluster there "
                                 f"({_first_line(exc)}); {_HINT}") from None


def _host_port(address: str, target: str) -> tuple[str, int]:
    rest = target.split("://", 1)[1] if "://" in target else target
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterUnreachable(f"--address {address} is not a Ray address: give auto, host:port (the GCS, "
                                 f"e.g. 10.0.0.1:6379) or ray://host:port (Ray Client, e.g. ray://10.0.0.1:10001)")
    return host.strip("[]"), int(port)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
