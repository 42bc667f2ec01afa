"""Render benchmark: how long render takes on a few MB of manifests in public shapes.

    python -m tests.bench.bench_render [--runs 3]

Three apps of about 5 MB each: an install bundle (big CRDs, a ~1 MiB ConfigMap, typed
lists), the same shapes as one JSON List, and 6,000 small Deployments (the densest
YAML per byte). Prints wall and CPU seconds per run, and the peak RSS. No cluster, no
Git: render only. Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from gitsync.render.manifests import StaticKinds, render
from gitsync.render.yamlread import Document, flatten_list
from tests.support import wild

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web-{i}, labels: {{app: web-{i}}}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web-{i}}}}}
  template:
    metadata: {{labels: {{app: web-{i}}}}}
    spec:
      containers:
        - name: web
          image: registry.invalid/web:1
          ports: [{{containerPort: 8080}}]
          resources: {{limits: {{cpu: 100m, memory: 64Mi}}}}
          readinessProbe: {{httpGet: {{path: /, port: 8080}}}}
          securityContext: {{runAsNonRoot: true}}
          env:
            - {{name: A, value: "1"}}
            - {{name: B, value: "2"}}
"""


def _bundle(app: Path) -> None:
    """13 CRDs of 300 KiB (renamed copies), a 950 KiB ConfigMap and fixtures/wild's lists."""
    crd = wild.crd_yaml()
    for i in range(13):
        (app / f"crd-{i:02d}.yaml").write_text(
            crd.replace("gadgets", f"gadgets{i}").replace("Gadget", f"Gadget{i}")
        )
    (app / "dashboards.yaml").write_text(wild.configmap_yaml())
    fixtures = Path(__file__).resolve().parents[2] / "fixtures" / "wild"
    for name in ("configmaps.yaml", "rbac.yaml", "list.json", "single.json"):
        (app / name).write_text((fixtures / name).read_text())


def _json_list(app: Path) -> None:
    """The bundle's objects as one indented v1 List in JSON."""
    items = []
    source = app.parent / "bundle-source"
    source.mkdir()
    _bundle(source)
    for path in sorted(source.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:  # kubectl applies no list inside a list: take the items
                items.extend(d.value for d in flatten_list(Document(value=doc, line=1))[0])
    doc = {"apiVersion": "v1", "kind": "List", "items": items}
    (app / "bundle.json").write_text(json.dumps(doc, indent=2))


def _deployments(app: Path) -> None:
    text = "---\n".join(DEPLOYMENT.format(i=i) for i in range(6000))
    (app / "deployments.yaml").write_text(text)


APPS: dict[str, Callable[[Path], None]] = {
    "install bundle (YAML)": _bundle,
    "install bundle (one JSON List)": _json_list,
    "6,000 Deployments": _deployments,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gitsync-bench-render-") as tmp:
        for number, (label, build) in enumerate(APPS.items()):
            app = Path(tmp) / str(number) / "app"
            app.mkdir(parents=True)
            build(app)
            size = sum(p.stat().st_size for p in app.iterdir())
            for run in range(1, args.runs + 1):
                wall, cpu = time.perf_counter(), time.process_time()
                result = render(
                    app, repo_root=app, default_namespace="bench", app_name="bench",
                    kinds=StaticKinds(),
                )  # fmt: skip
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                print(
                    f"{label}: {size / 1e6:.1f} MB, {len(result)} objects, "
                    f"run {run}: {wall:.2f} s wall, {cpu:.2f} s CPU"
                )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
