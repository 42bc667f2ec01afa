"""The one exception tree of gitsync.

    GitSyncError
    ├── ConfigError          bad config file or flags (exit code 2, nothing touched)
    ├── SourceError          fetch/clone failed, bad URL or ref, auth refused
    ├── RenderError          manifests could not be rendered or validated (file:line)
    ├── KubeError            the API server refused or failed a request
    │   ├── NotFoundError
    │   ├── ConflictError     optimistic-concurrency or field-manager conflict
    │   └── InvalidError      422: invalid or immutable field
    ├── ApplyError           one or more objects failed to apply; carries each failure
    ├── LimitError           a render writes outside the app's namespaces or kinds (file:line)
    ├── HealthTimeout        rollout did not become healthy in time
    └── StateError           the in-cluster state Secret is unreadable

Library exceptions (GitPython, kubernetes ApiException, yaml) are translated at the
module that calls the library, with ``raise ... from e``, so callers catch only these.
"""

from __future__ import annotations


class GitSyncError(Exception):
    """Base of every error gitsync raises on purpose."""


class ConfigError(GitSyncError):
    """The configuration cannot be used; nothing was done."""


class SourceError(GitSyncError):
    """The Git source could not be fetched or checked out."""


class RenderError(GitSyncError):
    """Manifests could not be rendered; every problem found is listed."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        head = problems[0] if len(problems) == 1 else f"{len(problems)} problems in manifests"
        body = "" if len(problems) == 1 else "\n" + "\n".join(f"  - {p}" for p in problems)
        super().__init__(head + body)


# HTTP statuses that say "not now" rather than "not this": the API server or etcd is
# restarting, overloaded (API Priority and Fairness answers 429) or timed out.
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


class KubeError(GitSyncError):
    """The API server refused or failed a request.

    ``status`` is the HTTP status (0 when no answer came); ``transient`` says whether the
    same request could succeed later (kube.py already retried it for a while), so only a
    non-transient 4xx is a rejection of the request's own content.
    """

    def __init__(
        self, message: str, *, status: int = 0, reason: str = "", transient: bool | None = None
    ) -> None:
        self.status = status
        self.reason = reason
        self._transient = transient
        super().__init__(message)

    @property
    def transient(self) -> bool:
        """True for 5xx, 429, timeouts and refused/reset connections."""
        if self._transient is not None:
            return self._transient
        return self.status in TRANSIENT_STATUSES

    @property
    def permanent(self) -> bool:
        """A 4xx that retrying cannot fix: the request (the commit's content) is wrong."""
        return 400 <= self.status < 500 and not self.transient and self.status != 408


class NotFoundError(KubeError):
    """The object or kind does not exist."""


class ConflictError(KubeError):
    """A resourceVersion or field-manager conflict."""


class InvalidError(KubeError):
    """The object is invalid, e.g. an immutable field was changed."""


class ApplyError(GitSyncError):
    """Some objects failed to apply; later stages were not started."""

    def __init__(self, failures: list[tuple[str, str]]) -> None:
        self.failures = list(failures)
        lines = "\n".join(f"  - {ref}: {msg}" for ref, msg in failures)
        super().__init__(f"{len(failures)} object(s) failed to apply:\n{lines}")


class LimitError(GitSyncError):
    """Objects outside the app's ``allowedNamespaces`` / ``clusterScoped``: nothing written."""

    def __init__(self, app: str, violations: list[str]) -> None:
        self.violations = list(violations)
        lines = "\n".join(f"  - {v}" for v in violations)
        super().__init__(f"{len(violations)} object(s) outside the limits of app {app!r}:\n{lines}")


class HealthTimeout(GitSyncError):
    """The rollout did not become healthy within the deadline."""


class StateError(GitSyncError):
    """The app's in-cluster state could not be read or written."""
