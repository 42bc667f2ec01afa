"""App state larger than one Secret, against the real cluster: chunks, swaps, races, limits."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import random
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from gitsync.drift.scan import scan
from gitsync.drift.watcher import DriftSettings, DriftWatcher
from gitsync.engine import inventory, statestore
from gitsync.engine.inventory import AppState, InventoryEntry
from gitsync.errors import StateError
from gitsync.kube import Kube
from gitsync.model import ObjectRef
from tests.support.app_fixtures import App
from tests.support.cluster_fixtures import Kubectl
from tests.support.log_capture import Recorder

pytestmark = [pytest.mark.cluster]

SECRETS = ObjectRef(group="", version="v1", kind="Secret", namespace="", name="")


def big_state(app: str, n: int = 10_000, *, seed: int = 1, noise: int = 2 << 20) -> AppState:
    """``n`` ConfigMaps in inventory and healthy manifests; ``noise`` random bytes keep it big."""
    rnd = random.Random(seed)
    entries, manifests = [], []
    for i in range(n):
        name = f"cm-{i:05d}"
        digest = hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()
        ref = ObjectRef(
            group="", version="v1", kind="ConfigMap", namespace=f"ns{i % 20}", name=name
        )
        entries.append(InventoryEntry(ref=ref, manifest_hash=digest[:32], fingerprint=digest[32:]))
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": ref.namespace, "labels": {"x": "y"}},
                "data": {"value": digest * 6},
            }
        )
    blob = base64.b64encode(rnd.randbytes(noise)).decode() if noise else ""
    manifests.append({"apiVersion": "v1", "kind": "ConfigMap", "data": {"blob": blob}})
    return AppState(
        app=app,
        revision=f"{seed:040d}",
        healthy_revision=f"{seed:040d}",
        inventory=tuple(entries),
        healthy_manifests=tuple(manifests),
    )


def small_state(app: str, seed: int = 0) -> AppState:
    return big_state(app, 3, seed=seed, noise=0)


def chunks_of(kube: Kube, namespace: str, app: str) -> list[str]:
    res = kube.resource(SECRETS)
    items, _ = kube.list_objects(
        res, namespace=namespace, label_selector=f"{statestore.CHUNK_LABEL}={app}"
    )
    return sorted(i["metadata"]["name"] for i in items)


def head(kube: Kube, namespace: str, app: str) -> dict[str, Any]:
    obj = kube.get(replace(SECRETS, namespace=namespace, name=f"gitsync-{app}"))
    assert obj is not None
    return obj


def stored_bytes(kube: Kube, namespace: str, app: str) -> int:
    """Bytes of Secret data the app's state holds on the cluster (head and chunks)."""
    total = 0
    for name in [f"gitsync-{app}", *chunks_of(kube, namespace, app)]:
        obj = kube.get(replace(SECRETS, namespace=namespace, name=name))
        assert obj is not None
        total += sum(len(base64.b64decode(v)) for v in (obj.get("data") or {}).values())
    return total


def same(a: AppState, b: AppState) -> bool:
    return replace(a, resource_version="") == replace(b, resource_version="")


def test_ten_thousand_entries_and_megabytes_of_manifests_round_trip(
    kube: Kube, namespace: str
) -> None:
    """A 10,000-entry state with >3 MB raw manifests is written in chunks and reads back equal."""
    st = big_state("big")
    raw = len(json.dumps(list(st.healthy_manifests)))
    assert raw > 3_000_000
    written = inventory.write_state(kube, st, namespace=namespace)
    back = inventory.read_state(kube, app="big", namespace=namespace)
    assert same(back, st)
    assert back.resource_version == written.resource_version
    first = chunks_of(kube, namespace, "big")
    assert len(first) >= 2
    data = head(kube, namespace, "big")["data"]
    assert set(data) == {"state.index.json"}
    assert stored_bytes(kube, namespace, "big") == len(inventory.encode(st)) + len(
        json.dumps(json.loads(base64.b64decode(data["state.index.json"])))
    )
    # A rewrite swaps generations: the old chunks are gone once the head moved on.
    again = inventory.write_state(kube, replace(back, revision="b" * 40), namespace=namespace)
    second = chunks_of(kube, namespace, "big")
    assert len(second) == len(first)
    assert not set(first) & set(second)
    assert inventory.read_state(kube, app="big", namespace=namespace).revision == "b" * 40
    # Shrinking back to an inline state removes every chunk.
    inventory.write_state(
        kube,
        replace(small_state("big"), resource_version=again.resource_version),
        namespace=namespace,
    )
    assert chunks_of(kube, namespace, "big") == []
    assert same(inventory.read_state(kube, app="big", namespace=namespace), small_state("big"))


