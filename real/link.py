"""The robot server's socket: bound with bounded input, and with CurveZMQ when keys are given.

- **Bounded input**: ``MAXMSGSIZE`` (a peer that sends a larger frame is disconnected by libzmq before
  the frame is buffered; requests carry no images, so the limit is the request header's size), receive
  and send high-water marks per peer (a flood queues at most ``hwm`` messages each way; past that
  libzmq stops reading that peer's TCP stream, and replies to a peer that does not read are dropped).
- **CURVE** (``keys``, a directory made by ``stepwise-robot-server keys init``, see ``real.keys``):
  traffic is encrypted and the server's ZAP handler (pyzmq's ``ThreadAuthenticator`` on the server's
  own context) admits only the public keys in ``<keys>/allowed``; a client with another key, or
  without keys, fails the handshake and never reaches the request loop.
- A monitor socket reports failed handshakes, which the server counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from real.keys import load_allowed, load_secret

log = logging.getLogger(__name__)

HANDSHAKE_FAILED = ("EVENT_HANDSHAKE_FAILED_AUTH", "EVENT_HANDSHAKE_FAILED_PROTOCOL", "EVENT_HANDSHAKE_FAILED_NO_DETAIL")


@dataclass
class Link:
    """A bound ROUTER socket with its own context, authenticator and monitor."""

    context: Any
    socket: Any
    monitor: Any
    authenticator: Any = None
    allowed: set[bytes] = field(default_factory=set)
    denied: int = 0            # handshakes with a key not in the allow-list
    handshake_failed: int = 0  # every failed handshake (wrong mechanism, denied key, bad crypto)

    def callback(self, domain: str, client_key: bytes) -> bool:
        """The ZAP decision (runs in the authenticator's thread): is this client key allowed?"""
        ok = client_key in self.allowed
        if not ok:
            self.denied += 1
            log.warning("refused a client key not in the allow-list: %s", client_key.decode(errors="replace"))
        return ok

    def read_monitor(self) -> None:
        """Count the handshake failures the monitor reported (non-blocking)."""
        import zmq
        from zmq.utils.monitor import recv_monitor_message

        failed = {getattr(zmq, name) for name in HANDSHAKE_FAILED}
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] in failed:
                self.handshake_failed += 1

    def close(self) -> None:
        """Close the sockets, stop the authenticator and end the context."""
        try:
            self.socket.disable_monitor()
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        self.monitor.close(0)
        self.socket.close(0)
        if self.authenticator is not None:
            self.authenticator.stop()
        self.context.term()


def bind_link(host: str, port: int, keys: str | Path | None, max_request_bytes: int, hwm: int) -> tuple[Link, int]:
    """Bind a ROUTER on ``host:port`` (0: a free port); returns the link and the bound port."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, int(max_request_bytes))
    sock.setsockopt(zmq.RCVHWM, int(hwm))
    sock.setsockopt(zmq.SNDHWM, int(hwm))
    link = Link(context=ctx, socket=sock, monitor=None)
    try:
        if keys is not None:
            from zmq.auth.thread import ThreadAuthenticator

            keys = Path(keys)
            public, secret = load_secret(keys / "server.key_secret")
            link.allowed = load_allowed(keys / "allowed")
            link.authenticator = ThreadAuthenticator(ctx, log=logging.getLogger("real.link.zap"))
            link.authenticator.start()
            link.authenticator.configure_curve_callback(domain="*", credentials_provider=link)
            sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
        mask = 0
        for name in HANDSHAKE_FAILED:
            mask |= getattr(zmq, name)
        link.monitor = sock.get_monitor_socket(mask)
        addr = f"tcp://{'[::1]' if host == '::1' else host}"
        if host == "::1":
            sock.setsockopt(zmq.IPV6, 1)
        try:
            if int(port) == 0:
                port = sock.bind_to_random_port(addr)
            else:
                sock.bind(f"{addr}:{port}")
        except zmq.ZMQError as err:
            raise OSError(f"cannot bind {addr}:{port} ({err}): is another server on that port? pick port=...") from None
    except BaseException:
        if link.monitor is None:
            link.monitor = ctx.socket(zmq.PAIR)
        link.close()
        raise
    return link, int(port)
