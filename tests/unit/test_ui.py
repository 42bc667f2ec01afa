"""The status page, its JSON and ``gitsync status`` text, rendered from overview data."""

from __future__ import annotations

import http.client
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from gitsync import cli, log
from gitsync.config import AppConfig
from gitsync.drift.compare import OBJECT_PATH, DriftReport
from gitsync.engine.inventory import AppState, HistoryEntry, InventoryEntry
from gitsync.model import ObjectRef
from gitsync.runtime import ui
from gitsync.runtime.overview import (
    DEGRADED,
    FAILED,
    HEALTHY,
    PROGRESSING,
    AppOverview,
    CommitInfo,
    CommitLookup,
    RunnerView,
    build,
    health_of,
    public_url,
)
from gitsync.runtime.server import Server
from gitsync.source import gitcache
from tests.support.repos import BareRepo

GOOD = "a" * 40
BAD = "b" * 40
OLD = "c" * 40
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
EVIL = "<script>alert(1)</script>"
APP = AppConfig.model_validate({"name": "web", "repo": "https://git.example/web.git"})


class Tags(HTMLParser):
    """Every start tag of a document, and its text, as a browser's parser would see them."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def names(self) -> set[str]:
        return {t for t, _ in self.tags}

    def all_text(self) -> str:
        return "".join(self.text)


def commits(**subjects: str) -> Any:
    table = {
        GOOD: CommitInfo(sha=GOOD, subject=subjects.get("good", "v1"), author="Ann <ann@x.test>"),
        BAD: CommitInfo(sha=BAD, subject=subjects.get("bad", "v2"), author="Bob <bob@x.test>"),
    }
    return table.get


def history(*entries: tuple[str, str, str]) -> tuple[HistoryEntry, ...]:
    return tuple(
        HistoryEntry(sha=sha, result=result, time=f"2026-11-30T11:0{i}:00+00:00", reason=reason)
        for i, (sha, result, reason) in enumerate(entries)
    )


def healthy_state(**extra: Any) -> AppState:
    ref = ObjectRef(group="apps", version="v1", kind="Deployment", namespace="ns", name="web")
    fields: dict[str, Any] = {
        "revision": GOOD,
        "healthy_revision": GOOD,
        "inventory": (InventoryEntry(ref=ref),),
        "history": history((OLD, "synced", ""), (GOOD, "synced", "")),
    }
    return AppState(app="web", **(fields | extra))


def rolled_back_state() -> AppState:
    return healthy_state(
        quarantined=(BAD,),
        history=history(
            (GOOD, "synced", ""),
            (BAD, "rolled-back", "Deployment ns/web: CrashLoopBackOff (3 restarts)"),
        ),
    )


def drift_report(kind: str, path: str, desired: Any, live: Any, *, group: str = "") -> DriftReport:
    ref = ObjectRef(group=group, version="v1", kind=kind, namespace="ns", name="web")
    return DriftReport(
        app="web",
        ref=ref,
        path=path,
        desired=desired,
        live=live,
        manager="kubectl-patch",
        operation="Update",
        time="2026-11-30T11:59:00Z",
    )


def page(*apps: AppOverview) -> str:
    return ui.render_page(list(apps), now=NOW)


# --- health ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "runner", "status", "reason"),
    [
        (healthy_state(), None, HEALTHY, ""),
        (healthy_state(), RunnerView(last_result="unchanged"), HEALTHY, ""),
        (AppState(app="web"), None, PROGRESSING, "waiting for the first sync"),
        (healthy_state(), RunnerView(running_seconds=4.0), HEALTHY, "syncing now (4s)"),
        (rolled_back_state(), RunnerView(running_seconds=0.2), DEGRADED, "syncing now (0s)"),
        (
            healthy_state(degraded="rollback from bbbb failed: API down"),
            RunnerView(last_result="degraded"),
            DEGRADED,
            "rollback from bbbb failed: API down",
        ),
        (rolled_back_state(), None, DEGRADED, f"rolled back from {BAD[:12]} to {GOOD[:12]}"),
        (rolled_back_state(), RunnerView(last_result="quarantined"), DEGRADED, "rolled back"),
        (
            healthy_state(history=history((GOOD, "failed", "deploy/a.yaml:3: bad"))),
            None,
            FAILED,
            "deploy/a.yaml:3: bad",
        ),
        (healthy_state(), RunnerView(last_result="failed", last_error="fetch: no"), FAILED, "no"),
    ],
)
def test_health_says_one_word_and_why(
    state: AppState, runner: RunnerView | None, status: str, reason: str
) -> None:
    """Healthy, Progressing, Degraded (rollback, unfinished rollback) and Failed, each with why."""
    health = health_of(state, runner)
    assert health.status == status
    assert reason in health.reason


# --- the page ----------------------------------------------------------------------------


def test_healthy_app_shows_revision_subject_author_and_next_poll() -> None:
    """The app list names the short sha, subject, author, health, last sync and next poll."""
    runner = RunnerView(
        last_result="unchanged",
        last_finished="2026-11-30T11:59:58+00:00",
        next_poll=(NOW + timedelta(seconds=42)).isoformat(),
    )
    html = page(build(APP, healthy_state(), runner=runner, drift=[], commits=commits()))
    text = Tags(html).all_text()
    assert GOOD[:12] in text
    assert "v1" in text
    assert "Ann <ann@x.test>" in text
    assert "Healthy" in text
    assert "unchanged" in text
    assert "in 42s" in text
    assert "No drift" in text
    assert '<meta http-equiv="refresh" content="5">' in html


def test_a_script_in_a_commit_subject_is_text_not_markup() -> None:
    """Subjects, authors, reasons and drift values from Git or the cluster are escaped."""
    state = healthy_state(
        quarantined=(BAD,),
        history=history((BAD, "rolled-back", f'"><img src=x onerror=alert(2)>{EVIL}')),
        degraded=EVIL,
    )
    drift = [drift_report("ConfigMap", f"data.{EVIL}", EVIL, "</code><b>x</b>")]
    info: dict[str, CommitInfo] = {
        GOOD: CommitInfo(sha=GOOD, subject=EVIL, author="<i>Mallory</i>"),
        BAD: CommitInfo(sha=BAD, subject=EVIL, author=EVIL),
    }
    html = page(build(APP, state, drift=drift, commits=info.get))
    parsed = Tags(html)
    assert parsed.names() <= {
        "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "div", "table",
        "thead", "tbody", "tr", "th", "td", "a", "span", "br", "code", "p", "section",
    }  # fmt: skip
    assert "<script" not in html
    assert EVIL in parsed.all_text()
    assert "<i>Mallory</i>" in parsed.all_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_degraded_app_shows_the_reason() -> None:
    """An unfinished rollback: Degraded, with the recorded reason, in list and section."""
    state = healthy_state(degraded="rollback from bbbbbbbbbbbb failed: the API server is away")
    text = Tags(page(build(APP, state))).all_text()
    assert text.count("Degraded") == 2
    assert text.count("rollback from bbbbbbbbbbbb failed: the API server is away") == 2


def test_rolled_back_timeline_marks_the_rollback_and_its_reason() -> None:
    """The timeline lists newest first; the rollback row is marked, with its reason."""
    html = page(build(APP, rolled_back_state(), commits=commits(bad="break it")))
    rows = [a for t, a in Tags(html).tags if t == "tr" and a.get("class") in ("rollback", "sync")]
    assert [a["class"] for a in rows] == ["rollback", "sync"]
    text = Tags(html).all_text()
    assert "⟲ ROLLED BACK" in text
    assert "Deployment ns/web: CrashLoopBackOff (3 restarts)" in text
    assert "break it" in text  # the quarantined commit's subject
    assert f"rolled back from {BAD[:12]} to {GOOD[:12]}" in text


def test_drift_rows_show_git_live_manager_and_time() -> None:
    """One row per drifted field: object, field, Git value, live value, manager, time."""
    drift = [
        drift_report("Deployment", "spec.replicas", 3, 5, group="apps"),
        drift_report("ConfigMap", OBJECT_PATH, "(present)", "(deleted)"),
    ]
    html = page(build(APP, healthy_state(), drift=drift))
    assert html.count('<tr class="drift">') == 2
    text = Tags(html).all_text()
    for part in ("Deployment.apps ns/web", "spec.replicas", "kubectl-patch", "2026-11-30 11:59:00"):
        assert part in text
    assert "<td><code>3</code></td><td><code>5</code></td>" in html
    assert "2 field(s) on 2 object(s)" in text


def test_a_mass_drift_is_cut_on_the_page_and_whole_in_the_json() -> None:
    """Past ``DRIFT_ROWS`` fields the page says how many more and links the JSON."""
    drift = [drift_report("ConfigMap", f"data.k{i}", "a", "b") for i in range(ui.DRIFT_ROWS + 7)]
    view = build(APP, healthy_state(), drift=drift)
    html = page(view)
    assert html.count('<tr class="drift">') == ui.DRIFT_ROWS
    assert "7 more field(s)" in Tags(html).all_text()
    assert len(view.to_json()["drift"]) == ui.DRIFT_ROWS + 7


def test_secret_values_never_reach_the_page_or_the_json() -> None:
    """A Secret's data in drift is *** even if a report carried it; URLs lose user info."""
    drift = [drift_report("Secret", "data.password", "aHVudGVyMg==", "c3dvcmRmaXNo")]
    app = AppConfig.model_validate({"name": "web", "repo": "https://bot:tok3n@git.example/w.git"})
    view = build(app, healthy_state(), drift=drift)
    for out in (page(view), json.dumps(view.to_json()), ui.render_text([view])):
        assert "aHVudGVyMg==" not in out
        assert "c3dvcmRmaXNo" not in out
        assert "tok3n" not in out
        assert "***" in out
    assert public_url("ssh://git@host:22/r.git") == "ssh://host:22/r.git"
    assert public_url("git@host:org/r.git") == "host:org/r.git"
    assert public_url("file:///srv/r.git") == "file:///srv/r.git"


