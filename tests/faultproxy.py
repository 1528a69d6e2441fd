"""A loopback TCP proxy that can refuse, hold or delay traffic on demand.

Put between gpubackfill and a real server (Redis on a unix socket,
ClickHouse's HTTP interface) to make that server vanish, hang or crawl
while a job runs.  Counts the connections it was asked for, so a test can
tell a waiting client from one that spins.
"""

from __future__ import annotations

import select
import socket
import threading
import time


class FaultProxy:
    def __init__(self, target: str | tuple[str, int]):
        self.target = target                  # unix socket path or (host, port)
        self.mode = "pass"                    # pass | refuse | hold
        self.delay = 0.0                      # seconds added before each forwarded read
        self.connections = 0                  # accepted since the last reset
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.drop_all()
        self._sock.close()

    def set(self, mode: str, delay: float = 0.0) -> None:
        with self._lock:
            self.mode, self.delay = mode, delay
            if mode != "pass":
                self.drop_all()

    def reset_count(self) -> None:
        with self._lock:
            self.connections = 0

    def drop_all(self) -> None:
        for s in list(self._open):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self._open.clear()

    def _upstream(self) -> socket.socket:
        if isinstance(self.target, str):
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            up.connect(self.target)
        else:
            up = socket.create_connection(self.target, timeout=5)
        return up

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                mode = self.mode
            if mode == "refuse":
                client.close()
                continue
            self._open.append(client)
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        up = None
        try:
            while self.mode == "hold" and not self._stop.is_set():
                time.sleep(0.05)
            if self.mode != "pass":
                return
            up = self._upstream()
            self._open.append(up)
            pair = {client: up, up: client}
            while not self._stop.is_set():
                ready, _, _ = select.select(list(pair), [], [], 0.2)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if self.delay:
                        time.sleep(self.delay)
                    pair[s].sendall(data)
        except (OSError, ValueError):  # the socket was dropped under us (a fault being injected)
            return
        finally:
            for s in (client, up):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass
