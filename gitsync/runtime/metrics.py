"""Prometheus metrics of the controller, in one place so every stage reports the same names.

The objects live in prometheus-client's default registry, which ``/metrics`` serves; a
metric here is a process-wide fact (like a log stream), not state a stage depends on.
Label values are app names and results only, never URLs or object contents, so the
series count stays bounded by the config.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gitsync.informers.hub import Informers

RECONCILE_DURATION = Histogram(
    "gitsync_reconcile_duration_seconds",
    "Seconds one reconcile of an app took, by result.",
    ["app", "result"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
SYNCS = Counter(
    "gitsync_syncs_total",
    "Reconciles finished, by app and result (synced, unchanged, failed, rolled-back, ...).",
    ["app", "result"],
)
ROLLBACKS = Counter(
    "gitsync_rollbacks_total",
    "Rollbacks to the last healthy revision after a failed health gate.",
    ["app"],
)
DRIFT_OBJECTS = Gauge(
    "gitsync_drift_objects",
    "Managed objects whose live state differs from the last applied intent.",
    ["app"],
)
LAST_SYNC = Gauge(
    "gitsync_last_sync_timestamp_seconds",
    "Unix time of the app's last reconcile that ended synced or unchanged.",
    ["app"],
)
REVISION_INFO = Gauge(
    "gitsync_revision_info",
    "1 for the commit the app was last reconciled at.",
    ["app", "revision"],
)
IS_LEADER = Gauge(
    "gitsync_leader",
    "1 while this process holds the leader Lease (with shards: at least one shard Lease).",
)
SHARD_HELD = Gauge(
    "gitsync_shard_held",
    "1 for each shard whose Lease this process holds (it syncs that shard's apps), else 0.",
    ["shard"],
)
GIT_CACHE_BYTES = Gauge(
    "gitsync_git_cache_bytes",
    "Bytes on disk of the Git cache (stores and per-commit trees), measured after each cache GC.",
)
LEASE_RENEW_SECONDS = Histogram(
    "gitsync_lease_renew_seconds",
    "Seconds one successful renewal of the leader Lease took (its deadline is renewDeadline).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WEBHOOKS = Counter(
    "gitsync_webhook_requests_total",
    "Requests to /hooks/<app>, by HTTP status answered.",
    ["code"],
)

_revisions: dict[str, str] = {}
_revisions_lock = threading.Lock()


def record_sync(*, app: str, result: str, revision: str, seconds: float, now: float) -> None:
    """Count one finished reconcile; keep exactly one revision series per app."""
    RECONCILE_DURATION.labels(app=app, result=result).observe(seconds)
    SYNCS.labels(app=app, result=result).inc()
    if result == "rolled-back":
        ROLLBACKS.labels(app=app).inc()
    if result in ("synced", "unchanged"):
        LAST_SYNC.labels(app=app).set(now)
    if revision:
        with _revisions_lock:
            old = _revisions.get(app)
            if old != revision:
                if old is not None:
                    REVISION_INFO.remove(app, old)
                REVISION_INFO.labels(app=app, revision=revision).set(1)
                _revisions[app] = revision


class _InformerCollector(Collector):
    """The shared informers' size and cost, read at scrape time (one series per watch)."""

    def __init__(self) -> None:
        self.hub: Informers | None = None

    _FAMILIES = (
        (GaugeMetricFamily, "gitsync_informer_objects", "Objects one shared informer holds."),
        (GaugeMetricFamily, "gitsync_informer_bytes", "Bytes of JSON one shared informer holds."),
        (CounterMetricFamily, "gitsync_informer_lists", "LISTs one informer made, relists too."),
        (CounterMetricFamily, "gitsync_informer_relists", "LISTs after 410 Gone or a reconnect."),
        (CounterMetricFamily, "gitsync_informer_watches", "WATCH requests one informer opened."),
    )

    def collect(self) -> Iterator[Metric]:
        families = [cls(name, doc, labels=["informer"]) for cls, name, doc in self._FAMILIES]
        for target, i in self.hub.by_target() if self.hub is not None else ():
            values = (len(i.store), i.store.raw_bytes(), i.lists, i.relists, i.watches)
            for family, value in zip(families, values, strict=True):
                family.add_metric([target.name], value)
        yield from families


_INFORMERS = _InformerCollector()
REGISTRY.register(_INFORMERS)


def publish_informers(hub: Informers | None) -> None:
    """Serve this hub's figures on /metrics (the controller's; None forgets it)."""
    _INFORMERS.hub = hub