def test_json_and_text_carry_the_same_facts() -> None:
    """The /api/apps object and the ``gitsync status`` text name the same state."""
    view = build(APP, rolled_back_state(), commits=commits())
    doc = view.to_json()
    assert doc["revision"] == GOOD
    assert doc["healthy_revision"] == GOOD
    assert doc["quarantined"] == [BAD]
    assert doc["last_sync"]["result"] == "rolled-back"
    assert doc["history"][0]["rollback"] is True
    assert doc["commits"][BAD]["subject"] == "v2"
    text = ui.render_text([view])
    assert f"revision:         {GOOD}\n" in text
    assert f"quarantined:      {BAD}\n" in text
    assert f"last sync:        rolled-back {BAD[:12]} at " in text
    assert "health:           Degraded: rolled back from" in text


# --- routes ------------------------------------------------------------------------------


class Static:
    def __init__(self, *apps: AppOverview) -> None:
        self.apps = list(apps)

    def all(self) -> list[AppOverview]:
        return self.apps

    def app(self, name: str) -> AppOverview | None:
        return next((a for a in self.apps if a.name == name), None)


class Controller:
    def has_app(self, app: str) -> bool:
        return False

    def trigger(self, app: str) -> str:
        return "standby"

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return True, {}


@pytest.fixture(params=[True, False], ids=["ui", "no-ui"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[Server, bool]]:
    pages = ui.Pages(Static(build(APP, healthy_state(), commits=commits())))
    srv = Server(
        listen="127.0.0.1:0",
        controller=Controller(),
        webhook=None,
        logger=log.get(component="server"),
        pages=pages if request.param else None,
    )
    srv.start()
    try:
        yield srv, request.param
    finally:
        srv.stop()


def get(srv: Server, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_routes_serve_page_and_json_or_404_when_switched_off(server: tuple[Server, bool]) -> None:
    """/ and /api/apps[/name] answer with the ui on; all 404 with ``controller.ui: false``."""
    srv, enabled = server
    status, headers, body = get(srv, "/")
    if not enabled:
        assert status == 404
        assert get(srv, "/api/apps")[0] == 404
        assert get(srv, "/api/apps/web")[0] == 404
        assert get(srv, "/healthz")[0] == 200
        return
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none'
    assert b"v1" in body
    status, headers, body = get(srv, "/api/apps")
    assert status == 200
    assert [a["name"] for a in json.loads(body)["apps"]] == ["web"]
    status, _, body = get(srv, "/api/apps/web")
    assert (status, json.loads(body)["revision"]) == (200, GOOD)
    assert get(srv, "/api/apps/nope")[0] == 404
    assert get(srv, "/nope")[0] == 404


class Broken:
    def all(self) -> list[AppOverview]:
        raise RuntimeError("boom")

    def app(self, name: str) -> AppOverview | None:
        raise RuntimeError("boom")


def test_a_failing_page_answers_500_not_a_dropped_connection() -> None:
    """An unexpected error while building the page is a 500 with a JSON body."""
    pages = ui.Pages(Broken())
    for path in ("/", "/api/apps", "/api/apps/web"):
        response = pages.get(path)
        assert response is not None
        assert response.status == 500
        assert json.loads(response.body) == {"error": "status page failed"}


# --- commits and the terminal --------------------------------------------------------------


def test_commit_subject_and_author_come_from_the_git_cache(tmp_path: Path) -> None:
    """The cache's bare store answers subject and author; an unknown sha is None."""
    url = "https://git.example/web.git"
    store = gitcache.Store.of(tmp_path, url)
    repo = BareRepo(store.repo)
    sha = repo.commit({"a.yaml": "x: 1\n"}, message=f"{EVIL}\n\nbody")
    lookup = CommitLookup(tmp_path)
    info = lookup.get(url, sha)
    assert info is not None
    assert (info.subject, info.author) == (EVIL, "Test Author <author@example.test>")
    assert lookup.get(url, "0" * 40) is None
    assert lookup.get(url, "--all") is None
    assert lookup.get("https://git.example/other.git", sha) is None


def test_watch_redraws_only_on_change_and_ctrl_c_exits_0(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each changed frame clears the screen once; an unchanged one is not redrawn."""
    frames = iter(["one\n", "one\n", "two\n"])

    def frame() -> str:
        try:
            return next(frames)
        except StopIteration:
            raise KeyboardInterrupt from None

    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    assert cli._watch(frame, interval=0) == 0
    text = out.getvalue()
    assert text.count("\x1b[H\x1b[2J") == 2
    assert text.index("one") < text.index("two")


def test_with_shards_the_header_says_which_this_replica_holds() -> None:
    """controller.shards > 1: the page names the held shards, or says it holds none."""
    held = ui.render_page([], now=NOW, shards=ui.ShardView(count=6, held=(1, 4)))
    assert "holds shard(s) 1, 4 of 6" in held
    none = ui.render_page([], now=NOW, leader=False, shards=ui.ShardView(count=6, held=()))
    assert "holds none of 6 shards (standby)" in none
