"""The only module that talks to the Kubernetes API server.

A thin JSON client over pooled urllib3 connections: the kubernetes package is used only
to read kubeconfig / in-cluster credentials. Owning the request path gives us
server-side apply with any content type, aggregated discovery in two calls, a
client-side rate limit set for a controller rather than a CLI, and a call counter per
verb that the benchmarks print.

Connections: requests and watches use separate pools, so long watches (one per app and
kind, held for minutes) can never take the connections that writes need; a request that
waits for a pooled connection gives up after ``pool_timeout``. ``dedicated()`` makes a
sibling client with its own small pool for the leader Lease.

Identity: ``impersonate()`` makes a client that shares this one's pools, credentials,
rate limit, counters, write fence and discovery cache, but sends every request as another
user (an app's ServiceAccount), so the API server's RBAC, not gitsync, decides what that
app may do. Discovery is the same for every user (the API server serves it to all
authenticated users), so sharing its cache leaks nothing.

Retries: a request that fails for a reason that is not its own (5xx, 429, a timeout, a
refused or reset connection, as during an API server or etcd restart) is sent again with
capped exponential backoff and jitter, for at most ``retry_budget`` seconds in total, so
a dead API server still fails. A request the server may already have carried out is only
resent if resending is safe: server-side apply, GET, DELETE (with a uid precondition) and
PUT with a resourceVersion are; a POST is, because an AlreadyExists answer after an
unsure attempt is checked against what we sent (see ``create``); a JSON patch is not.
Watches are never retried here: their callers relist.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import json
import random
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode

import urllib3

from gitsync.errors import (
    TRANSIENT_STATUSES,
    ConflictError,
    InvalidError,
    KubeError,
    NotFoundError,
)
from gitsync.model import FIELD_MANAGER, KubeObject, ObjectRef
from gitsync.runtime import metrics

_AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
_APPLY = "application/apply-patch+yaml"
_MERGE = "application/merge-patch+json"
_JSON_PATCH = "application/json-patch+json"
# API Priority and Fairness protects the server and answers 429 with Retry-After, which we
# honour; the client-side bucket is only a backstop against a runaway loop, so it is set
# well above what a sync of a few thousand objects needs.
DEFAULT_QPS = 500.0
DEFAULT_BURST = 1000
# Long enough to ride out an API server or etcd restart, short enough that a dead API
# server fails the sync within a minute.
DEFAULT_RETRY_BUDGET = 60.0
DEFAULT_POOL_SIZE = 32
# Connections are opened lazily, so this only caps how many idle ones are kept; watches
# never wait for one (the pool does not block).
DEFAULT_WATCH_POOL_SIZE = 1024
CONNECT_TIMEOUT = 10.0


class Transience(enum.Enum):
    """What a failed attempt says about sending the same request again."""

    PERMANENT = "permanent"  # the request itself is wrong (or the server refuses it)
    UNSENT = "unsent"  # the server did not act on it: safe to send anything again
    AMBIGUOUS = "ambiguous"  # the server may have acted: resend only what is idempotent


def classify_status(status: int) -> Transience:
    """429 is turned away before any work; other transient 5xx may follow a write."""
    if status == 429:
        return Transience.UNSENT
    if status in TRANSIENT_STATUSES:
        return Transience.AMBIGUOUS
    return Transience.PERMANENT


def classify_exception(error: BaseException) -> Transience:
    """urllib3's errors (raised as is with ``retries=False``) by what reached the server."""
    exc = urllib3.exceptions
    if isinstance(error, exc.ConnectTimeoutError | exc.EmptyPoolError):
        # Includes NewConnectionError (refused, e.g. the API server is restarting) and a
        # pool that had no free connection in time: nothing was sent.
        return Transience.UNSENT
    if isinstance(error, exc.SSLError):
        cause = error.__cause__ or (error.args[0] if error.args else None)
        if isinstance(cause, ssl.SSLCertVerificationError):
            return Transience.PERMANENT
        return Transience.UNSENT  # a handshake cut short by a restart
    if isinstance(error, exc.TimeoutError | exc.ProtocolError | ConnectionError):
        return Transience.AMBIGUOUS  # a read timeout, reset or a connection closed mid-answer
    return Transience.PERMANENT


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Capped exponential backoff with jitter, within a total time budget."""

    budget: float = DEFAULT_RETRY_BUDGET
    initial: float = 0.2
    cap: float = 5.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap * 2)
        base = min(self.cap, self.initial * 2.0**attempt)
        jitter: float = random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto
        return base * jitter


def _retry_after(resp: urllib3.BaseHTTPResponse) -> float | None:
    value = resp.headers.get("Retry-After")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def contains(live: Any, sent: Any, *, top: bool = True) -> bool:
    """Whether every field of ``sent`` has the same value in ``live`` (metadata the
    server sets — resourceVersion, managedFields — ignored): our own write landed."""
    if isinstance(sent, dict):
        if not isinstance(live, dict):
            return False
        for key, value in sent.items():
            if top and key == "metadata" and isinstance(value, dict):
                server_set = ("resourceVersion", "managedFields")
                meta = {k: v for k, v in value.items() if k not in server_set}
                if not contains(live.get("metadata"), meta, top=False):
                    return False
            elif key not in live or not contains(live[key], value, top=False):
                return False
        return True
    if isinstance(sent, list):
        return (
            isinstance(live, list)
            and len(live) == len(sent)
            and all(contains(a, b, top=False) for a, b in zip(live, sent, strict=True))
        )
    return bool(live == sent)


@dataclass(frozen=True, slots=True, kw_only=True)
class Resource:
    """One served REST resource (a kind at a group/version)."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    verbs: frozenset[str]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str = "", name: str = "", subresource: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name, safe='')}"
        if subresource:
            base += f"/{subresource}"
        return base


