"""The config file: parsed and validated before anything touches a cluster.

Every problem is reported with its key path (``apps[1].interval``), unknown keys are
errors (a typo like ``selfheal`` must not silently mean "off"), and the result is frozen.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gitsync.engine.limits import Limits
from gitsync.errors import ConfigError
from gitsync.render.helm import HelmSettings
from gitsync.render.yamlread import ReadError, ReadLimits, read_first

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?$")
PLAINTEXT_SCHEMES = frozenset({"http", "git"})
_GLOB = re.compile(r"^[a-z0-9*?\[\]-]{1,63}$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")


def parse_duration(value: Any) -> float:
    """``90``, ``"90s"``, ``"5m"``, ``"1h30m"`` → seconds."""
    if isinstance(value, bool):
        msg = f"{value!r} is not a duration"
        raise ValueError(msg)  # noqa: TRY004 - pydantic reports ValueError, not TypeError
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value).strip())
        if not m or not any(m.groups()):
            msg = f"{value!r} is not a duration (use e.g. 30s, 5m, 1h30m)"
            raise ValueError(msg)
        h, mi, s, ms = (int(g) if g else 0 for g in m.groups())
        seconds = h * 3600 + mi * 60 + s + ms / 1000
    if seconds <= 0:
        msg = f"{value!r} must be longer than zero"
        raise ValueError(msg)
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class AuthConfig(_Model):
    """Credentials come from a Secret: keys ``username``/``password`` or ``token``, or
    ``identity`` (ssh private key) and ``known_hosts``."""

    secret_ref: str = Field(alias="secretRef")


class VerifyConfig(_Model):
    """Trusted signers of the synced commit (or annotated tag): a Secret with ``pgp.asc``
    (armored OpenPGP public keys) and/or ``allowed_signers`` (ssh-keygen's format); the
    CLI may give a local file or directory instead (``keys``)."""

    secret_ref: str | None = Field(default=None, alias="secretRef")
    keys: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> VerifyConfig:
        if (self.secret_ref is None) == (self.keys is None):
            msg = "give exactly one of secretRef or keys"
            raise ValueError(msg)
        return self


class SecretKeyRef(_Model):
    """One key of a Secret in the controller's namespace (``stateNamespace``)."""

    name: str
    key: str = "secret"


class AppWebhookConfig(_Model):
    """This app's own webhook HMAC secret (``secretRef: NAME`` or ``{name, key}``);
    it replaces ``controller.webhook``'s secret for ``POST /hooks/<app>``."""

    secret_ref: SecretKeyRef = Field(alias="secretRef")

    @field_validator("secret_ref", mode="before")
    @classmethod
    def _name_only(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v


class PruneConfig(_Model):
    enabled: bool = True
    allow_empty: bool = Field(default=False, alias="allowEmpty")
    allow_mass_delete: bool = Field(default=False, alias="allowMassDelete")


class HealthConfig(_Model):
    timeout: Duration | None = None


class RollbackConfig(_Model):
    enabled: bool = True


class IgnoreRule(_Model):
    kind: str
    name: str = "*"
    pointer: str = Field(alias="jsonPointer")


class HelmConfig(_Model):
    """``helm template`` settings for an app whose path is a chart directory."""

    release_name: str | None = Field(default=None, alias="releaseName")
    namespace: str | None = None
    values: dict[str, Any] = Field(default_factory=dict)
    # Relative to the chart directory; render checks each stays inside the repository.
    values_files: tuple[str, ...] = Field(default=(), alias="valuesFiles")

    @field_validator("release_name")
    @classmethod
    def _release(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.match(v):
            msg = f"{v!r} must be a DNS label of at most 52 characters (a Helm release name)"
            raise ValueError(msg)
        return v

    @field_validator("values_files")
    @classmethod
    def _values_files(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for entry in v:
            if not entry or "://" in entry or Path(entry).is_absolute():
                msg = f"{entry!r} must be a relative path inside the repository"
                raise ValueError(msg)
        return v


class ServiceAccountRef(_Model):
    """The ServiceAccount an app's requests impersonate (``apps[].serviceAccount``)."""

    name: str
    namespace: str

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class AppConfig(_Model):
    name: str
    # Before ``repo``, whose validator reads it: http:// and git:// let anyone on the
    # network path choose what is applied.
    allow_insecure: bool = Field(default=False, alias="allowInsecure")
    repo: str
    ref: str = Field(default="main", alias="branch")
    path: str = "."
    interval: Duration = 60.0
    namespace: str = "default"
    prune: PruneConfig = PruneConfig()
    self_heal: bool = Field(default=False, alias="selfHeal")
    health: HealthConfig = HealthConfig()
    rollback: RollbackConfig = RollbackConfig()
    auth: AuthConfig | None = None
    ignore: tuple[IgnoreRule, ...] = ()
    # Other gitsync apps whose objects this app may take over (default: none).
    adopt_from: tuple[str, ...] = Field(default=(), alias="adoptFrom")
    helm: HelmConfig | None = None

    @property
    def helm_settings(self) -> HelmSettings | None:
        """What render gives ``helm template`` (None: no ``helm`` section)."""
        if self.helm is None:
            return None
        return HelmSettings(
            release_name=self.helm.release_name or "",
            namespace=self.helm.namespace or "",
            values=self.helm.values,
            values_files=self.helm.values_files,
        )

    verify: VerifyConfig | None = None
    webhook: AppWebhookConfig | None = None

    # Who the app's requests run as (default: gitsync itself).
    service_account: ServiceAccountRef | None = Field(default=None, alias="serviceAccount")
    # Namespaces (names or globs) the app may write in; None: any.
    allowed_namespaces: tuple[str, ...] | None = Field(default=None, alias="allowedNamespaces")
    # Cluster-scoped kinds the app may write: "deny", a list of kinds, or None: any.
    cluster_scoped: Literal["deny"] | tuple[str, ...] | None = Field(
        default=None, alias="clusterScoped"
    )

    @property
    def limits(self) -> Limits:
        return Limits(namespaces=self.allowed_namespaces, cluster_kinds=self.cluster_scoped)

    @field_validator("allowed_namespaces")
    @classmethod
    def _globs(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for pattern in v or ():
            if not _GLOB.match(pattern):
                msg = f"{pattern!r} is not a namespace name or glob (letters, digits, -, *, ?)"
                raise ValueError(msg)
        return v

    @field_validator("cluster_scoped", mode="before")
    @classmethod
    def _kinds(cls, v: Any) -> Any:
        if isinstance(v, str) and v != "deny":
            msg = f"{v!r}: give 'deny' or a list of kinds (e.g. [Namespace, ClusterRole])"
            raise ValueError(msg)
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            msg = f"{v!r} must be a DNS label of at most 52 characters (it names a Secret)"
            raise ValueError(msg)
        return v

    @field_validator("prune", mode="before")
    @classmethod
    def _prune(cls, v: Any) -> Any:
        return {"enabled": v} if isinstance(v, bool) else v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if Path(v).is_absolute() or ".." in Path(v).parts:
            msg = f"{v!r} must be a relative path inside the repository"
            raise ValueError(msg)
        return v

    @field_validator("repo")
    @classmethod
    def _plaintext(cls, v: str, info: ValidationInfo) -> str:
        scheme = v.split("://", 1)[0].lower() if "://" in v else ""
        if scheme in PLAINTEXT_SCHEMES and not info.data.get("allow_insecure"):
            msg = (
                f"{scheme}:// is unencrypted and unauthenticated, so anyone on the "
                "network path chooses what is applied; use https:// or ssh://, or set "
                "allowInsecure: true on this app (--allow-insecure on the command line)"
            )
            raise ValueError(msg)
        return v


class WebhookConfig(_Model):
    """The HMAC-SHA256 secret that ``POST /hooks/<app>`` requests are signed with.

    Exactly one source: a Secret key (read once at start), a mounted file, or an
    environment variable. Without a ``webhook`` section ``/hooks/`` answers 404.
    """

    secret_ref: SecretKeyRef | None = Field(default=None, alias="secretRef")
    secret_file: str | None = Field(default=None, alias="secretFile")
    secret_env: str | None = Field(default=None, alias="secretEnv")
    max_body_bytes: int = Field(default=1_048_576, alias="maxBodyBytes", gt=0, le=26_214_400)

    @model_validator(mode="after")
    def _one_source(self) -> WebhookConfig:
        given = [self.secret_ref, self.secret_file, self.secret_env]
        if sum(v is not None for v in given) != 1:
            msg = "give exactly one of secretRef, secretFile or secretEnv"
            raise ValueError(msg)
        return self


class LeaderElectionConfig(_Model):
    """client-go's defaults: a standby takes over at most ``leaseDuration`` after a crash."""

    enabled: bool = True
    lease_name: str = Field(default="gitsync-leader", alias="leaseName")
    lease_duration: Duration = Field(default=15.0, alias="leaseDuration")
    renew_deadline: Duration = Field(default=10.0, alias="renewDeadline")
    retry_period: Duration = Field(default=2.0, alias="retryPeriod")

    @model_validator(mode="after")
    def _ordered(self) -> LeaderElectionConfig:
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            msg = "need retryPeriod < renewDeadline < leaseDuration"
            raise ValueError(msg)
        return self


class RetryConfig(_Model):
    """Backoff after a failed sync: ``initial``, doubling, never past ``max`` or the interval."""

    initial: Duration = 5.0
    max: Duration = 300.0


class ControllerConfig(_Model):
    """``gitsync run`` only: endpoints, leader election, retries, shutdown."""

    listen: str = ":8080"
    leader_election: LeaderElectionConfig = Field(
        default=LeaderElectionConfig(), alias="leaderElection"
    )
    webhook: WebhookConfig | None = None
    retry: RetryConfig = RetryConfig()
    jitter: float = Field(default=0.1, ge=0.0, le=0.5)
    stuck_after: Duration | None = Field(default=None, alias="stuckAfter")
    shutdown_timeout: Duration = Field(default=45.0, alias="shutdownTimeout")
    # Rides out an API server or etcd restart; a dead API server still fails a sync.
    api_retry_timeout: Duration = Field(default=60.0, alias="apiRetryTimeout")
    # The read-only status page at / and its JSON at /api/apps (gitsync.runtime.ui).
    ui: bool = True
    # Apps split into this many shards, each led through a Lease of its own, so that
    # replicas share the apps (gitsync.runtime.shards); 1 is the single-leader setup.
    shards: int = Field(default=1, ge=1, le=64)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536 or " " in host:
            msg = f"{v!r} must be HOST:PORT or :PORT"
            raise ValueError(msg)
        return v


class GitSyncConfig(_Model):
    apps: tuple[AppConfig, ...]
    state_namespace: str = Field(default="gitsync-system", alias="stateNamespace")
    cache_dir: str = Field(default="/var/cache/gitsync", alias="cacheDir")
    controller: ControllerConfig = ControllerConfig()

    @model_validator(mode="after")
    def _sharding(self) -> GitSyncConfig:
        ctl = self.controller
        if ctl.shards > 1 and not ctl.leader_election.enabled:
            msg = (
                "controller.shards: sharding needs leader election; set "
                "controller.leaderElection.enabled: true or shards: 1"
            )
            raise ValueError(msg)
        if ctl.shards > 1 and len(ctl.leader_election.lease_name) > 50:
            # It is also the value of the membership label (at most 63 characters).
            msg = (
                "controller.shards: with more than one shard, "
                "controller.leaderElection.leaseName may have at most 50 characters"
            )
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _unique(self) -> GitSyncConfig:
        seen: set[str] = set()
        for i, app in enumerate(self.apps):
            if app.name in seen:
                msg = f"apps[{i}].name: app name {app.name!r} is used twice"
                raise ValueError(msg)
            seen.add(app.name)
        return self


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def parse(raw: Any, *, source: str = "config") -> GitSyncConfig:
    try:
        return GitSyncConfig.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            where = _loc(tuple(err["loc"]))
            text = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                text = "unknown key"
            lines.append(f"{source}: {where}: {text}" if where else f"{source}: {text}")
        raise ConfigError("\n".join(lines)) from None


def load(path: str | Path) -> GitSyncConfig:
    """Read and validate a config file; every problem in one ConfigError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        msg = f"{p}: cannot read config: {e}"
        raise ConfigError(msg) from e
    try:
        raw, _ = read_first(text, ReadLimits(), only=True)
    except ReadError as e:
        msg = f"{p}:{e.line}: config is not valid YAML: {e.message}"
        raise ConfigError(msg) from e
    if not isinstance(raw, dict):
        msg = f"{p}: config must be a mapping with an 'apps' list"
        raise ConfigError(msg)
    return parse(raw, source=str(p))
