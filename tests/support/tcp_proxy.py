"""A loopback TCP relay that can freeze: an API server that stops answering, on demand.

    proxy = TcpProxy(("127.0.0.1", 6443))     # relays 127.0.0.1:proxy.port -> the target
    proxy.freeze()                             # open connections hang, new ones too
    proxy.close()

TLS passes through untouched, so a kubeconfig that only swaps the port keeps working.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from pathlib import Path

import yaml


class TcpProxy:
    """Relays bytes both ways in threads; ``freeze()`` stops moving them (sockets stay open)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="tcp-proxy-accept", daemon=True).start()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                if self._closed.is_set():
                    return
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while not self._closed.is_set():
            if not self._flowing.wait(0.1):
                continue
            try:
                ready, _, _ = select.select([src], [], [], 0.1)
                if not ready or not self._flowing.is_set():
                    continue
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except (OSError, ValueError):  # ValueError: select() on a socket close() ended
                return


def kubeconfig_via(proxy: TcpProxy, kubeconfig: Path, out: Path) -> Path:
    """A copy of ``kubeconfig`` whose server is reached through ``proxy``."""
    doc = yaml.safe_load(kubeconfig.read_text())
    for entry in doc["clusters"]:
        entry["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    out.write_text(yaml.safe_dump(doc))
    return out
