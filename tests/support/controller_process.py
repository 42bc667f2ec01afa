"""``gitsync run`` as a real subprocess, for the controller tests.

    proc = start_controller(tmp_path, config={...}, kubeconfig=kubeconfig)
    proc.wait_event("sync.done", app="web")       # polls its JSON log lines
    proc.get("/readyz")                            # (status, body) from its HTTP server
    proc.kill() / proc.terminate()                 # by PID, its own process group

Every process started here is killed at fixture teardown (``controllers`` fixture), so a
failed assertion never leaves a controller running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.git_fixtures import free_port

GITSYNC = str(Path(sys.executable).with_name("gitsync"))


@dataclass
class ControllerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int
    name: str
    started: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    out.append(doc)
        return out

    def events(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.lines()
            if e.get("event") == event and all(e.get(k) == v for k, v in match.items())
        ]

    def wait_event(
        self, event: str, *, timeout: float = 30.0, count: int = 1, **match: Any
    ) -> dict[str, Any]:
        """The ``count``-th log line with this event name and fields; fail with the log."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(event, **match)
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None and not self.events(event, **match):
                pytest.fail(f"{self.name} exited {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name}: no {event} {match} in {timeout}s:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        req = urllib.request.Request(  # noqa: S310 - always http://127.0.0.1
            self.url + path, data=body, method=method, headers=dict(headers or {})
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request(path)

    def wait_http(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError):
                self.get("/healthz")
                return
            time.sleep(0.1)
        pytest.fail(f"{self.name}: HTTP server not up in {timeout}s:\n{self.tail()}")

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: what a node failure or OOM kill looks like."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> int:
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


def lease_config(**overrides: Any) -> dict[str, Any]:
    """Short lease timings so failover tests take seconds, not the 15 s default."""
    return {"leaseDuration": "4s", "renewDeadline": "3s", "retryPeriod": "500ms", **overrides}


@pytest.fixture
def controllers(tmp_path: Path, kubeconfig: Path) -> Iterator[Callable[..., ControllerProcess]]:
    """Factory: ``start(config, name=..., env=..., kubeconfig=...)``; all killed at teardown."""
    started: list[ControllerProcess] = []

    def start(
        config: Mapping[str, Any],
        *,
        name: str = "gitsync",
        env: Mapping[str, str] | None = None,
        kubeconfig_path: Path | None = None,
        port: int | None = None,
    ) -> ControllerProcess:
        port = port or free_port()
        cfg = dict(config)
        cfg["controller"] = {"listen": f"127.0.0.1:{port}", **dict(cfg.get("controller") or {})}
        cfg.setdefault("cacheDir", str(tmp_path / f"cache-{name}"))
        path = write_config(tmp_path / f"{name}.yaml", cfg)
        log_path = tmp_path / f"{name}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        full_env |= {"KUBECONFIG": str(kubeconfig_path or kubeconfig), "POD_NAME": name}
        full_env |= dict(env or {})
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [GITSYNC, "run", "--config", str(path), "--log-format", "json"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
            )
        cp = ControllerProcess(proc=proc, log_path=log_path, port=port, name=name)
        started.append(cp)
        return cp

    yield start
    for cp in started:
        if cp.proc.poll() is None:
            cp.signal(signal.SIGKILL)
            cp.proc.wait(timeout=10)
