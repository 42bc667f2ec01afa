"""Manifest text for integration tests; ``{ns}`` is filled in by ``App.commit``."""

from __future__ import annotations

NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"


def config_maps(prefix: str, count: int, value: str = "v") -> str:
    return "".join(
        f"---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {prefix}-{i}\n"
        f"  namespace: {{ns}}\ndata:\n  key: {value}\n"
        for i in range(count)
    )


def deployment(
    *,
    behavior: str = "",
    image: str = "registry.invalid/web:1",
    replicas: int = 1,
    deadline: int = 600,
) -> str:
    """Deployment ``web``; ``behavior`` labels its Pods for our KWOK stages (crashloop...)."""
    extra = f"\n        gitsync.test/behavior: {behavior}" if behavior else ""
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {{ns}}
spec:
  replicas: {replicas}
  progressDeadlineSeconds: {deadline}
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
          image: {image}
"""


# A namespaced CRD of kind Widget in the app's own group (``App.group``).
CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget}}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"""
