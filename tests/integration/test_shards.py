"""Three ``gitsync run`` replicas share 30 apps in shards; one is killed with ``kill -9``."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gitsync.runtime.server import sign
from gitsync.runtime.shards import shard_of
from tests.support.cluster_fixtures import ClusterHandle, Kubectl, wait_until
from tests.support.controller_process import ControllerProcess, lease_config
from tests.support.repos import BareRepo

pytestmark = [pytest.mark.cluster, pytest.mark.git]

APPS = 30
SHARDS = 6
LEASE = "gitsync-leader"
LEASE_SECONDS = 4.0
HOOK = b"shard-hook-secret"


def _files(names: list[str], ns: str, version: int = 1) -> dict[str, str]:
    """Three ConfigMaps per app, each app in a folder of one repository."""
    files = {}
    for name in names:
        docs = [
            f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}-{i}\n"
            f"  namespace: {ns}\ndata:\n  v: '{version}.{i}'\n"
            for i in range(3)
        ]
        files[f"apps/{name}/cm.yaml"] = "---\n".join(docs)
    return files


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def _hook(proc: ControllerProcess, app: str, sha: str, repo: str) -> int:
    """A signed push for ``app``: 202 where its shard is held, 503 (standby) elsewhere."""
    push = {"ref": "refs/heads/main", "after": sha, "repository": {"clone_url": repo}}
    body = json.dumps(push).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-Hub-Signature-256": sign(HOOK, body),
    }
    return proc.request(f"/hooks/{app}", method="POST", body=body, headers=headers)[0]


def _readyz(proc: ControllerProcess) -> dict[str, Any]:
    _status, body = proc.get("/readyz")
    doc: dict[str, Any] = json.loads(body)
    return doc


def _held(proc: ControllerProcess) -> list[int]:
    try:
        return list(_readyz(proc).get("shards", {}).get("held", []))
    except OSError:  # not listening yet
        return []


def _write_spans(
    proc: ControllerProcess, *, end: float | None = None
) -> dict[str, list[tuple[float, float]]]:
    """Per app, the wall-clock spans from sync.started to sync.finished in one replica's
    log; a sync still open (running now, or cut by a kill) lasts until ``end``."""
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    open_: dict[str, float] = {}
    for e in proc.lines():
        app = e.get("app")
        if not isinstance(app, str):
            continue
        if e.get("event") == "sync.started":
            assert app not in open_, f"{proc.name}: {app} started twice at once"
            open_[app] = _ts(e)
        elif e.get("event") == "sync.finished" and app in open_:
            # Without sync.started the engine never ran (it writes only after that line).
            spans[app].append((open_.pop(app), _ts(e)))
    for app, began in open_.items():
        assert end is not None, f"{proc.name}: sync of {app} never finished"
        spans[app].append((began, end))
    return spans


def _tenures(
    procs: list[ControllerProcess], *, ends: dict[str, float]
) -> dict[tuple[str, int], list[tuple[float, float]]]:
    """(replica, shard) -> wall-clock spans in which the replica held the shard, from its
    log: from leader.acquired to the drain of a hand-off, its kill (``ends``), or now."""
    spans: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    for r in procs:
        since: dict[int, float] = {}
        for e in r.lines():
            if e.get("event") == "leader.acquired":
                since[int(e["shard"])] = _ts(e)
            elif e.get("event") == "controller.shard_stopped":
                spans[r.name, int(e["shard"])].append((since.pop(int(e["shard"])), _ts(e)))
        for shard, began in since.items():
            spans[r.name, shard].append((began, ends.get(r.name, float("inf"))))
    return spans


_STATE = re.compile(r"^gitsync-(app\d\d)(?:\..*)?$")
_OBJECT = re.compile(r"^(app\d\d)-\d$")


def _audited_writes(audit_log: Path, *, ns: str, state_ns: str) -> list[tuple[str, str, float]]:
    """(app, replica, second) of every write the API server carried out for an app's
    objects or state, by a replica named in the User-Agent (``gitsync/<identity>``)."""
    out = []
    for line in audit_log.read_text().splitlines():
        ev = json.loads(line)
        agent = str(ev.get("userAgent", ""))
        ref = ev.get("objectRef") or {}
        code = int((ev.get("responseStatus") or {}).get("code", 0))
        if not agent.startswith("gitsync/") or ev.get("stage") != "ResponseComplete":
            continue
        pattern = {ns: _OBJECT, state_ns: _STATE}.get(str(ref.get("namespace", "")))
        match = pattern.match(str(ref.get("name", ""))) if pattern else None
        if match is None or not 200 <= code < 300:
            continue
        replica = agent.removeprefix("gitsync/").rsplit("_", 1)[0]
        for stamp in ("requestReceivedTimestamp", "stageTimestamp"):
            out.append((match.group(1), replica, datetime.fromisoformat(ev[stamp]).timestamp()))
    return out


def _audit(
    tenures: dict[tuple[str, int], list[tuple[float, float]]],
    writes: list[tuple[str, str, float]],
) -> None:
    """Tenures of one shard never overlap, and every write the API server saw for an app
    lies inside its writer's tenure of the app's shard (a killed writer's up to 1 s after
    the kill, and never once the next holder took the shard)."""
    windows: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    for shard in range(SHARDS):
        spans = sorted(
            (s, e, who) for (who, i), per in tenures.items() if i == shard for s, e in per
        )
        for n, (began, ended, who) in enumerate(spans):
            later = [s for s, _e, w in spans[n + 1 :] if w != who]
            if later:
                assert later[0] > ended, f"shard {shard}: taken while {who} still held it"
            # A request in flight at a kill may still land: 1 s of grace, less than a lease.
            windows[who, shard].append((began, min(later[0] if later else ended, ended + 1.0)))
    assert writes, "the audit log has no write by a replica"
    for app, who, at in writes:
        shard = shard_of(app, SHARDS)
        assert any(s <= at < e for s, e in windows.get((who, shard), [])), (
            f"{app} (shard {shard}) written by {who} at {at}, outside its tenure: {dict(windows)}"
        )


def test_three_replicas_share_thirty_apps_and_a_killed_ones_shards_move_within_the_lease(
    controllers: Callable[..., ControllerProcess],
    make_repo: Callable[..., BareRepo],
    namespace_factory: Callable[[], str],
    kubectl: Kubectl,
    cluster: ClusterHandle,
) -> None:
    """Every replica holds shards; after kill -9 of one, its shards get a new holder and
    its apps sync again within about one lease; no app is ever written by two replicas at
    once (write spans from the logs, each sync tagged with the replica)."""
    state_ns, ns = namespace_factory(), namespace_factory()
    names = [f"app{i:02d}" for i in range(APPS)]
    repo = make_repo("shards")
    first = repo.commit(_files(names, ns))
    cfg = {
        "stateNamespace": state_ns,
        "apps": [
            {
                "name": n,
                "repo": repo.file_url,
                "path": f"apps/{n}",
                "namespace": ns,
                "interval": "5s",
            }
            for n in names
        ],
        "controller": {
            "leaderElection": lease_config(),
            "shards": SHARDS,
            "webhook": {"secretEnv": "HOOK_SECRET"},
        },
    }
    env = {"HOOK_SECRET": HOOK.decode()}
    began = time.monotonic()
    replicas = [controllers(cfg, name=f"replica-{c}", env=env) for c in "abc"]
    for r in replicas:
        r.wait_http()

    def synced(app: str) -> bool:
        return any(r.events("sync.done", app=app) for r in replicas)

    wait_until(lambda: all(synced(n) for n in names), timeout=90, what="all 30 apps synced")
    print(f"30 apps synced by 3 replicas in {time.monotonic() - began:.1f}s")
    wait_until(lambda: all(_held(r) for r in replicas), timeout=20, what="every replica leads")
    held = {r.name: _held(r) for r in replicas}
    print(f"shards held: {held}")
    assert sorted(s for h in held.values() for s in h) == list(range(SHARDS))
    assert all(len(h) == SHARDS // 3 for h in held.values()), held
    for r in replicas:
        _status, body = r.get("/metrics")
        lines = set(re.findall(rb'gitsync_shard_held\{shard="(\d+)"\} 1\.0', body))
        assert {int(s) for s in lines} == set(held[r.name])
        assert b"gitsync_leader 1.0" in body
        assert _readyz(r)["shards"]["members"][0].startswith(r.name + "_")
        _status, page = r.get("/")
        assert f"holds shard(s) {', '.join(map(str, held[r.name]))} of {SHARDS}".encode() in page
        # Apps of shards held elsewhere: never synced here, and a webhook answers standby.
        for app in names:
            if shard_of(app, SHARDS) not in held[r.name]:
                assert not r.events("sync.started", app=app), (r.name, app)
        theirs = next(n for n in names if shard_of(n, SHARDS) not in held[r.name])
        ours = next(n for n in names if shard_of(n, SHARDS) in held[r.name])
        assert _hook(r, theirs, first, repo.file_url) == 503
        assert _hook(r, ours, first, repo.file_url) == 202
    apps_per_replica = Counter(
        r.name for r in replicas for n in names if shard_of(n, SHARDS) in held[r.name]
    )
    print(f"apps per replica: {dict(apps_per_replica)}")

    victim, survivors = replicas[0], replicas[1:]
    moved_shards = held[victim.name]
    moved_apps = [n for n in names if shard_of(n, SHARDS) in moved_shards]
    time.sleep(2.0)  # let resyncs run, so the kill lands among writes
    victim.kill()
    killed = time.time()
    repo.commit(_files(names, ns, version=2))  # the new holders write the moved apps

    def taken(shard: int) -> dict[str, Any] | None:
        for r in survivors:
            found = r.events("leader.acquired", lease=f"{state_ns}/{LEASE}-{shard}")
            if found:
                return found[0] | {"by": r.name}
        return None

    wait_until(lambda: all(taken(s) for s in moved_shards), timeout=30, what="the shards move over")

    def resumed(app: str) -> dict[str, Any] | None:
        starts = [e for r in survivors for e in r.events("sync.started", app=app)]
        return min(starts, key=_ts) if starts else None

    wait_until(lambda: all(resumed(a) for a in moved_apps), timeout=30, what="moved apps sync")
    take_times = {s: _ts(taken(s) or {}) - killed for s in moved_shards}
    sync_times = {a: _ts(resumed(a) or {}) - killed for a in moved_apps}
    print(
        f"kill -9 -> new holder per shard (s): { {s: round(t, 2) for s, t in take_times.items()} }"
    )
    print(
        f"kill -9 -> next sync of a moved app (s): min {min(sync_times.values()):.2f}, "
        f"max {max(sync_times.values()):.2f} over {len(moved_apps)} apps"
    )
    after = {r.name: _held(r) for r in survivors}
    print(f"shards held after the kill: {after}")
    assert sorted(s for h in after.values() for s in h) == list(range(SHARDS))
    # leaseDuration 4 s, retryPeriod 0.5 s: the record stops changing at the kill; the
    # survivors see it expire and the victim's membership go stale, then take it.
    assert max(take_times.values()) < LEASE_SECONDS + 2.5
    assert max(sync_times.values()) < LEASE_SECONDS + 4.0
    assert min(take_times.values()) > LEASE_SECONDS - 1.0, "taken before the Lease expired"

    # A replacement joins: the two survivors, above the share of 2, hand one shard each
    # over (drain, release), and the newcomer takes both.
    joiner = controllers(cfg, name="replica-d", env=env)
    joined = time.monotonic()
    repo.commit(_files(names, ns, version=3))  # writes while the shards are handed over
    joiner.wait_http()
    replicas = [*survivors, joiner]
    wait_until(
        lambda: all(len(_held(r)) == SHARDS // 3 for r in replicas),
        timeout=40,
        what="shards spread again over the three replicas",
    )
    print(f"replacement holds its share after {time.monotonic() - joined:.1f}s")
    balanced = {r.name: _held(r) for r in replicas}
    print(f"shards held after the replacement joined: {balanced}")
    handed = [e for r in survivors for e in r.events("shard.handed_off", released=True)]
    assert len(handed) == 2, handed
    wait_until(
        lambda: all(
            joiner.events("sync.started", app=n)
            for n in names
            if shard_of(n, SHARDS) in balanced[joiner.name]
        ),
        timeout=20,
        what="the replacement syncs its apps",
    )

    head = repo.commit(_files(names, ns, version=4))  # and writes by the replacement
    wait_until(
        lambda: all(
            any(r.events("sync.done", app=n, result="synced", revision=head[:12]) for r in replicas)
            for n in names
        ),
        timeout=30,
        what="every app synced the last commit",
    )
    # The audit: per app, write spans of different replicas never overlap.
    spans = {r.name: _write_spans(r, end=time.time()) for r in replicas}
    spans[victim.name] = _write_spans(victim, end=killed)
    checked = 0
    for app in names:
        owned = [(s, e, who) for who, per in spans.items() for s, e in per.get(app, [])]
        owned.sort()
        for (_s1, e1, w1), (s2, _e2, w2) in itertools.pairwise(owned):
            if w1 != w2:
                checked += 1
                assert s2 > e1, f"{app}: {w2} started at {s2} while {w1} wrote until {e1}"
    moved_again = [n for n in names if shard_of(n, SHARDS) in balanced[joiner.name]]
    if cluster.dev is not None and cluster.dev.audit_log is not None:
        tenures = _tenures([*replicas, victim], ends={victim.name: killed})
        writes = _audited_writes(cluster.dev.audit_log, ns=ns, state_ns=state_ns)
        _audit(tenures, writes)
        print(f"API server audit: {len(writes) // 2} writes, each inside its writer's tenure")
    print(f"hand-overs audited: {checked} (kill: {len(moved_apps)}, join: {len(moved_again)})")
    assert checked >= len(moved_apps) + len(moved_again), "every moved app changed hands"
    # Each sync line names the replica (the API server sees it in the User-Agent too).
    for r in replicas:
        done = r.events("sync.started")
        assert done
        assert all(e.get("replica", "").startswith(r.name + "_") for e in done)
    for r in replicas:
        assert r.proc.poll() is None, r.tail()
        assert not r.events("leader.lost")
    leases = json.loads(kubectl("get", "lease", "-n", state_ns, "-o", "json").stdout)["items"]
    names_left = sorted(item["metadata"]["name"] for item in leases)
    print(f"Leases: {names_left}")
    assert not [n for n in names_left if "member-replica-a" in n], "stale membership stays"
    for r in replicas:
        assert r.terminate() == 0


def test_a_replica_that_loses_one_of_its_shards_exits_at_once(
    controllers: Callable[..., ControllerProcess],
    make_repo: Callable[..., BareRepo],
    namespace_factory: Callable[[], str],
    kubectl: Kubectl,
) -> None:
    """Alone, a replica takes both shards; another holder takes shard 1: it exits 1 within
    renewDeadline, before that holder may act, though shard 0 is still its own."""
    state_ns, ns = namespace_factory(), namespace_factory()
    names = ["app00", "app01", "app02", "app03"]
    assert {shard_of(n, 2) for n in names} == {0, 1}
    repo = make_repo("two-shards")
    repo.commit(_files(names, ns))
    proc = controllers(
        {
            "stateNamespace": state_ns,
            "apps": [
                {"name": n, "repo": repo.file_url, "path": f"apps/{n}", "namespace": ns}
                for n in names
            ],
            "controller": {"leaderElection": lease_config(), "shards": 2},
        }
    )
    for n in names:
        proc.wait_event("sync.done", app=n, timeout=30)
    assert sorted(_held(proc)) == [0, 1]
    patch = {"spec": {"holderIdentity": "intruder", "renewTime": None}}
    kubectl("patch", "lease", f"{LEASE}-1", "-n", state_ns, "--type=merge", "-p", json.dumps(patch))
    taken = time.monotonic()
    assert proc.proc.wait(timeout=10) == 1
    took = time.monotonic() - taken
    print(f"exit after losing shard 1 of 2: {took:.2f}s")
    assert took < LEASE_SECONDS, "must stop before the new holder's leaseDuration runs out"
    assert proc.wait_event("leader.lost")["shard"] == 1
    exit_line = proc.wait_event("controller.exit")
    assert exit_line["reason"] == "Lease of shard 1 lost; stopping all writes"


def test_the_audit_refuses_a_write_outside_its_writers_tenure() -> None:
    """The audit can fail: a write after the next holder took the shard, or by a replica
    that never held it, is reported."""
    app = "app00"
    shard = shard_of(app, SHARDS)
    tenures = {("replica-a", shard): [(0.0, 10.0)], ("replica-b", shard): [(14.0, 99.0)]}
    _audit(tenures, [(app, "replica-a", 5.0), (app, "replica-b", 20.0)])
    with pytest.raises(AssertionError, match="outside its tenure"):
        _audit(tenures, [(app, "replica-a", 15.0)])
    with pytest.raises(AssertionError, match="outside its tenure"):
        _audit(tenures, [(app, "replica-c", 5.0)])
    with pytest.raises(AssertionError, match="taken while replica-a still held it"):
        _audit({**tenures, ("replica-b", shard): [(9.0, 99.0)]}, [(app, "replica-a", 5.0)])


def test_a_shard_whose_sync_is_still_running_is_not_handed_off(
    controllers: Callable[..., ControllerProcess],
    make_repo: Callable[..., BareRepo],
    namespace_factory: Callable[[], str],
    blackhole: str,
) -> None:
    """A second replica joins a replica holding both shards: the shard with a hung sync is
    kept (no hand-off while a writer may live), the other one is handed over."""
    state_ns, ns = namespace_factory(), namespace_factory()
    assert (shard_of("calm", 2), shard_of("stuck", 2)) == (0, 1)
    repo = make_repo("calm")
    repo.commit(_files(["calm"], ns))
    cfg = {
        "stateNamespace": state_ns,
        "apps": [
            {"name": "calm", "repo": repo.file_url, "path": "apps/calm", "namespace": ns},
            {"name": "stuck", "repo": blackhole, "namespace": ns, "allowInsecure": True},
        ],
        "controller": {"leaderElection": lease_config(), "shards": 2, "shutdownTimeout": "2s"},
    }
    first = controllers(cfg, name="first")
    first.wait_event("sync.done", app="calm", timeout=30)
    first.wait_event("sync.started", app="stuck")
    second = controllers(cfg, name="second")
    second.wait_http()
    kept = first.wait_event("shard.kept", timeout=30)
    assert kept["shard"] == 1
    handed = first.wait_event("shard.handed_off", timeout=30)
    assert handed["shard"] == 0
    second.wait_event("sync.done", app="calm", timeout=30)
    assert _held(first) == [1]
    assert _held(second) == [0]
    assert not second.events("sync.started", app="stuck")
    first.kill()
    second.kill()
