"""Manifest text for integration tests; ``{ns}`` is filled in by ``App.commit``."""

from __future__ import annotations

NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"


def config_maps(prefix: str, count: int, value: str = "v") -> str:
    return "".join(
        f"---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {prefix}-{i}\n"
        f"  namespace: {{ns}}\ndata:\n  key: {value}\n"
        for i in range(count)
    )


def deployment(*, behavior: str = "", image: str = "registry.invalid/web:1") -> str:
    extra = f"\n        gitsync.test/behavior: {behavior}" if behavior else ""
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {{ns}}
spec:
  replicas: 1
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
