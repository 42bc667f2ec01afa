"""The status page of a running ``gitsync run``, read by a real headless Chromium.

Chromium comes from Debian's ``chromium`` package (``hack/install-deps.sh ui``); when it
is missing and this machine can install packages, the test installs it once, and
otherwise skips with the reason. The page's screenshot is saved under
``tests/artifacts/`` (ignored by git) and its path printed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster_fixtures import Kubectl, wait_until
from tests.support.controller_process import ControllerProcess, lease_config
from tests.support.repos import BareRepo

pytestmark = [pytest.mark.cluster, pytest.mark.git]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
GITSYNC = str(Path(sys.executable).with_name("gitsync"))
EVIL_SUBJECT = "<script>alert(1)</script> crashloop release"
GIT_PASSWORD = "hunter2-in-git"
LIVE_PASSWORD = "sw0rdfish-live"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def _find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary; installed with ``hack/install-deps.sh ui`` if it is missing."""
    found = _find_chromium()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(
            "chromium is not installed and this user cannot install Debian packages "
            "(needs root and apt-get): run `hack/install-deps.sh ui` as root"
        )
    proc = subprocess.run(
        ["bash", str(ROOT / "hack" / "install-deps.sh"), "ui"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    found = _find_chromium()
    if not found:
        pytest.skip(
            f"`hack/install-deps.sh ui` exited {proc.returncode} without a chromium binary: "
            f"{(proc.stderr or proc.stdout).strip()[-600:]}"
        )
    return found


def browse(binary: str, url: str, profile: Path, *extra: str) -> str:
    """One headless Chromium run on a fresh profile; its stdout (the DOM with --dump-dom)."""
    if profile.exists():
        shutil.rmtree(profile)
    profile.mkdir(parents=True)
    proc = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


class Dom(HTMLParser):
    """Elements, classes and text of a dumped DOM."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[tuple[str, list[str]]] = []  # (tr class, cell texts)
        self._cell: list[str] | None = None
        self._row: tuple[str, list[str]] | None = None
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self._row = (dict(attrs).get("class") or "", [])
            self.rows.append(self._row)
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row[1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def all_text(self) -> str:
        return "".join(self.text)

    def rows_of(self, cls: str) -> list[list[str]]:
        return [cells for c, cells in self.rows if c == cls]


def manifests(ns: str, *, behavior: str = "") -> dict[str, str]:
    extra = f"\n        gitsync.test/behavior: {behavior}" if behavior else ""
    return {
        "cm.yaml": (
            f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\n  namespace: {ns}\n"
            'data:\n  v: "1"\n'
        ),
        "secret.yaml": (
            f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: web-creds\n  namespace: {ns}\n"
            f"stringData:\n  password: {GIT_PASSWORD}\n"
        ),
        "web.yaml": f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web{extra}
    spec:
      containers:
        - name: web
          image: registry.invalid/web:1
""",
    }


def api(proc: ControllerProcess, path: str) -> Any:
    status, body = proc.get(path)
    assert status == 200, body
    return json.loads(body)


def status_cli(config: Path, kubeconfig: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    out = subprocess.run(
        [GITSYNC, "status", "--config", str(config), "--app", "web", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env | {"KUBECONFIG": str(kubeconfig)},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_page_shows_apps_drift_and_rollback_escaped_in_a_real_browser(
    *,
    chromium: str,
    controllers: Callable[..., ControllerProcess],
    make_repo: Callable[..., BareRepo],
    namespace: str,
    namespace_factory: Callable[[], str],
    kubectl: Kubectl,
    kubeconfig: Path,
    tmp_path: Path,
) -> None:
    """App list, a drift row after ``kubectl edit``, a marked rollback, a ``<script>``
    subject shown as text, no Secret values; the JSON matches ``gitsync status``."""
    state_ns = namespace_factory()
    repo = make_repo("web")
    good = repo.commit(manifests(namespace), message="v1: first release")
    proc = controllers(
        {
            "stateNamespace": state_ns,
            "apps": [
                {"name": "web", "repo": repo.file_url, "namespace": namespace, "interval": "2s"}
            ],
            "controller": {"leaderElection": lease_config()},
        }
    )
    proc.wait_event("sync.done", app="web", result="synced", timeout=90)

    bad = repo.commit(manifests(namespace, behavior="crashloop"), message=EVIL_SUBJECT)
    proc.wait_event("rollback.done", app="web", from_revision=bad, timeout=180)

    # A real `kubectl edit` (its editor is a sed), then a patch of the Secret's value.
    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\nsed -i \'s/^  v: "1"$/  v: "9"/\' "$1"\n')
    editor.chmod(0o755)
    kubectl("edit", "configmap", "web-config", "-n", namespace, env={"KUBE_EDITOR": str(editor)})
    live = {"stringData": {"password": LIVE_PASSWORD}}
    kubectl("patch", "secret", "web-creds", "-n", namespace, "-p", json.dumps(live))
    wait_until(
        lambda: (
            {r["field"] for r in api(proc, "/api/apps/web")["drift"] or []}
            >= {"data.v", "data.password"}
        ),
        timeout=60,
        what="both drifts on /api/apps/web",
    )

    dom_text = browse(chromium, proc.url + "/", tmp_path / "profile-dom", "--dump-dom")
    dom = Dom(dom_text)
    text = dom.all_text()
    # The app list: name, health, short sha and subject of the running revision.
    (row,) = [cells for cls, cells in dom.rows if cells and cells[0] == "web" and cls == ""]
    assert row[1].startswith("Degraded")
    assert good[:12] in row[2]
    assert "v1: first release" in row[2]
    assert "Test Author" in row[2]
    assert bad[:12] in row[5]  # quarantined
    # Drift: one row per field, Git value, live value, manager.
    drift = {cells[1]: cells for cells in dom.rows_of("drift")}
    assert drift["data.v"][0] == f"ConfigMap {namespace}/web-config"
    assert drift["data.v"][2:4] == ["1", "9"]
    assert drift["data.v"][4].startswith("kubectl-edit")
    assert drift["data.password"][2:4] == ["***", "***"]
    # The timeline: newest first, the rollback marked, with its reason.
    rollbacks = dom.rows_of("rollback")
    assert rollbacks, text
    assert bad[:12] in rollbacks[0][1]
    assert "ROLLED BACK" in rollbacks[0][2]
    assert "web" in rollbacks[0][3]  # the gate's reason names the Deployment
    assert dom.rows_of("sync")  # the first release is there too
    # The <script> subject is text: no script element anywhere in the live DOM.
    assert "script" not in {tag for tag, _ in dom.tags}
    assert EVIL_SUBJECT in text
    for secret in (GIT_PASSWORD, LIVE_PASSWORD):
        for form in (secret, base64.b64encode(secret.encode()).decode()):
            assert form not in dom_text
            assert form not in json.dumps(api(proc, "/api/apps"))

    shot = tmp_path / "status-page.png"
    browse(
        chromium,
        proc.url + "/",
        tmp_path / "profile-shot",
        f"--screenshot={shot}",
        "--window-size=1400,1200",
    )
    assert shot.stat().st_size > 10_000
    ARTIFACTS.mkdir(exist_ok=True)
    saved = ARTIFACTS / "status-page.png"
    shutil.copyfile(shot, saved)
    print(f"status page screenshot: {saved}")

    # The JSON API and `gitsync status` (text and --json) say the same.
    config = tmp_path / "gitsync.yaml"
    served = api(proc, "/api/apps/web")
    assert served["revision"] == good
    assert served["healthy_revision"] == good
    assert served["quarantined"] == [bad]
    assert served["last_sync"]["result"] == "rolled-back"
    assert served["health"]["status"] == "Degraded"
    assert served["commits"][bad]["subject"] == EVIL_SUBJECT
    ctl = served["controller"]
    assert ctl["last_result"] in ("rolled-back", "quarantined")
    assert ctl["next_poll"] or ctl["running"]
    assert row[4].startswith(("in ", "due", "syncing"))
    lines = dict(
        line.split(":", 1) for line in status_cli(config, kubeconfig).splitlines() if ":" in line
    )
    assert lines["revision"].strip() == served["revision"]
    assert lines["healthy revision"].strip() == served["healthy_revision"]
    assert lines["quarantined"].strip() == ", ".join(served["quarantined"])
    last = served["last_sync"]
    assert lines["last sync"].strip().startswith(f"{last['result']} {last['sha'][:12]} at ")
    (cli,) = json.loads(status_cli(config, kubeconfig, "--json"))["apps"]
    for key in ("revision", "healthy_revision", "quarantined", "last_sync", "history"):
        assert cli[key] == served[key], key
    # Only the controller knows a sync is in flight: its reason may add "; syncing now".
    assert cli["health"]["status"] == served["health"]["status"]
    assert served["health"]["reason"].startswith(cli["health"]["reason"])
    assert proc.terminate() == 0


def test_status_watch_redraws_and_exits_0_on_ctrl_c(
    *,
    controllers: Callable[..., ControllerProcess],
    make_repo: Callable[..., BareRepo],
    namespace: str,
    namespace_factory: Callable[[], str],
    kubeconfig: Path,
    tmp_path: Path,
) -> None:
    """``status --watch`` draws the app, redraws when a new commit lands, and Ctrl-C exits 0.

    The controller runs with ``controller.ui: false``: then ``/`` and ``/api/apps`` are 404.
    """
    state_ns = namespace_factory()
    repo = make_repo("watched")
    first = repo.commit(manifests(namespace), message="first")
    proc = controllers(
        {
            "stateNamespace": state_ns,
            "apps": [
                {"name": "web", "repo": repo.file_url, "namespace": namespace, "interval": "1s"}
            ],
            "controller": {"leaderElection": lease_config(), "ui": False},
        }
    )
    proc.wait_http()
    for path in ("/", "/api/apps", "/api/apps/web"):
        assert proc.get(path)[0] == 404, path
    proc.wait_event("sync.done", app="web", result="synced", timeout=90)

    out = tmp_path / "watch.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    with out.open("wb") as sink:
        watch = subprocess.Popen(
            [GITSYNC, "status", "--watch", "--config", str(tmp_path / "gitsync.yaml")],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env | {"KUBECONFIG": str(kubeconfig)},
        )
    try:
        wait_until(
            lambda: f"revision:         {first}" in out.read_text(),
            timeout=30,
            what="the first frame",
        )
        more = (
            f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: more\n  namespace: {namespace}\n"
        )
        second = repo.commit(manifests(namespace) | {"more.yaml": more}, message="second")
        wait_until(
            lambda: f"revision:         {second}" in out.read_text(),
            timeout=60,
            what="a redraw with the new revision",
        )
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=10) == 0
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    frames = out.read_text().count("\x1b[H\x1b[2J")
    assert frames >= 2
    assert "commit:           second (Test Author" in out.read_text()
    assert proc.terminate() == 0