@dataclass(frozen=True, slots=True)
class Discovery:
    """What the API server serves: (group, kind) → preferred Resource, and per version."""

    preferred: dict[tuple[str, str], Resource]
    by_version: dict[tuple[str, str, str], Resource]

    def resource(self, group: str, version: str, kind: str) -> Resource | None:
        return self.by_version.get((group, version, kind)) or None

    def for_ref(self, ref: ObjectRef) -> Resource | None:
        return self.resource(ref.group, ref.version, ref.kind)

    def scope(self, api_version: str, kind: str) -> Literal["Namespaced", "Cluster"] | None:
        """``KindResolver`` for render: "Namespaced", "Cluster" or None if unknown."""
        group, _, version = api_version.rpartition("/")
        res = self.resource(group, version, kind)
        if res is None:
            return None
        return "Namespaced" if res.namespaced else "Cluster"


class WatchCancel:
    """Ends a watch that another thread is blocked reading, at once (a watcher's stop())."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._response: urllib3.BaseHTTPResponse | None = None
        self.cancelled = False

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            response = self._response
        if response is not None:
            # The stream may end (and close its socket) at the same moment: nothing to stop.
            with contextlib.suppress(OSError):
                response.shutdown()

    def _attach(self, response: urllib3.BaseHTTPResponse | None) -> bool:
        """Remember the open stream; False if cancel() already happened."""
        with self._lock:
            self._response = response
            return not self.cancelled


class _RateLimiter:
    """Token bucket; a controller wants a higher QPS than a CLI but not an unbounded one."""

    def __init__(self, qps: float, burst: int) -> None:
        self._qps = qps
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> None:
        if self._qps <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._qps)
            self._last = now
            self._tokens -= 1
            wait = -self._tokens / self._qps if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


def _status_message(status: int, data: bytes) -> tuple[str, str]:
    try:
        payload = json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")[:500] or f"HTTP {status}", ""
    if isinstance(payload, dict):
        return str(payload.get("message") or f"HTTP {status}"), str(payload.get("reason") or "")
    return f"HTTP {status}", ""


def _error_for(status: int, data: bytes, what: str) -> KubeError:
    message, reason = _status_message(status, data)
    text = f"{what}: {message}"
    if status == 404:
        return NotFoundError(text, status=status, reason=reason)
    if status == 409:
        return ConflictError(text, status=status, reason=reason)
    if status in (400, 422):
        return InvalidError(text, status=status, reason=reason)
    return KubeError(text, status=status, reason=reason)


def _raise_for(status: int, data: bytes, what: str) -> None:
    raise _error_for(status, data, what)


Recover = Callable[[int], Any]


class Kube:
    """A Kubernetes API client; thread-safe, safe to share between stages."""

    def __init__(
        self,
        *,
        host: str,
        pool: urllib3.PoolManager,
        auth: Callable[[], dict[str, str]],
        watch_pool: urllib3.PoolManager | None = None,
        pools: Callable[[int, bool], urllib3.PoolManager] | None = None,
        qps: float = DEFAULT_QPS,
        burst: int = DEFAULT_BURST,
        timeout: float = 30.0,
        pool_timeout: float = 30.0,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
    ) -> None:
        self.host = host.rstrip("/")
        self._pool = pool
        self._watch_pool = watch_pool or pool
        self._pools = pools
        self._auth = auth
        self._limiter = _RateLimiter(qps, burst)
        self._timeout = timeout
        self._pool_timeout = pool_timeout
        self.retry = RetryPolicy(budget=retry_budget)
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self._discovery: Discovery | None = None
        self._write_fence: Callable[[], str] | None = None
        self._user_agent = "gitsync"
        # Set on an impersonating client (see ``impersonate``).
        self._root: Kube | None = None
        self.acting_as = ""
        self._as_headers: tuple[tuple[str, str], ...] = ()
        self._scope: frozenset[str] = frozenset()

    # --- construction ---------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        *,
        kubeconfig: str | Path | None = None,
        context: str | None = None,
        qps: float = DEFAULT_QPS,
        burst: int = DEFAULT_BURST,
        pool_size: int = DEFAULT_POOL_SIZE,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
    ) -> Kube:
        """Credentials from ``kubeconfig``, else $KUBECONFIG/~/.kube/config, else in-cluster."""
        from kubernetes import config as kconfig
        from kubernetes.client import Configuration

        cfg = Configuration()
        try:
            if kubeconfig is not None or context is not None or _default_kubeconfig_exists():
                kconfig.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=str(kubeconfig) if kubeconfig else None,
                    context=context,
                    client_configuration=cfg,
                )
            else:
                kconfig.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except (kconfig.ConfigException, OSError, ValueError) as e:
            msg = f"cannot load Kubernetes credentials: {e}"
            raise KubeError(msg) from e
        return cls.from_configuration(
            cfg, qps=qps, burst=burst, pool_size=pool_size, retry_budget=retry_budget
        )

    @classmethod
    def from_configuration(
        cls,
        cfg: Any,
        *,
        qps: float = DEFAULT_QPS,
        burst: int = DEFAULT_BURST,
        pool_size: int = DEFAULT_POOL_SIZE,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
    ) -> Kube:
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.verify_ssl else None
        if ctx is None:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)

        def pools(size: int, block: bool) -> urllib3.PoolManager:
            return urllib3.PoolManager(
                num_pools=4, maxsize=size, block=block, ssl_context=ctx, retries=False
            )

        def auth() -> dict[str, str]:
            # kubernetes>=30 keeps kubeconfig and in-cluster tokens under "BearerToken"
            # ("Bearer ..." already), and refreshes rotated in-cluster tokens in this call.
            token = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
            if token:
                return {"Authorization": token}
            if cfg.username:
                return dict(urllib3.make_headers(basic_auth=f"{cfg.username}:{cfg.password}"))
            return {}

        return cls(
            host=cfg.host,
            pool=pools(pool_size, True),
            watch_pool=pools(DEFAULT_WATCH_POOL_SIZE, False),
            pools=pools,
            auth=auth,
            qps=qps,
            burst=burst,
            retry_budget=retry_budget,
        )

    def dedicated(
        self, *, pool_size: int = 2, retry_budget: float = 0.0, timeout: float = 5.0
    ) -> Kube:
        """A sibling client with the same credentials and its own small pool and limits:
        for the leader Lease, whose renewals must never queue behind syncs."""
        if self._pools is None:
            msg = "this client was built without a pool factory; cannot make a dedicated one"
            raise KubeError(msg)
        twin = Kube(
            host=self.host,
            pool=self._pools(pool_size, True),
            watch_pool=self._pools(pool_size, True),
            pools=self._pools,
            auth=self._auth,
            qps=0,
            timeout=timeout,
            pool_timeout=timeout,
            retry_budget=retry_budget,
        )
        twin._user_agent = (self._root or self)._user_agent
        return twin

    def impersonate(
        self,
        user: str,
        groups: Sequence[str] = (),
        *,
        label: str = "",
        namespaces: Collection[str] = (),
    ) -> Kube:
        """A client that acts as ``user`` (``Impersonate-User``/``Impersonate-Group``),
        sharing everything else with this one; errors say ``as <label or user>``.

        For a ServiceAccount user, leave ``groups`` empty: the API server then adds the
        account's fixed groups (system:serviceaccounts, system:serviceaccounts:<ns>,
        system:authenticated) itself, so gitsync needs ``impersonate`` on the
        ServiceAccount only, not on any group. ``namespaces``: see ``scoped``.
        """
        root = self._root or self
        twin = copy.copy(root)
        twin._root = root
        twin.acting_as = label or user
        twin._as_headers = (
            ("Impersonate-User", user),
            *(("Impersonate-Group", g) for g in groups),
        )
        twin._scope = frozenset(namespaces)
        return twin

    def scoped(self, namespaces: Collection[str]) -> Kube:
        """The same identity; a cluster-wide LIST it is forbidden (403) is answered by
        one LIST per namespace in ``namespaces``, as an identity that holds only Roles
        in those namespaces can do."""
        twin = copy.copy(self)
        twin._root = self._root or self  # discovery and the write fence stay shared
        twin._scope = frozenset(namespaces)
        return twin

    def _headers(self, accept: str) -> urllib3.HTTPHeaderDict:
        headers = urllib3.HTTPHeaderDict(
            {"Accept": accept, "User-Agent": (self._root or self)._user_agent, **self._auth()}
        )
        for key, value in self._as_headers:
            headers.add(key, value)  # repeated, not joined: the API server reads each line
        return headers

    def set_user_agent(self, agent: str) -> None:
        """Name this replica in the API server's view (its audit log): ``gitsync/<id>``;
        shared by every client derived from this one (set it before ``dedicated``)."""
        (self._root or self)._user_agent = agent

    def set_write_fence(self, fence: Callable[[], str] | None) -> None:
        """``fence()`` returns why writes must stop now ("" to go ahead); checked before
        every write attempt, so a leader whose Lease ran out sends nothing more."""
        (self._root or self)._write_fence = fence

    # --- raw requests ---------------------------------------------------------------

    def _count(self, verb: str) -> None:
        with self._lock:
            self.calls[verb] += 1
        # Process-wide, unlike ``calls`` (which callers may clear): what /metrics shows.
        metrics.API_REQUESTS.labels(verb=verb).inc()

    def request(
        self,
        method: str,
        path: str,
        *,
        verb: str,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        timeout: float | None = None,
        what: str = "",
        resend: bool = True,
        recover: Recover | None = None,
    ) -> Any:
        """One API call, JSON in and out, retried while the failure is transient; errors
        become ``KubeError`` subclasses.

        ``resend=False`` (not idempotent) resends only what the server did not act on.
        ``recover(status)`` is asked, when an error answers a resend after an attempt
        that may have landed, whether that attempt did land: its result, or None.
        """
        url = self.host + path + ("?" + urlencode(query) if query else "")
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
        label = what or f"{method} {path}"
        if self.acting_as:
            label += f" as {self.acting_as}"
        seconds = timeout or self._timeout
        deadline = time.monotonic() + self.retry.budget
        unsure = False  # an earlier attempt may have been carried out
        attempt = 0
        while True:
            self._check_fence(method, label)
            self._limiter.take()
            self._count(verb)
            headers = self._headers(accept)
            if data is not None:
                headers["Content-Type"] = content_type
            retry_after: float | None = None
            try:
                resp = self._pool.request(
                    method,
                    url,
                    body=data,
                    headers=headers,
                    timeout=urllib3.Timeout(total=seconds, connect=min(seconds, CONNECT_TIMEOUT)),
                    pool_timeout=self._pool_timeout,
                    preload_content=True,
                )
            except urllib3.exceptions.HTTPError as e:
                kind = classify_exception(e)
                error = KubeError(
                    f"{label}: cannot reach the API server: {e}",
                    transient=kind is not Transience.PERMANENT,
                )
                error.__cause__ = e
            else:
                if resp.status < 400:
                    return json.loads(resp.data) if resp.data else {}
                if unsure and recover is not None:
                    landed = recover(resp.status)
                    if landed is not None:
                        self._count("recovered")
                        return landed
                kind = classify_status(resp.status)
                error = _error_for(resp.status, resp.data, label)
                retry_after = _retry_after(resp) if resp.status == 429 else None
            if kind is Transience.PERMANENT or (kind is Transience.AMBIGUOUS and not resend):
                raise error
            wait = self.retry.delay(attempt, retry_after)
            if time.monotonic() + wait > deadline:
                raise error
            unsure = unsure or kind is Transience.AMBIGUOUS
            self._count("retry")
            time.sleep(wait)
            attempt += 1

    def _check_fence(self, method: str, label: str) -> None:
        fence = (self._root or self)._write_fence
        if method == "GET" or fence is None:
            return
        reason = fence()
        if reason:
            msg = f"{label}: not sent: {reason}"
            raise KubeError(msg, transient=True)

    # --- discovery ------------------------------------------------------------------

    def discover(self, *, refresh: bool = False) -> Discovery:
        """All served kinds, from aggregated discovery (two calls), cached until refreshed."""
        if self._root is not None:
            return self._root.discover(refresh=refresh)
        if self._discovery is not None and not refresh:
            return self._discovery
        preferred: dict[tuple[str, str], Resource] = {}
        by_version: dict[tuple[str, str, str], Resource] = {}
        for root in ("/api", "/apis"):
            doc = self.request(
                "GET", root, verb="discovery", accept=f"{_AGGREGATED},application/json"
            )
            if doc.get("kind") != "APIGroupDiscoveryList":
                doc = self._legacy_discovery(root, doc)
            for group in doc.get("items", []):
                gname = (group.get("metadata") or {}).get("name", "")
                for vi, ver in enumerate(group.get("versions", [])):
                    for r in ver.get("resources", []):
                        kind = (r.get("responseKind") or {}).get("kind")
                        if not kind or "/" in r.get("resource", "/"):
                            continue
                        res = Resource(
                            group=gname,
                            version=ver["version"],
                            kind=kind,
                            plural=r["resource"],
                            namespaced=r.get("scope") == "Namespaced",
                            verbs=frozenset(r.get("verbs", [])),
                        )
                        by_version.setdefault((gname, ver["version"], kind), res)
                        if vi == 0 or (gname, kind) not in preferred:
                            preferred.setdefault((gname, kind), res)
        self._discovery = Discovery(preferred, by_version)
        return self._discovery

    def _legacy_discovery(self, root: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Older servers: walk group versions and shape them like aggregated discovery."""
        groups: list[tuple[str, list[str]]] = []
        if root == "/api":
            groups.append(("", list(doc.get("versions", []))))
        else:
            for g in doc.get("groups", []):
                versions = [v["version"] for v in g.get("versions", [])]
                pref = (g.get("preferredVersion") or {}).get("version")
                if pref in versions:
                    versions.remove(pref)
                    versions.insert(0, pref)
                groups.append((g["name"], versions))
        items = []
        for name, versions in groups:
            vers = []
            for v in versions:
                path = f"/api/{v}" if not name else f"/apis/{name}/{v}"
                rl = self.request("GET", path, verb="discovery")
                vers.append(
                    {
                        "version": v,
                        "resources": [
                            {
                                "resource": r["name"],
                                "responseKind": {"kind": r["kind"]},
                                "scope": "Namespaced" if r.get("namespaced") else "Cluster",
                                "verbs": r.get("verbs", []),
                            }
                            for r in rl.get("resources", [])
                        ],
                    }
                )
            items.append({"metadata": {"name": name}, "versions": vers})
        return {"items": items}

    def resource(self, ref: ObjectRef, *, refresh_if_missing: bool = True) -> Resource:
        res = self.discover().for_ref(ref)
        if res is None and refresh_if_missing:
            res = self.discover(refresh=True).for_ref(ref)
        if res is None:
            msg = f"the API server does not serve {ref.api_version} {ref.kind}"
            raise NotFoundError(msg, status=404)
        return res

    # --- object verbs ---------------------------------------------------------------

    def get(self, ref: ObjectRef) -> KubeObject | None:
        res = self.resource(ref)
        try:
            obj: KubeObject = self.request(
                "GET", res.path(ref.namespace, ref.name), verb="get", what=f"get {ref}"
            )
        except NotFoundError:
            return None
        return obj

    def list_objects(
        self,
        res: Resource,
        *,
        namespace: str = "",
        label_selector: str = "",
        limit: int = 500,
        cached: bool = False,
    ) -> tuple[list[KubeObject], str]:
        """All objects (paged), and the list's resourceVersion to start a watch from.

        ``cached`` reads from the API server's watch cache (``resourceVersion=0``): no
        etcd round trip, possibly a moment old; right for an informer's first list.

        An impersonating client with a scope (``scoped``) lists what its identity may
        see: a forbidden cluster-wide LIST of a namespaced kind becomes one LIST per
        namespace of the scope, and a forbidden LIST yields nothing (no resourceVersion
        either), so that the plan's per-object calls say which object is refused, and
        where it is written."""
        if namespace or not self._scope or not self.acting_as:
            return self._list(
                res, namespace=namespace, label_selector=label_selector, limit=limit, cached=cached
            )
        try:
            return self._list(
                res, namespace="", label_selector=label_selector, limit=limit, cached=cached
            )
        except KubeError as e:
            if e.status != 403:
                raise
        self._count("forbidden")
        items: list[KubeObject] = []
        for ns in sorted(self._scope) if res.namespaced else ():
            try:
                page, _rv = self._list(
                    res, namespace=ns, label_selector=label_selector, limit=limit
                )
                items += page
            except KubeError as e:
                if e.status != 403:
                    raise
                self._count("forbidden")
        return items, ""

    def _list(
        self,
        res: Resource,
        *,
        namespace: str,
        label_selector: str,
        limit: int,
        cached: bool = False,
    ) -> tuple[list[KubeObject], str]:
        items: list[KubeObject] = []
        query: dict[str, str] = {"limit": str(limit)}
        if label_selector:
            query["labelSelector"] = label_selector
        if cached:
            query["resourceVersion"] = "0"
        while True:
            page = self.request(
                "GET", res.path(namespace), verb="list", query=query, what=f"list {res.kind}"
            )
            for item in page.get("items", []):
                item.setdefault("apiVersion", res.api_version)
                item.setdefault("kind", res.kind)
                items.append(item)
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                return items, str(meta.get("resourceVersion", ""))
            query["continue"] = meta["continue"]

    def apply(
        self,
        obj: KubeObject,
        *,
        dry_run: bool = False,
        force: bool = True,
        manager: str = FIELD_MANAGER,
    ) -> KubeObject:
        """Server-side apply as ``manager`` (JSON is valid apply YAML)."""
        ref = ObjectRef.of(obj)
        res = self.resource(ref)
        query = {"fieldManager": manager, "force": "true" if force else "false"}
        if dry_run:
            query["dryRun"] = "All"
        result: KubeObject = self.request(
            "PATCH",
            res.path(ref.namespace, ref.name),
            verb="dry-run" if dry_run else "apply",
            query=query,
            body=obj,
            content_type=_APPLY,
            what=f"{'dry-run ' if dry_run else ''}apply {ref}",
        )
        return result

    def merge_patch(self, ref: ObjectRef, patch: dict[str, Any], *, manager: str) -> KubeObject:
        """A merge patch is idempotent: resent after an unsure attempt, it lands the same."""
        return self._patch(ref, patch, manager=manager, content_type=_MERGE, resend=True)

    def json_patch(self, ref: ObjectRef, ops: list[dict[str, Any]], *, manager: str) -> KubeObject:
        """RFC 6902 patch; a ``test`` op on resourceVersion makes it conditional, so it is
        resent only when the server did not act on it (a landed one would fail its test)."""
        return self._patch(ref, ops, manager=manager, content_type=_JSON_PATCH, resend=False)

    def _patch(
        self, ref: ObjectRef, body: Any, *, manager: str, content_type: str, resend: bool
    ) -> KubeObject:
        res = self.resource(ref)
        out: KubeObject = self.request(
            "PATCH",
            res.path(ref.namespace, ref.name),
            verb="patch",
            query={"fieldManager": manager},
            body=body,
            content_type=content_type,
            what=f"patch {ref}",
            resend=resend,
        )
        return out

    def create(self, obj: KubeObject, *, verb: str = "create") -> KubeObject:
        """POST. Resent after an attempt that may have landed (a timeout, a reset, a 5xx),
        an AlreadyExists answer is ours when the live object holds every field we sent:
        that object is returned. Otherwise it is someone else's: ``ConflictError``.
        ``verb`` names the call in the counters (gitsync's own state: "state")."""
        ref = ObjectRef.of(obj)
        res = self.resource(ref)
        out: KubeObject = self.request(
            "POST",
            res.path(ref.namespace),
            verb=verb,
            query={"fieldManager": FIELD_MANAGER},
            body=obj,
            what=f"create {ref}",
            recover=lambda status: self._landed(ref, obj) if status == 409 else None,
        )
        return out

    def replace(
        self, obj: KubeObject, *, manager: str = FIELD_MANAGER, verb: str = "update"
    ) -> KubeObject:
        """PUT with the object's resourceVersion: optimistic concurrency. A Conflict that
        answers a resend is ours only if the live object already holds what we sent."""
        ref = ObjectRef.of(obj)
        res = self.resource(ref)
        out: KubeObject = self.request(
            "PUT",
            res.path(ref.namespace, ref.name),
            verb=verb,
            query={"fieldManager": manager},
            body=obj,
            what=f"update {ref}",
            recover=lambda status: self._landed(ref, obj) if status == 409 else None,
        )
        return out

    def _landed(self, ref: ObjectRef, sent: KubeObject) -> KubeObject | None:
        """The live object if it holds every field of ``sent``; None if not (or unknown)."""
        try:
            live = self.get(ref)
        except KubeError:
            return None
        return live if live is not None and contains(live, sent) else None

    def delete(
        self,
        ref: ObjectRef,
        *,
        uid: str = "",
        propagation: str = "Background",
        verb: str = "delete",
    ) -> bool:
        """Delete; with ``uid`` only that incarnation. False if it was already gone."""
        res = self.resource(ref)
        body: dict[str, Any] = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": propagation,
        }
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            # NotFound answering a resend: an earlier attempt that seemed lost did it.
            self.request(
                "DELETE",
                res.path(ref.namespace, ref.name),
                verb=verb,
                body=body,
                what=f"delete {ref}",
                recover=lambda status: {} if status == 404 else None,
            )
        except NotFoundError:
            return False
        return True

    def watch(
        self,
        res: Resource,
        *,
        namespace: str = "",
        label_selector: str = "",
        resource_version: str = "",
        timeout_seconds: int = 300,
        cancel: WatchCancel | None = None,
    ) -> Iterator[tuple[str, KubeObject, bytes]]:
        """Stream (type, object, JSON line) events, BOOKMARKs included; ends when the server
        closes, or quietly when ``cancel`` is cancelled. The line is the event as received:
        a cache can keep those bytes (a fraction of the decoded object's memory)."""
        query = {
            "watch": "1",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        if label_selector:
            query["labelSelector"] = label_selector
        if resource_version:
            query["resourceVersion"] = resource_version
        url = self.host + res.path(namespace) + "?" + urlencode(query)
        self._limiter.take()
        self._count("watch")
        try:
            resp = self._watch_pool.request(
                "GET",
                url,
                headers=self._headers("application/json"),
                preload_content=False,
                timeout=urllib3.Timeout(connect=10, read=timeout_seconds + 30),
            )
        except urllib3.exceptions.HTTPError as e:
            msg = f"watch {res.kind}: cannot reach the API server: {e}"
            raise KubeError(msg, transient=classify_exception(e) is not Transience.PERMANENT) from e
        drained = False
        metrics.WATCHES_OPEN.inc()
        try:
            if cancel is not None and not cancel._attach(resp):
                return
            if resp.status >= 400:
                who = f" as {self.acting_as}" if self.acting_as else ""
                _raise_for(resp.status, resp.read(), f"watch {res.kind}{who}")
            yield from _json_lines(resp)
            drained = True
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            # ValueError: a line cut short (a cancel's socket shutdown, a dying server)
            # is not JSON, or not even UTF-8.
            if cancel is not None and cancel.cancelled:
                return
            msg = f"watch {res.kind} broke: {e}"
            raise KubeError(msg, transient=True) from e
        finally:
            metrics.WATCHES_OPEN.dec()
            if cancel is not None:
                cancel._attach(None)
            if not drained:
                # Left mid-stream (cancelled, broken, or the caller stopped reading): the
                # connection holds unread bytes and must not go back to the pool as is.
                resp.close()
            resp.release_conn()


def _json_lines(resp: urllib3.BaseHTTPResponse) -> Iterator[tuple[str, KubeObject, bytes]]:
    buf = b""
    for chunk in resp.stream(65536):
        *lines, buf = (buf + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                ev = json.loads(line)
                yield str(ev.get("type", "")), ev.get("object") or {}, line


def _default_kubeconfig_exists() -> bool:
    import os

    env = os.environ.get("KUBECONFIG")
    if env:
        return any(Path(p).exists() for p in env.split(os.pathsep) if p)
    return (Path.home() / ".kube" / "config").exists()