def test_a_head_written_by_the_previous_release_reads_and_migrates(
    kube: Kube, namespace: str
) -> None:
    """The old one-Secret format reads as before, and the next write moves it to chunks."""
    old = small_state("legacy")
    text = base64.b64encode(
        gzip.compress(json.dumps(old.to_json(), separators=(",", ":")).encode(), mtime=0)
    )
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "gitsync.io/state",
            "metadata": {
                "name": "gitsync-legacy",
                "namespace": namespace,
                "labels": {
                    "app.kubernetes.io/managed-by": "gitsync",
                    "gitsync.io/state-of": "legacy",
                },
            },
            "data": {"state.json.gz": base64.b64encode(text).decode()},
        }
    )
    read = inventory.read_state(kube, app="legacy", namespace=namespace)
    assert same(read, old)
    bigger = replace(big_state("legacy", 2_000), resource_version=read.resource_version)
    inventory.write_state(kube, bigger, namespace=namespace)
    assert chunks_of(kube, namespace, "legacy")
    assert same(inventory.read_state(kube, app="legacy", namespace=namespace), bigger)


def test_small_states_stay_inline_in_the_head_with_one_write(kube: Kube, namespace: str) -> None:
    """A small state is one Secret in the old layout, written with a single request."""
    st = inventory.write_state(kube, small_state("tiny"), namespace=namespace)
    kube.calls.clear()
    inventory.write_state(kube, replace(st, revision="c" * 40), namespace=namespace)
    assert kube.calls["state"] == 1
    assert kube.calls["get"] == 0
    assert kube.calls["list"] == 0
    assert sum(kube.calls.values()) == 1
    assert set(head(kube, namespace, "tiny")["data"]) == {"state.json.gz"}
    assert chunks_of(kube, namespace, "tiny") == []


def test_a_losing_concurrent_writer_gets_a_conflict_and_leaves_no_chunks(
    kube: Kube, kubeconfig: Path, namespace: str
) -> None:
    """Two writers from one read: the second is refused, and its chunks are removed."""
    base = inventory.write_state(kube, small_state("race"), namespace=namespace)
    other = Kube.connect(kubeconfig=kubeconfig)
    winner = replace(big_state("race", 1_000, seed=2), resource_version=base.resource_version)
    loser = replace(big_state("race", 1_000, seed=3), resource_version=base.resource_version)
    inventory.write_state(kube, winner, namespace=namespace)
    won = chunks_of(kube, namespace, "race")
    with pytest.raises(StateError, match="changed by another writer"):
        inventory.write_state(other, loser, namespace=namespace)
    assert chunks_of(kube, namespace, "race") == won
    assert same(inventory.read_state(other, app="race", namespace=namespace), winner)


