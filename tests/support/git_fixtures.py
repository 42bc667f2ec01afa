"""Real Git servers on 127.0.0.1 as pytest fixtures (a plugin, see tests/conftest.py).

Every server serves the same directory of bare repositories (``git_base``), so a
repo made with ``make_repo`` is reachable over every transport:

    repo = make_repo()                       # tests.support.repos.BareRepo
    repo.file_url                            # file:///.../app-1a2b.git
    git_daemon.url(repo)                     # git://127.0.0.1:PORT/app-1a2b.git
    git_http.url(repo)                       # http://127.0.0.1:PORT/app-1a2b.git (basic auth)
    git_http.url(repo, v0=True)              # same, but the server speaks protocol v0 only
    git_sshd.url(repo)                       # ssh://root@127.0.0.1:PORT/abs/path/app-1a2b.git
    blackhole                                # an http URL that accepts and never answers

Servers are session-scoped and stopped (with every child process) at teardown;
repos are function-scoped, each with a unique name.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.support.repos import BareRepo

HOST = "127.0.0.1"
SSHD = "/usr/sbin/sshd"

RepoRef = BareRepo | str
"""A repo given to a URL builder: a ``BareRepo`` or its directory name under ``git_base``."""


def _name(repo: RepoRef) -> str:
    return repo.name if isinstance(repo, BareRepo) else repo


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')}"
            raise RuntimeError(msg)
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    msg = f"{what} did not listen on {HOST}:{port} within 15s: {log.read_text(errors='replace')}"
    raise RuntimeError(msg)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server started in its own session, and every process it forked."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived the leader


def _server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    env["GIT_CONFIG_GLOBAL"] = os.devnull
    return env


# --- repositories -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def git_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of bare repositories that every Git server fixture serves."""
    return tmp_path_factory.mktemp("git-served")


@pytest.fixture
def make_repo(git_base: Path) -> Callable[..., BareRepo]:
    """Factory: ``make_repo(name="app", branch="main")`` → a new empty ``BareRepo``."""

    def make(name: str = "app", *, branch: str = "main") -> BareRepo:
        return BareRepo(git_base / f"{name}-{uuid.uuid4().hex[:8]}.git", branch=branch)

    return make


# --- git daemon -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GitDaemon:
    """``git daemon`` serving ``base`` read-only (plus receive-pack) on 127.0.0.1."""

    host: str
    port: int
    base: Path

    def url(self, repo: RepoRef) -> str:
        return f"git://{self.host}:{self.port}/{_name(repo)}"


@pytest.fixture(scope="session")
def git_daemon(git_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitDaemon]:
    """A running ``git daemon --export-all`` over ``git_base``."""
    log = tmp_path_factory.mktemp("git-daemon") / "daemon.log"
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                "git", "daemon", "--reuseaddr", "--export-all", "--informative-errors",
                "--enable=receive-pack", f"--base-path={git_base}", f"--listen={HOST}",
                f"--port={port}", str(git_base),
            ],
            stdout=out, stderr=subprocess.STDOUT, env=_server_env(), start_new_session=True,
        )  # fmt: skip
    try:
        _wait_listening(port, proc, log, "git daemon")
        yield GitDaemon(host=HOST, port=port, base=git_base)
    finally:
        _stop(proc)


# --- smart HTTP -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GitHttpServer:
    """``git http-backend`` behind HTTP basic auth on 127.0.0.1.

    Accepts ``username``/``password``, and ``token`` with ``token_username``
    (what gitsync sends for a bare token). ``requests`` logs every request as
    ``(method, path, authorized)``; paths under ``/v0/`` are served with protocol v0
    only, where a server refuses to send a commit no ref points at.
    """

    host: str
    port: int
    base: Path
    username: str
    password: str
    token: str
    token_username: str
    requests: list[tuple[str, str, bool]] = field(default_factory=list)

    def url(self, repo: RepoRef, *, v0: bool = False) -> str:
        prefix = "/v0" if v0 else ""
        return f"http://{self.host}:{self.port}{prefix}/{_name(repo)}"


class _GitHttpd(ThreadingHTTPServer):
    daemon_threads = True

    info: GitHttpServer  # set right after binding, before serving

    def __init__(self) -> None:
        super().__init__((HOST, 0), _GitHttpHandler)


