"""The read-only status page at ``/`` and its JSON at ``/api/apps`` and ``/api/apps/<name>``.

Rendered on the server from ``gitsync.runtime.overview``, refreshing itself with a meta refresh:
no JavaScript, no forms, no writes. Every text that comes from Git or the cluster (commit
subjects, authors, reasons, drift values, manager names) goes through ``html.escape``,
and the Content-Security-Policy allows no script at all, so a subject like
``<script>…</script>`` is shown as text and could not run even if an escape were missed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from http import HTTPStatus
from typing import Any, Final, Protocol

from gitsync import log
from gitsync.drift.compare import OBJECT_PATH
from gitsync.runtime.overview import (
    DEGRADED,
    FAILED,
    HEALTHY,
    PROGRESSING,
    AppOverview,
    DriftRow,
    TimelineEntry,
)

REFRESH_SECONDS: Final = 5
DRIFT_ROWS: Final = 200  # per app on the page (the JSON has all): a mass edit stays readable
HEADERS: Final = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_HEALTH_CLASS: Final = {
    HEALTHY: "ok",
    DEGRADED: "bad",
    FAILED: "bad",
    PROGRESSING: "busy",
}
_RESULT_CLASS: Final = {
    "synced": "ok",
    "rolled-back": "rollback",
    "rollback-failed": "rollback",
    "failed": "bad",
    "unhealthy": "bad",
    "timed-out": "bad",
    "interrupted": "busy",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]


class Source(Protocol):
    """Where the pages get their data (``gitsync.runtime.overview.Overview``)."""

    def all(self) -> list[AppOverview]: ...

    def app(self, name: str) -> AppOverview | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardView:
    """The shards of ``controller.shards`` this replica holds, for the page's header."""

    count: int
    held: tuple[int, ...]


class Pages:
    """The routes the HTTP server hands over; ``None`` for a path that is not ours."""

    def __init__(
        self,
        overview: Source,
        *,
        leader: Callable[[], bool] = lambda: True,
        refresh: int = REFRESH_SECONDS,
        shards: Callable[[], ShardView | None] = lambda: None,
    ) -> None:
        """``shards``: which shards this replica holds (None without sharding)."""
        self.overview = overview
        self.leader = leader
        self.shards = shards
        self.refresh = refresh

    def get(self, path: str) -> Response | None:
        try:
            return self._route(path)
        except Exception as e:  # noqa: BLE001 - a page must never take the server down
            log.get(component="ui").exception("ui.failed", path=path[:200], error=str(e))
            return _json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "status page failed"})

    def _route(self, path: str) -> Response | None:
        if path in ("/", "/index.html"):
            html = render_page(
                self.overview.all(),
                now=datetime.now(UTC),
                leader=self.leader(),
                refresh=self.refresh,
                shards=self.shards(),
            )
            return Response(
                status=HTTPStatus.OK,
                body=html.encode(),
                content_type="text/html; charset=utf-8",
                headers=dict(HEADERS),
            )
        if path in ("/api/apps", "/api/apps/"):
            body = {
                "apps": [a.to_json() for a in self.overview.all()],
                "leader": self.leader(),
                "generated": _now(),
            }
            shards = self.shards()
            if shards is not None:
                body["shards"] = {"count": shards.count, "held": list(shards.held)}
            return _json(HTTPStatus.OK, body)
        if path.startswith("/api/apps/"):
            found = self.overview.app(path.removeprefix("/api/apps/"))
            if found is None:
                return _json(HTTPStatus.NOT_FOUND, {"error": "no such app"})
            return _json(HTTPStatus.OK, found.to_json())
        return None


