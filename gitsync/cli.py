"""Command line: ``gitsync render | diff | sync --once | status | run``.

Exit codes follow ``kubectl diff``: 0 in sync / success, 1 differences / sync failed,
2 an error before anything could be compared (bad config, unreachable repo, bad render).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from gitsync import __version__

EXIT_OK, EXIT_DIFF, EXIT_ERROR = 0, 1, 2


def _app_args(sp: argparse.ArgumentParser) -> None:
    """The flags that name an app and its cluster, shared by render, diff, sync and status."""
    g = sp.add_argument_group("app (from a config file, or from flags)")
    g.add_argument("--config", help="config file (see README: config reference)")
    g.add_argument("--app", help="app name; with --config, which app (default: all)")
    g.add_argument("--repo", help="Git URL: https://, ssh://, git://, file://")
    g.add_argument("--ref", default="main", help="branch, tag or commit (default: main)")
    g.add_argument("--path", default=".", help="directory inside the repo (default: .)")
    g.add_argument("--namespace", default="default", help="default namespace for objects")
    g.add_argument("--no-prune", action="store_true", help="never delete objects")
    g.add_argument(
        "--allow-insecure",
        action="store_true",
        help="allow http:// and git:// for --repo (unencrypted; refused by default); "
        "with --config, set allowInsecure on the app",
    )
    g.add_argument(
        "--verify-keys",
        metavar="DIR|FILE",
        help="refuse commits not signed by these keys: an armored OpenPGP key file, an "
        "ssh allowed_signers file, or a directory of *.asc and allowed_signers "
        "(overrides the config's verify)",
    )
    a = sp.add_argument_group("Git credentials")
    a.add_argument("--username", help="HTTPS user name")
    a.add_argument("--password-file", help="file holding an HTTPS password")
    a.add_argument("--token-file", help="file holding an HTTPS token")
    a.add_argument("--ssh-key", help="SSH private key file")
    a.add_argument("--known-hosts", help="known_hosts file for SSH host key checks")
    k = sp.add_argument_group("cluster")
    k.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, in-cluster)")
    k.add_argument("--context", help="kubeconfig context")
    k.add_argument("--state-namespace", help="where app state Secrets live")
    k.add_argument("--cache-dir", help="Git checkout cache (default: ~/.cache/gitsync/git)")
    sp.add_argument("--log-format", choices=["json", "console"], help="log format")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gitsync",
        description="GitOps reconciler: Git → Kubernetes, with rollback and drift attribution.",
    )
    p.add_argument("--version", action="version", version=f"gitsync {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("render", help="print the rendered manifests (YAML)")
    r.add_argument("--show-secrets", action="store_true", help="print Secret values instead of ***")
    _app_args(r)
    d = sub.add_parser("diff", help="show what a sync would change; exit 1 if anything")
    _app_args(d)
    s = sub.add_parser("sync", help="run the pipeline once")
    s.add_argument("--once", action="store_true", help="run once and exit (the only mode)")
    s.add_argument(
        "--force", action="store_true", help="apply the commit even if it is quarantined"
    )
    _app_args(s)
    st = sub.add_parser("status", help="show the app's recorded revision, health and drift")
    st.add_argument(
        "--watch", action="store_true", help="redraw every 2 s as things change (Ctrl-C quits)"
    )
    st.add_argument("--json", action="store_true", help="print what /api/apps serves, as JSON")
    _app_args(st)
    li = sub.add_parser(
        "lint", help="validate a local manifest directory offline; no cluster, no Git"
    )
    li.add_argument(
        "directory", help="directory of YAML/JSON manifests, a kustomization or a Helm chart"
    )
    li.add_argument("--repo-root", help="outermost directory paths may use (default: DIRECTORY)")
    li.add_argument("--namespace", default="default", help="default namespace for objects")
    li.add_argument("--strict", action="store_true", help="exit 1 on lint warnings too")
    li.add_argument(
        "--values",
        action="append",
        default=[],
        metavar="FILE",
        help="a Helm values file for a chart directory, relative to it (repeatable)",
    )
    _limit_args(li)
    li.add_argument("--log-format", choices=["json", "console"], help="log format")
    rn = sub.add_parser("run", help="run the controller: sync every app on its interval")
    rn.add_argument("--config", required=True, help="config file (see docs/deploy.md)")
    rn.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, in-cluster)")
    rn.add_argument("--context", help="kubeconfig context")
    rn.add_argument("--log-format", choices=["json", "console"], help="log format")
    return p


def _limit_args(li: argparse.ArgumentParser) -> None:
    lim = li.add_argument_group("limits (also read from --config; see apps[].allowedNamespaces)")
    lim.add_argument("--config", help="config file: check against an app's limits")
    lim.add_argument("--app", help="with --config, which app (default: the only one)")
    lim.add_argument(
        "--allowed-namespace",
        action="append",
        metavar="GLOB",
        help="a namespace (name or glob) objects may be in; repeat for more",
    )
    lim.add_argument(
        "--cluster-scoped", metavar="deny|KIND,...", help="cluster-scoped kinds allowed"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from gitsync import log

    log.configure(json=None if args.log_format is None else args.log_format == "json")
    from gitsync.errors import GitSyncError

    try:
        handler = {
            "render": _render,
            "diff": _diff,
            "sync": _sync,
            "status": _status,
            "run": _run,
            "lint": _lint,
        }[args.command]
        return handler(args)
    except GitSyncError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


# --- app and context resolution --------------------------------------------------------


def _apps(args: argparse.Namespace) -> tuple[list[Any], str, str]:
    from gitsync import config
    from gitsync.errors import ConfigError

    if args.config:
        cfg = config.load(args.config)
        apps = [a for a in cfg.apps if not args.app or a.name == args.app]
        if not apps:
            msg = f"{args.config}: no app named {args.app!r}"
            raise ConfigError(msg)
        if args.verify_keys:
            keys = config.VerifyConfig(keys=args.verify_keys)
            apps = [a.model_copy(update={"verify": keys}) for a in apps]
        return apps, cfg.state_namespace, cfg.cache_dir
    if not args.repo:
        msg = "give --config FILE or --repo URL (see gitsync COMMAND --help)"
        raise ConfigError(msg)
    raw = {
        "apps": [
            {
                "name": args.app or "default",
                "repo": args.repo,
                "ref": args.ref,
                "path": args.path,
                "namespace": args.namespace,
                "prune": not args.no_prune,
                "allowInsecure": args.allow_insecure,
                **({"verify": {"keys": args.verify_keys}} if args.verify_keys else {}),
            }
        ]
    }
    cfg = config.parse(raw, source="flags")
    return list(cfg.apps), cfg.state_namespace, ""


def _auth(args: argparse.Namespace) -> Any:
    from gitsync.source.git import GitAuth

    def read(path: str | None) -> str | None:
        return Path(path).read_text(encoding="utf-8").strip() if path else None

    password = read(args.password_file)
    token = read(args.token_file)
    if not any([args.username, password, token, args.ssh_key, args.known_hosts]):
        return None
    return GitAuth(
        username=args.username or "",
        password=password or "",
        token=token or "",
        ssh_key=Path(args.ssh_key) if args.ssh_key else None,
        known_hosts=Path(args.known_hosts) if args.known_hosts else None,
    )


def _context(args: argparse.Namespace, state_ns: str, cache: str) -> Any:
    from gitsync.engine.sync import Context
    from gitsync.kube import Kube

    cache_dir = Path(args.cache_dir or cache or Path.home() / ".cache" / "gitsync" / "git")
    if cache and not args.cache_dir and not _writable(Path(cache)):
        cache_dir = Path.home() / ".cache" / "gitsync" / "git"
    return Context(
        kube=Kube.connect(kubeconfig=args.kubeconfig, context=args.context),
        cache_dir=cache_dir,
        state_namespace=args.state_namespace or state_ns,
        auth=_auth(args),
    )


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return path.is_dir()


# --- commands --------------------------------------------------------------------------


def _render(args: argparse.Namespace) -> int:
    from gitsync.engine.plan import mask_secret
    from gitsync.engine.sync import prepare_render

    apps, state_ns, cache = _apps(args)
    ctx = _context(args, state_ns, cache)
    docs: list[dict[str, Any]] = []
    for app in apps:
        _rev, manifests = prepare_render(app, ctx)
        for w in manifests.warnings:
            print(f"# warning: {w}", file=sys.stderr)
        docs.extend(m.obj if args.show_secrets else mask_secret(m.obj) for m in manifests.manifests)
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)
    return EXIT_OK


def _fmt(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 160 else text[:157] + "..."


def _diff(args: argparse.Namespace) -> int:
    from gitsync.engine.plan import Action
    from gitsync.engine.sync import prepare

    apps, state_ns, cache = _apps(args)
    ctx = _context(args, state_ns, cache)
    differs = False
    marks = {Action.CREATE: "+", Action.UPDATE: "~", Action.PRUNE: "-"}
    for app in apps:
        prep = prepare(app, ctx)
        print(f"app {app.name} @ {prep.revision.sha[:12]} ({prep.revision.subject})")
        for change in prep.plan.changes:
            if change.action is Action.UNCHANGED:
                continue
            differs = True
            where = f"  ({change.source})" if change.source else ""
            print(f"{marks[change.action]} {change.action.value} {change.ref}{where}")
            if change.action is Action.UPDATE:
                for d in change.diff:
                    print(f"    {d.path}: {_fmt(d.live)} → {_fmt(d.desired)}")
                for conflict in change.conflicts:
                    print(f"    takes back from {conflict}")
        counts = prep.plan.counts()
        print(
            f"  {counts['create']} to create, {counts['update']} to update, "
            f"{counts['prune']} to prune, {counts['unchanged']} unchanged"
        )
    return EXIT_DIFF if differs else EXIT_OK


def _sync(args: argparse.Namespace) -> int:
    from gitsync.engine.sync import sync_app

    apps, state_ns, cache = _apps(args)
    ctx = _context(args, state_ns, cache)
    progress = _progress_bar() if sys.stdout.isatty() else None
    code = EXIT_OK
    for app in apps:
        result = sync_app(app, ctx, progress=progress, force=args.force)
        c = result.counts
        if result.result in ("failed", "rolled-back", "degraded", "timed-out"):
            code = max(code, _sync_exit_code(result))
            back = (
                f" (rolled back to {result.rolled_back_to[:12]})" if result.rolled_back_to else ""
            )
            print(f"{app.name}: sync failed{back}: {result.error}")
            continue
        if result.result == "quarantined":
            print(f"{app.name} @ {result.revision[:12]}: quarantined after a rollback; skipped")
            continue
        print(
            f"{app.name} @ {result.revision[:12]}: {result.result}: {c.get('create', 0)} created, "
            f"{c.get('update', 0)} updated, {c.get('unchanged', 0)} unchanged, "
            f"{c.get('pruned', 0)} pruned in {result.seconds:.2f}s"
        )
        if result.prune_guard:
            print(f"  prune skipped: {result.prune_guard}")
    return code


def _sync_exit_code(result: Any) -> int:
    """2 when the commit was refused before any write (fetch, render, dry-run), else 1."""
    return EXIT_ERROR if result.refused else EXIT_DIFF


def _progress_bar() -> Any:
    def show(done: int, total: int) -> None:
        if total < 20:
            return
        width = 30
        filled = width * done // max(total, 1)
        end = "\n" if done >= total else ""
        sys.stdout.write(
            f"\r  applying [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{end}"
        )
        sys.stdout.flush()

    return show


def _status(args: argparse.Namespace) -> int:
    from gitsync.drift.scan import scan
    from gitsync.engine import inventory
    from gitsync.runtime import overview

    apps, state_ns, cache = _apps(args)
    ctx = _context(args, state_ns, cache)
    commits = overview.CommitLookup(ctx.cache_dir)

    def collect() -> list[Any]:
        out = []
        for app in apps:
            st = inventory.read_state(ctx.kube, app=app.name, namespace=ctx.state_namespace)
            # Current drift from one LIST per managed kind (the controller reports it live).
            drift = scan(ctx.kube, app, state_namespace=ctx.state_namespace)
            out.append(overview.build(app, st, drift=drift, commits=commits.for_repo(app.repo)))
        return out

    if args.watch:
        return _watch(lambda: _status_text(collect(), as_json=args.json))
    print(_status_text(collect(), as_json=args.json), end="")
    return EXIT_OK


def _status_text(apps: list[Any], *, as_json: bool) -> str:
    from gitsync.runtime import ui

    if as_json:
        return json.dumps({"apps": [a.to_json() for a in apps]}, sort_keys=True, indent=1) + "\n"
    return ui.render_text(apps)


WATCH_INTERVAL = 2.0
_CLEAR = "\x1b[H\x1b[2J"


def _watch(frame: Any, *, interval: float = WATCH_INTERVAL) -> int:
    """Poll every ``interval`` s, redraw the whole screen when the text changes; Ctrl-C: 0."""
    import time
    from datetime import UTC, datetime

    from gitsync.errors import GitSyncError

    shown = None
    try:
        while True:
            try:
                text = frame()
            except GitSyncError as e:  # the API away for a moment: say so, keep polling
                text = f"error: {e}\n"
            if text != shown:
                now = datetime.now(UTC).strftime("%H:%M:%S UTC")
                head = f"gitsync status --watch · every {interval:g}s · at {now} · Ctrl-C quits"
                sys.stdout.write(f"{_CLEAR}{head}\n\n{text}")
                sys.stdout.flush()
                shown = text
            time.sleep(interval)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return EXIT_OK


def _lint(args: argparse.Namespace) -> int:
    """Render with the built-in kind table: the checks a sync would make before any call,
    the app's limits (namespaces, cluster-scoped kinds) included.

    Kinds the table does not know (custom resources of CRDs not in the set) are reported
    as unknown, as they would be by a cluster that lacks their CRD.
    """
    from gitsync.engine.limits import violations
    from gitsync.render.manifests import HelmSettings, StaticKinds, render

    directory = Path(args.directory).resolve()
    root = Path(args.repo_root).resolve() if args.repo_root else directory
    manifests = render(
        directory,
        repo_root=root,
        default_namespace=args.namespace,
        app_name="lint",
        kinds=StaticKinds(),
        helm=HelmSettings(values_files=tuple(args.values)) if args.values else None,
    )
    for warning in manifests.warnings:
        print(f"warning: {warning}")
    refused = violations(manifests, _lint_limits(args))
    for problem in refused:
        print(f"error: {problem}")
    print(f"{len(manifests) - len(refused)} object(s) OK, {len(manifests.warnings)} warning(s)")
    if refused:
        print(f"{len(refused)} object(s) outside the app's limits: a sync would refuse them")
        return EXIT_DIFF
    return EXIT_DIFF if args.strict and manifests.warnings else EXIT_OK


def _lint_limits(args: argparse.Namespace) -> Any:
    """The app's limits from --config, narrowed by the flags. The scope of each kind is
    known offline (built-in table, CRDs in the set), so lint checks what a sync would."""
    from gitsync import config
    from gitsync.engine.limits import Limits
    from gitsync.errors import ConfigError

    limits = Limits()
    if args.config:
        cfg = config.load(args.config)
        apps = [a for a in cfg.apps if not args.app or a.name == args.app]
        if len(apps) != 1:
            msg = f"{args.config}: name one app with --app (have {[a.name for a in cfg.apps]})"
            raise ConfigError(msg)
        limits = apps[0].limits
    if args.allowed_namespace:
        limits = replace(limits, namespaces=tuple(args.allowed_namespace))
    if args.cluster_scoped:
        kinds = args.cluster_scoped.strip()
        if kinds == "deny":
            limits = replace(limits, cluster_kinds="deny")
        else:
            listed = tuple(k.strip() for k in kinds.split(",") if k.strip())
            limits = replace(limits, cluster_kinds=listed)
    return limits


def _run(args: argparse.Namespace) -> int:
    from gitsync.runtime import controller

    return controller.main(
        config_path=args.config, kubeconfig=args.kubeconfig, context=args.context
    )


if __name__ == "__main__":
    raise SystemExit(main())
