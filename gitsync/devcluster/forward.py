"""A TCP relay from the real node's Service IP to the apiserver on loopback.

The apiserver listens on 127.0.0.1 only, which a Pod's network namespace cannot reach, and
there is no kube-proxy. The launcher puts the ``kubernetes`` Service IP on the Pod bridge and
runs this relay there on port 443, so a Pod's in-cluster config (``KUBERNETES_SERVICE_HOST``,
its ServiceAccount token) reaches the real apiserver, with TLS end to end (the serving cert
names the Service IP). ``python -m gitsync.devcluster.forward LISTEN_HOST:PORT TO_HOST:PORT``.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
import threading
from types import FrameType

_CHUNK = 65536


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(_CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _serve(client: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=10)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
    back.start()
    _pipe(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gitsync.devcluster.forward")
    parser.add_argument("listen", type=_address)
    parser.add_argument("target", type=_address)
    args = parser.parse_args(argv)
    server = socket.create_server(args.listen, reuse_port=False)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        server.close()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while True:
        try:
            client, _ = server.accept()
        except OSError:
            return 0
        threading.Thread(target=_serve, args=(client, args.target), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
