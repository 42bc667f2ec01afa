#!/usr/bin/env bash
# make demo: a local control plane, a Git repo made from fixtures/repos/demo, and gitsync
# syncing it: first sync, a no-op resync, then v2 (one changed field, one removed file).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
GITSYNC=.venv/bin/gitsync
WORK=${GITSYNC_DEMO_DIR:-$HOME/.cache/gitsync/demo}
mkdir -p "$WORK"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)"
eval "$($PY -m gitsync.devcluster up --print-env)"
echo "KUBECONFIG=$KUBECONFIG"
kubectl="$($PY -m gitsync.devcluster kubectl-path)"

step "Building a Git repository from fixtures/repos/demo (one commit per version)"
rm -rf "$WORK/demo.git" "$WORK/git-cache"
url=$($PY -m tests.support.repos build --from fixtures/repos/demo --out "$WORK/demo.git" 2>"$WORK/shas")
cat "$WORK/shas"
v1=$(awk '$1=="v1"{print $2}' "$WORK/shas")
v2=$(awk '$1=="v2"{print $2}' "$WORK/shas")
v3=$(awk '$1=="v3"{print $2}' "$WORK/shas")
args=(--repo "$url" --path app --namespace demo --app demo --cache-dir "$WORK/git-cache" --log-format console)

step "gitsync diff (v1, nothing deployed yet)"
$GITSYNC diff "${args[@]}" --ref "$v1" || true

step "gitsync sync --once (v1)"
$GITSYNC sync --once "${args[@]}" --ref "$v1"
"$kubectl" get all,cm,secret,sa -n demo -l gitsync.io/app=demo

step "gitsync sync --once again: nothing to do, zero writes"
$GITSYNC sync --once "${args[@]}" --ref "$v1"

step "gitsync diff against v2 (a changed field and a removed file)"
$GITSYNC diff "${args[@]}" --ref "$v2" || true

step "gitsync sync --once (v2)"
$GITSYNC sync --once "${args[@]}" --ref "$v2"
$GITSYNC status "${args[@]}" --ref "$v2"

step "gitsync sync --once (v3: a release whose Pods crash-loop) -> automatic rollback to v2"
$GITSYNC sync --once "${args[@]}" --ref "$v3" || true
"$kubectl" get deploy web -n demo -o wide

step "v3 is quarantined: the next poll does not retry it"
$GITSYNC sync --once "${args[@]}" --ref "$v3" || true
$GITSYNC status "${args[@]}" --ref "$v3"

step "Manual changes: kubectl scale, kubectl set image, kubectl patch on a Secret"
"$kubectl" scale deploy/web -n demo --replicas=5
"$kubectl" set image deploy/web -n demo web=registry.invalid/web:hotfix
"$kubectl" patch secret/web-credentials -n demo -p '{"stringData":{"password":"changed-by-hand"}}'

step "gitsync status: each drifted field, Git value -> live value, who changed it and when"
$GITSYNC status "${args[@]}" --ref "$v2"

step "gitsync diff shows the same drift as what a sync would put back; sync repairs it"
$GITSYNC diff "${args[@]}" --ref "$v2" || true
$GITSYNC sync --once "${args[@]}" --ref "$v2"

step "The cluster keeps running. Try:"
echo "  export KUBECONFIG=$KUBECONFIG"
echo "  $kubectl get deploy -n demo"
echo "  .venv/bin/gitsync diff ${args[*]} --ref main"
echo "  .venv/bin/gitsync run --config <file>   # the controller: watches drift as it happens (docs/deploy.md)"
echo "  make demo-down     # stop it"
