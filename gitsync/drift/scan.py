"""``gitsync status``: an app's drift now, from one LIST per managed kind.

The same comparison as the drift watcher, once, without informers: a CLI run has no
watches to reuse, and one LIST per kind is what it costs.
"""

from __future__ import annotations

from gitsync.config import AppConfig
from gitsync.drift.compare import DriftReport, DriftSet, compare
from gitsync.drift.intents import read_intent
from gitsync.drift.watcher import DriftSettings
from gitsync.errors import KubeError, NotFoundError
from gitsync.informers.hub import namespace_hpa_targets
from gitsync.kube import Kube
from gitsync.model import APP_LABEL, Identity, KubeObject, ObjectRef, field_manager


def scan(
    kube: Kube, app: AppConfig, *, state_namespace: str, settings: DriftSettings | None = None
) -> DriftSet:
    """The app's drift now, from one LIST per managed kind: ``gitsync status``."""
    settings = settings or DriftSettings()
    found = read_intent(kube, app.name, state_namespace)
    if found is None:
        return DriftSet()
    state, synced_at = found
    intents = {ObjectRef.of(o).identity(): o for o in state.healthy_manifests}
    live: dict[Identity, KubeObject] = {}
    kinds = {(r.group, r.kind): r for r in map(ObjectRef.of, intents.values())}
    served: set[tuple[str, str]] = set()
    for key, kind_ref in kinds.items():
        try:
            res = kube.resource(kind_ref)
        except NotFoundError:
            continue  # not served (a CRD gone): every object of it is gone too
        served.add(key)
        items, _rv = kube.list_objects(res, label_selector=f"{APP_LABEL}={app.name}")
        for item in items:
            live[ObjectRef.of(item).identity()] = item
    hpas: dict[str, frozenset[tuple[str, str, str]]] = {}

    def autoscaled(target: ObjectRef) -> bool:
        if target.namespace not in hpas:
            hpas[target.namespace] = namespace_hpa_targets(kube, target.namespace)
        return (target.namespace, target.kind, target.name) in hpas[target.namespace]

    reports: list[DriftReport] = []
    for ident, intent in intents.items():
        ref = ObjectRef.of(intent)
        obj = live.get(ident)
        if obj is None and (ref.group, ref.kind) in served:
            obj = kube.get(ref)  # it may only have lost the app label

        def dry_run(intent: KubeObject = intent) -> KubeObject | None:
            try:
                return kube.apply(intent, dry_run=True, manager=field_manager(app.name))
            except KubeError:
                return None

        reports.extend(
            compare(
                intent,
                obj,
                app=app.name,
                revision=state.healthy_revision,
                ignore=app.ignore,
                server_desired=dry_run,
                autoscaled=autoscaled,
                synced_at=synced_at,
                expected_managers=settings.expected_managers,
            )
        )
    return DriftSet(sorted(reports, key=lambda r: (r.ref, r.path)))