def test_chunks_of_a_crashed_writer_are_swept_by_a_later_write(
    kube: Kube, kubeconfig: Path, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orphans are left alone while a writer may still commit them, then swept."""
    st = inventory.write_state(kube, small_state("crash"), namespace=namespace)
    # A writer killed between its chunks and its head: chunks nobody points at.
    orphan = statestore.chunk_name("crash", "deadbeef00", 0)
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": statestore.CHUNK_TYPE,
            "metadata": {
                "name": orphan,
                "namespace": namespace,
                "labels": {
                    statestore.CHUNK_LABEL: "crash",
                    statestore.GENERATION_LABEL: "deadbeef00",
                },
            },
            "data": {"chunk": base64.b64encode(b"x" * 1000).decode()},
        }
    )
    # Young orphans may be a concurrent writer's: a chunked write keeps them.
    st = inventory.write_state(
        kube,
        replace(big_state("crash", 500, seed=4), resource_version=st.resource_version),
        namespace=namespace,
    )
    assert orphan in chunks_of(kube, namespace, "crash")
    # Past the grace period, the next process's first write removes them.
    monkeypatch.setattr(statestore, "ORPHAN_GRACE", timedelta(0))
    restarted = Kube.connect(kubeconfig=kubeconfig)
    st = inventory.read_state(restarted, app="crash", namespace=namespace)
    inventory.write_state(restarted, replace(st, revision="d" * 40), namespace=namespace)
    left = chunks_of(kube, namespace, "crash")
    assert orphan not in left
    assert same(
        inventory.read_state(kube, app="crash", namespace=namespace), replace(st, revision="d" * 40)
    )


def test_a_reader_never_sees_a_torn_state(kube: Kube, kubeconfig: Path, namespace: str) -> None:
    """While a writer swaps generations, every read is one whole written state, never an error."""
    versions = [big_state("torn", 1_000, seed=s, noise=2 << 20) for s in range(3)]
    written = inventory.write_state(kube, versions[0], namespace=namespace)
    reader = Kube.connect(kubeconfig=kubeconfig)
    stop = threading.Event()
    seen: list[str] = []
    errors: list[BaseException] = []

    def read_loop() -> None:
        while not stop.is_set():
            try:
                st = inventory.read_state(reader, app="torn", namespace=namespace)
            except BaseException as e:  # noqa: BLE001 - collected and failed on below
                errors.append(e)
                return
            match = [i for i, v in enumerate(versions) if same(st, v)]
            seen.append(str(match[0]) if match else f"unknown revision {st.revision}")

    thread = threading.Thread(target=read_loop, daemon=True)
    thread.start()
    try:
        for i in range(1, 21):
            written = inventory.write_state(
                kube,
                replace(versions[i % 3], resource_version=written.resource_version),
                namespace=namespace,
            )
    finally:
        stop.set()
        thread.join(60)
    assert errors == []
    assert len(seen) >= 5
    assert all(s in {"0", "1", "2"} for s in seen), seen
    assert len(set(seen)) >= 2, "the reader should have seen the writer move on"
    assert len(chunks_of(kube, namespace, "torn")) == len(
        statestore.split(inventory.encode(versions[20 % 3]))
    )


class OvertakenReader(Kube):
    """A real client that lets a writer run right after it has read a state head."""

    swap: Callable[[], None] | None = None

    def get(self, ref: ObjectRef) -> dict[str, Any] | None:
        obj = super().get(ref)
        if self.swap is not None and ref.name.startswith("gitsync-") and "." not in ref.name:
            swap, self.swap = self.swap, None
            swap()
        return obj


def test_a_read_overtaken_by_a_generation_swap_returns_the_new_state(
    kube: Kube, kubeconfig: Path, namespace: str
) -> None:
    """Head read, then the writer swaps and deletes those chunks: the read retries, whole."""
    old, new = (big_state("race2", 1_000, seed=s, noise=1 << 20) for s in (7, 8))
    written = inventory.write_state(kube, old, namespace=namespace)
    old_chunks = chunks_of(kube, namespace, "race2")
    reader = OvertakenReader.connect(kubeconfig=kubeconfig)

    def swap() -> None:
        inventory.write_state(
            kube, replace(new, resource_version=written.resource_version), namespace=namespace
        )

    reader.swap = swap
    read = inventory.read_state(reader, app="race2", namespace=namespace)
    assert reader.swap is None, "the writer ran between the head and its chunks"
    assert not set(old_chunks) & set(chunks_of(kube, namespace, "race2"))
    assert same(read, new)


def test_a_head_whose_chunk_is_gone_is_reported_as_damaged(kube: Kube, namespace: str) -> None:
    """A chunk lost for good (not a swap) is a StateError that names it and says what to do."""
    inventory.write_state(kube, big_state("lost", 1_000, seed=9), namespace=namespace)
    victim = chunks_of(kube, namespace, "lost")[0]
    kube.delete(replace(SECRETS, namespace=namespace, name=victim))
    with pytest.raises(StateError) as err:
        inventory.read_state(kube, app="lost", namespace=namespace)
    assert f"chunk Secret {namespace}/{victim} is missing" in str(err.value)
    assert "restore the Secrets gitsync-lost* from a backup" in str(err.value)


def test_a_state_over_the_limit_is_refused_before_anything_is_written(
    kube: Kube, namespace: str
) -> None:
    """check_fits refuses a state of 67 MB compressed, and write_state creates nothing."""
    noise = base64.b64encode(random.Random(9).randbytes(statestore.MAX_STATE_BYTES * 7 // 5))
    st = AppState(
        app="huge", healthy_manifests=({"kind": "ConfigMap", "data": {"k": noise.decode()}},)
    )
    with pytest.raises(StateError, match="more than the 48 MiB"):
        inventory.check_fits(st)
    with pytest.raises(StateError, match="split the app"):
        inventory.write_state(kube, st, namespace=namespace)
    assert chunks_of(kube, namespace, "huge") == []
    assert kube.get(replace(SECRETS, namespace=namespace, name="gitsync-huge")) is None


NAMESPACE = """\
apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
"""
CONFIG = (
    NAMESPACE
    + """---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  namespace: {ns}
data:
  mode: blue
"""
)


def test_drift_reads_an_intent_kept_in_chunks(app: App, kube: Kube, kubectl: Kubectl) -> None:
    """The watcher and ``gitsync status``'s scan find the intent behind a chunked head."""
    app.commit({"config.yaml": CONFIG})
    assert app.sync().result == "synced"
    ns = app.ctx.state_namespace
    st = inventory.read_state(kube, app=app.name, namespace=ns)
    # A long history reason makes the state too big for one Secret; the intent is unchanged.
    filler = base64.b64encode(random.Random(5).randbytes(1 << 20)).decode()
    inventory.write_state(kube, st.with_history("f" * 40, "synced", reason=filler), namespace=ns)
    assert chunks_of(kube, ns, app.name)
    kubectl("patch", "configmap", "web-config", "-n", app.ns, "-p", '{"data":{"mode":"red"}}')
    assert [r.path for r in scan(kube, app.config(), state_namespace=ns)] == ["data.mode"]
    recorder = Recorder()
    watcher = DriftWatcher(
        kube, app.config(), ns, recorder.logger(app=app.name), settings=DriftSettings(settle=0.5)
    )
    watcher.start()
    try:
        assert watcher.wait_ready(30)
        recorder.wait("drift.detected", field="data.mode", live="red")
    finally:
        watcher.stop()


def test_deleting_an_app_state_removes_its_head_and_every_chunk(kube: Kube, namespace: str) -> None:
    """statestore.delete leaves no Secret of the app behind, and the app reads as new."""
    inventory.write_state(kube, big_state("gone", 1_000, seed=6), namespace=namespace)
    assert chunks_of(kube, namespace, "gone")
    statestore.delete(kube, app="gone", namespace=namespace)
    assert chunks_of(kube, namespace, "gone") == []
    assert inventory.read_state(kube, app="gone", namespace=namespace) == AppState(app="gone")


WEB = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {{ns}}
spec:
  replicas: 1
  selector:
    matchLabels: {{{{app: web}}}}
  template:
    metadata:
      labels: {{{{app: web{behavior}}}}}
    spec:
      containers:
        - name: web
          image: {image}
"""


def large_config(name: str, seed: int) -> str:
    """A ConfigMap of 900 KB that does not compress (a bundled file, a certificate chain)."""
    blob = base64.b64encode(random.Random(seed).randbytes(675_000)).decode()
    meta = f"metadata:\n  name: {name}\n  namespace: {{ns}}\n"
    return f"apiVersion: v1\nkind: ConfigMap\n{meta}data:\n  blob: {blob}\n"


@pytest.mark.git
def test_megabytes_of_manifests_sync_and_roll_back_from_chunks(app: App, kube: Kube) -> None:
    """Four 900 KB ConfigMaps and a Deployment sync; a bad commit rolls back from chunks."""
    good = {f"big-{i}.yaml": large_config(f"big-{i}", i) for i in range(4)}
    web = WEB.format(image="registry.invalid/web:1", behavior="")
    files = {"ns.yaml": NAMESPACE, "web.yaml": web, **good}
    v1 = app.commit(files, "v1")
    first = app.sync()
    assert first.result == "synced", first.error
    state_ns = app.ctx.state_namespace
    assert len(chunks_of(kube, state_ns, app.name)) >= 3
    bad_web = WEB.format(image="web:2", behavior=", gitsync.test/behavior: crashloop")
    app.commit({**files, "big-0.yaml": large_config("big-0", 99), "web.yaml": bad_web}, "v2")
    result = app.sync()
    assert result.result == "rolled-back", result.error
    assert result.rolled_back_to == v1
    live = kube.get(
        ObjectRef(group="", version="v1", kind="ConfigMap", namespace=app.ns, name="big-0")
    )
    assert live is not None
    assert live["data"]["blob"] == base64.b64encode(random.Random(0).randbytes(675_000)).decode()
    st = inventory.read_state(kube, app=app.name, namespace=state_ns)
    assert st.healthy_revision == v1
    assert len(st.healthy_manifests) == 6


def test_the_shipped_role_allows_everything_the_state_store_does(
    kube: Kube, kubectl: Kubectl, kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    """A ServiceAccount holding only config/role.yaml writes, swaps, sweeps, reads, watches."""
    role = yaml.safe_load((Path(__file__).parents[2] / "config" / "role.yaml").read_text())
    role["metadata"]["namespace"] = namespace
    kube.create(role)
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "gs", "namespace": namespace},
        }
    )
    kube.create(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "gs", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gitsync"},
            "subjects": [{"kind": "ServiceAccount", "name": "gs", "namespace": namespace}],
        }
    )
    token = kubectl("create", "token", "gs", "-n", namespace, "--duration=10m").stdout.strip()
    admin = yaml.safe_load(kubeconfig.read_text())
    sa_config = tmp_path / "sa.kubeconfig"
    sa_config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": admin["clusters"][0]["cluster"]}],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "test", "user": "sa"}}],
                "current-context": "sa",
            }
        )
    )
    sa = Kube.connect(kubeconfig=sa_config)
    st = inventory.write_state(sa, big_state("rbac", 1_000, seed=10), namespace=namespace)
    st = inventory.write_state(sa, replace(st, revision="e" * 40), namespace=namespace)
    assert len(chunks_of(kube, namespace, "rbac")) == len(statestore.split(inventory.encode(st)))
    assert same(inventory.read_state(sa, app="rbac", namespace=namespace), st)
    # The drift watcher's state stream: LIST then WATCH the heads by label.
    res = sa.resource(SECRETS)
    _items, rv = sa.list_objects(
        res, namespace=namespace, label_selector=f"{statestore.STATE_LABEL}=rbac"
    )
    events = sa.watch(
        res,
        namespace=namespace,
        label_selector=f"{statestore.STATE_LABEL}=rbac",
        resource_version=rv,
        timeout_seconds=1,
    )
    assert [kind for kind, _obj, _line in events if kind != "BOOKMARK"] == []
    statestore.delete(sa, app="rbac", namespace=namespace)
    assert chunks_of(kube, namespace, "rbac") == []