def _json(status: int, body: dict[str, Any]) -> Response:
    data = (json.dumps(body, sort_keys=True, indent=1) + "\n").encode()
    return Response(
        status=status, body=data, content_type="application/json", headers=dict(HEADERS)
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- HTML --------------------------------------------------------------------------------

_STYLE: Final = """
body{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:1.5rem;color:#1b1f24;
background:#f6f8fa}
h1{font-size:1.4rem;margin:0 0 .2rem}h2{font-size:1.15rem;margin:0 0 .4rem}
h3{font-size:.95rem;margin:1rem 0 .3rem}
.meta{color:#57606a;font-size:.85rem;margin-bottom:1rem}
table{border-collapse:collapse;width:100%;background:#fff;font-size:.85rem}
th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#eaeef2}
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:1rem;margin:1rem 0}
code,.sha{font-family:"DejaVu Sans Mono",monospace;font-size:.85em}
.badge{display:inline-block;padding:.05rem .45rem;border-radius:1rem;font-weight:600;
font-size:.8rem;border:1px solid transparent}
.ok{background:#dafbe1;color:#116329;border-color:#4ac26b}
.bad{background:#ffebe9;color:#a40e26;border-color:#ff8182}
.busy{background:#fff8c5;color:#7d4e00;border-color:#d4a72c}
.rollback{background:#fbefff;color:#6e3ca0;border-color:#c297ff}
tr.rollback td{background:#fbefff}
.reason{color:#57606a}
.empty{color:#57606a;font-style:italic}
.subject{font-weight:500}
"""


def render_page(
    apps: list[AppOverview],
    *,
    now: datetime,
    leader: bool = True,
    refresh: int = REFRESH_SECONDS,
    shards: ShardView | None = None,
) -> str:
    """The whole page: the app list, then each app's drift and timeline."""
    role = "leader" if leader else "standby (no syncs run here; timings come from the leader)"
    if shards is not None:
        held = ", ".join(str(i) for i in shards.held)
        role = (
            f"holds shard(s) {held} of {shards.count} (the other apps sync on other replicas)"
            if held
            else f"holds none of {shards.count} shards (standby)"
        )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{int(refresh)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>gitsync status</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>gitsync</h1>",
        f'<div class="meta">{len(apps)} app(s) · this replica: {escape(role)} · '
        f"updated {escape(_clock(now))} · refreshes every {int(refresh)} s</div>",
        _summary(apps, now),
        *(_app_section(a, now) for a in apps),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _summary(apps: list[AppOverview], now: datetime) -> str:
    if not apps:
        return '<p class="empty">No apps configured.</p>'
    head = (
        "<tr><th>App</th><th>Health</th><th>Revision</th><th>Last sync</th>"
        "<th>Next poll</th><th>Quarantined</th><th>Drift</th></tr>"
    )
    rows = [
        f'<tr id="row-{escape(a.name)}"><td><a href="#app-{escape(a.name)}">{escape(a.name)}</a>'
        f"</td><td>{_health(a)}</td><td>{_revision(a)}</td><td>{_last_sync(a)}</td>"
        f"<td>{_next_poll(a, now)}</td><td>{_quarantined(a)}</td><td>{_drift_count(a)}</td></tr>"
        for a in apps
    ]
    return f'<table class="apps"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _health(a: AppOverview) -> str:
    cls = _HEALTH_CLASS.get(a.health.status, "busy")
    badge = f'<span class="badge {cls}">{escape(a.health.status)}</span>'
    if a.health.reason:
        badge += f' <span class="reason">{escape(a.health.reason)}</span>'
    return badge


def _commit(a: AppOverview, sha: str, *, with_author: bool = True) -> str:
    if not sha:
        return '<span class="empty">never synced</span>'
    info = a.commit(sha)
    out = f'<span class="sha" title="{escape(sha)}">{escape(sha[:12])}</span>'
    if info.subject:
        out += f' <span class="subject">{escape(info.subject)}</span>'
    if with_author and info.author:
        out += f' <span class="reason">by {escape(info.author)}</span>'
    return out


def _revision(a: AppOverview) -> str:
    out = _commit(a, a.revision)
    if a.healthy_revision and a.healthy_revision != a.revision:
        out += f'<br><span class="reason">healthy: {escape(a.healthy_revision[:12])}</span>'
    return out


def _last_sync(a: AppOverview) -> str:
    runner = a.runner
    if runner is not None and runner.last_result:
        cls = _RESULT_CLASS.get(runner.last_result, "ok" if runner.last_result else "busy")
        if runner.last_result == "quarantined":
            cls = "rollback"
        out = f'<span class="badge {cls}">{escape(runner.last_result)}</span>'
        if runner.last_finished:
            out += f" {escape(_clock_text(runner.last_finished))}"
        return out
    if a.last_sync is None:
        return '<span class="empty">none yet</span>'
    return f"{_result_badge(a.last_sync)} {escape(_clock_text(a.last_sync.time))}"


def _result_badge(e: TimelineEntry) -> str:
    cls = _RESULT_CLASS.get(e.result, "busy")
    label = "⟲ ROLLED BACK" if e.result == "rolled-back" else e.result
    if e.result == "rollback-failed":
        label = "⟲ ROLLBACK FAILED"
    return f'<span class="badge {cls}">{escape(label)}</span>'


def _next_poll(a: AppOverview, now: datetime) -> str:
    if a.runner is None:
        return '<span class="empty">not scheduled here</span>'
    if a.runner.running_seconds is not None:
        return f'<span class="badge busy">syncing {a.runner.running_seconds:.0f}s</span>'
    if not a.runner.next_poll:
        return '<span class="empty">not scheduled</span>'
    try:
        seconds = (datetime.fromisoformat(a.runner.next_poll) - now).total_seconds()
    except ValueError:
        return escape(a.runner.next_poll)
    when = f"in {seconds:.0f}s" if seconds >= 0 else "due"
    return f'{escape(when)} <span class="reason">({escape(_clock_text(a.runner.next_poll))})</span>'


def _quarantined(a: AppOverview) -> str:
    if not a.quarantined:
        return '<span class="empty">none</span>'
    return "<br>".join(_commit(a, sha, with_author=False) for sha in a.quarantined)


def _drift_count(a: AppOverview) -> str:
    if a.drift is None:
        return '<span class="empty">unknown</span>'
    if not a.drift:
        return '<span class="badge ok">none</span>'
    objects = len({r.object for r in a.drift})
    return f'<span class="badge busy">{len(a.drift)} field(s) on {objects} object(s)</span>'


def _app_section(a: AppOverview, now: datetime) -> str:
    name = escape(a.name)
    where = f"{escape(a.repo)} · ref {escape(a.ref)} · path {escape(a.path)}"
    lines = [
        f'<section id="app-{name}" class="app">',
        f"<h2>{name}</h2>",
        f'<div class="meta">{where} · {a.inventory} object(s)</div>',
        f"<div>Health: {_health(a)}</div>",
    ]
    if a.error:
        lines.append(f'<p class="bad">state unreadable: {escape(a.error)}</p>')
    lines += [
        f"<div>Revision: {_revision(a)}</div>",
        f"<div>Quarantined: {_quarantined(a)}</div>",
    ]
    if a.runner is not None and a.runner.last_error:
        lines.append(f'<div class="reason">Last error: {escape(a.runner.last_error)}</div>')
    lines += [
        "<h3>Drift</h3>",
        _drift_table(a.name, a.drift),
        f"<h3>Timeline (last {len(a.timeline)} syncs, newest first)</h3>",
        _timeline(a),
        "</section>",
    ]
    return "\n".join(lines)


def _drift_table(name: str, rows: tuple[DriftRow, ...] | None) -> str:
    if rows is None:
        return '<p class="empty">Drift is watched by the leader only.</p>'
    if not rows:
        return '<p class="empty">No drift: the cluster matches Git.</p>'
    head = (
        "<tr><th>Object</th><th>Field</th><th>Git</th><th>Live</th><th>Manager</th>"
        "<th>Time</th></tr>"
    )
    body = "".join(
        f'<tr class="drift"><td>{escape(r.object)}</td><td><code>{escape(r.field)}</code></td>'
        f"<td><code>{escape(r.git)}</code></td><td><code>{escape(r.live)}</code></td>"
        f"<td>{escape(r.manager)}"
        + (f' <span class="reason">({escape(r.operation)})</span>' if r.operation else "")
        + f"</td><td>{escape(_clock_text(r.time or r.seen))}</td></tr>"
        for r in rows[:DRIFT_ROWS]
    )
    more = ""
    if len(rows) > DRIFT_ROWS:
        more = (
            f'<p class="reason">{len(rows) - DRIFT_ROWS} more field(s): see '
            f'<a href="/api/apps/{escape(name)}">/api/apps/{escape(name)}</a></p>'
        )
    return f'<table class="drift"><thead>{head}</thead><tbody>{body}</tbody></table>{more}'


def _timeline(a: AppOverview) -> str:
    if not a.timeline:
        return '<p class="empty">No syncs recorded yet.</p>'
    head = "<tr><th>Time</th><th>Commit</th><th>Result</th><th>Reason</th></tr>"
    body = "".join(
        f'<tr class="{"rollback" if e.rollback else "sync"}">'
        f"<td>{escape(_clock_text(e.time))}</td><td>{_commit(a, e.sha)}</td>"
        f"<td>{_result_badge(e)}</td><td>{escape(e.reason)}</td></tr>"
        for e in a.timeline
    )
    return f'<table class="timeline"><thead>{head}</thead><tbody>{body}</tbody></table>'


def _clock(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _clock_text(text: str) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM:SS UTC``; anything else as it is."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _clock(moment)


# --- terminal ----------------------------------------------------------------------------


def render_text(apps: list[AppOverview], *, history: int = 5) -> str:
    """``gitsync status``: the same overview as the page, one block per app."""
    return "\n".join(_text_block(a, history=history) for a in apps)


def _text_block(a: AppOverview, *, history: int) -> str:
    health = a.health.status + (f": {a.health.reason}" if a.health.reason else "")
    lines = [
        f"app:              {a.name}",
        f"health:           {health}",
        f"revision:         {a.revision or '(never synced)'}",
    ]
    info = a.commit(a.revision)
    if info.subject or info.author:
        lines.append(
            f"commit:           {info.subject}" + (f" ({info.author})" if info.author else "")
        )
    lines += [
        f"healthy revision: {a.healthy_revision or '(none)'}",
        f"quarantined:      {', '.join(a.quarantined) or '(none)'}",
        f"inventory:        {a.inventory} object(s)",
    ]
    if a.error:
        lines.append(f"error:            {a.error}")
    if a.last_sync is not None:
        e = a.last_sync
        reason = f" ({e.reason})" if e.reason else ""
        lines.append(f"last sync:        {e.result} {e.sha[:12]} at {e.time}{reason}")
    if a.runner is not None and a.runner.next_poll:
        lines.append(f"next poll:        {a.runner.next_poll}")
    if a.drift is not None:
        objects = len({r.object for r in a.drift})
        lines.append(f"drift:            {len(a.drift)} field(s) on {objects} object(s)")
        lines += [f"  {r.object}: {_drift_summary(r)}" for r in a.drift]
    if history and a.timeline:
        lines.append("history:")
        for e in a.timeline[:history]:
            mark = "ROLLED BACK " if e.result == "rolled-back" else ""
            reason = f": {e.reason}" if e.reason else ""
            subject = a.commit(e.sha).subject
            what = f"{e.sha[:12]}" + (f" {subject}" if subject else "")
            lines.append(f"  {e.time}  {mark}{e.result}  {what}{reason}")
    return "\n".join(lines) + "\n"


def _drift_summary(r: DriftRow) -> str:
    who = r.manager + (f", {r.operation}" if r.operation else "")
    when = f" at {r.time}" if r.time else ""
    if r.field == OBJECT_PATH:
        return f"object deleted (by {who}){when}"
    return f"{r.field}: {r.git} → {r.live} (by {who}{when})"


__all__ = ["HEADERS", "Pages", "Response", "Source", "render_page", "render_text"]