class _GitHttpHandler(BaseHTTPRequestHandler):
    """A CGI bridge to ``git http-backend``, after a basic-auth check."""

    server: _GitHttpd

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: pytest shows failures, not access logs."""

    def _authorized(self) -> bool:
        info = self.server.info
        header = self.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, secret = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return False
        return (user, secret) in {
            (info.username, info.password),
            (info.token_username, info.token),
        }

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        info = self.server.info
        authorized = self._authorized()
        info.requests.append((self.command, self.path, authorized))
        if not authorized:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="gitsync-test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        v0 = path.startswith("/v0/")
        if v0:
            path = path.removeprefix("/v0")
        body = self._body()
        env = _server_env()
        env.update(
            GIT_PROJECT_ROOT=str(info.base),
            GIT_HTTP_EXPORT_ALL="1",
            GATEWAY_INTERFACE="CGI/1.1",
            SERVER_PROTOCOL="HTTP/1.0",
            REQUEST_METHOD=self.command,
            PATH_INFO=unquote(path),
            QUERY_STRING=query,
            CONTENT_TYPE=self.headers.get("Content-Type", ""),
            CONTENT_LENGTH=str(len(body)),
            REMOTE_USER=info.username,
            REMOTE_ADDR=self.client_address[0],
        )
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol") and not v0:
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        proc = subprocess.run(
            ["git", "http-backend"],
            input=body,
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = proc.stdout.partition(b"\n\n")
        status = 200 if proc.returncode == 0 else 500
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture(scope="session")
def git_http(git_base: Path) -> Iterator[GitHttpServer]:
    """A smart-HTTP Git server with basic auth (password and token) over ``git_base``."""
    httpd = _GitHttpd()
    httpd.info = info = GitHttpServer(
        host=HOST,
        port=int(httpd.server_address[1]),
        base=git_base,
        username="alice",
        password="correct-horse-battery",
        token="tok_" + uuid.uuid4().hex,
        token_username="x-access-token",
    )
    thread = threading.Thread(target=httpd.serve_forever, name="git-http", daemon=True)
    thread.start()
    try:
        yield info
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# --- sshd -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SshServer:
    """OpenSSH ``sshd`` on 127.0.0.1 that lets ``user`` in with ``client_key`` only.

    ``known_hosts`` matches the host key; ``wrong_known_hosts`` lists another key
    for the same address (a changed host key); ``other_key`` is a client key the
    server does not authorize.
    """

    host: str
    port: int
    user: str
    client_key: Path
    other_key: Path
    host_key_pub: str
    known_hosts: Path
    wrong_known_hosts: Path

    def url(self, repo: RepoRef | Path) -> str:
        path = repo.path if isinstance(repo, BareRepo) else Path(repo)
        return f"ssh://{self.user}@{self.host}:{self.port}{path.resolve()}"


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture(scope="session")
def git_sshd(git_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A running sshd (``-D``, own config) whose user can run git-upload-pack on ``git_base``."""
    if not Path(SSHD).exists() or shutil.which("ssh") is None:
        pytest.skip("ssh tests need sshd and ssh: apt-get install -y openssh-server openssh-client")
    user = getpass.getuser()
    privsep = Path("/run/sshd")  # Debian's sshd refuses to start without it
    if not privsep.is_dir():
        if os.geteuid() != 0:
            pytest.skip(f"sshd needs {privsep}, which only root can create")
        privsep.mkdir(mode=0o755, parents=True)
    work = tmp_path_factory.mktemp("sshd")
    work.chmod(0o755)
    host_pub = _keygen(work / "host_ed25519", "gitsync-test-host")
    client_pub = _keygen(work / "client_ed25519", "gitsync-test-client")
    _keygen(work / "other_ed25519", "gitsync-test-unauthorized")
    wrong_host_pub = _keygen(work / "wrong_host_ed25519", "gitsync-test-wrong-host")
    (work / "authorized_keys").write_text(client_pub + "\n")
    port = free_port()
    address = f"[{HOST}]:{port}"
    known_hosts = work / "known_hosts"
    known_hosts.write_text(f"{address} {' '.join(host_pub.split()[:2])}\n")
    wrong_known_hosts = work / "wrong_known_hosts"
    wrong_known_hosts.write_text(f"{address} {' '.join(wrong_host_pub.split()[:2])}\n")
    config = work / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                f"ListenAddress {HOST}",
                f"HostKey {work / 'host_ed25519'}",
                f"PidFile {work / 'sshd.pid'}",
                f"AuthorizedKeysFile {work / 'authorized_keys'}",
                f"AllowUsers {user}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "X11Forwarding no",
                "AllowTcpForwarding no",
                "PermitTTY no",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    log = work / "sshd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_listening(port, proc, log, "sshd")
        yield SshServer(
            host=HOST,
            port=port,
            user=user,
            client_key=work / "client_ed25519",
            other_key=work / "other_ed25519",
            host_key_pub=host_pub,
            known_hosts=known_hosts,
            wrong_known_hosts=wrong_known_hosts,
        )
    finally:
        _stop(proc)


# --- a server that never answers --------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BlackHole:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte (for timeouts)."""

    host: str
    port: int

    def url(self, scheme: str, repo: str = "repo.git") -> str:
        return f"{scheme}://{self.host}:{self.port}/{repo}"


@pytest.fixture(scope="session")
def black_hole() -> Iterator[BlackHole]:
    """A listener that accepts and holds connections silently until teardown."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(64)
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = listener.accept()
                held.append(conn)

    thread = threading.Thread(target=accept, name="black-hole", daemon=True)
    thread.start()
    try:
        yield BlackHole(host=HOST, port=int(listener.getsockname()[1]))
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


@pytest.fixture
def blackhole() -> Iterator[str]:
    """An http URL whose server accepts connections and never answers: a hung Git host."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hung.git"
    finally:
        sock.close()
