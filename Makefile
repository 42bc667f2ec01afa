# gitsync: `make test` and `make demo` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: all deps venv testcluster helm test lint unit integration e2e realnode-deps image demo demo-down bench bench-peers clean

all: test

deps:
	@hack/install-deps.sh

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: deps $(BIN)/.installed

# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and kwok from
# the Go module proxy once (about 5 min cold on 2 cores), then reuses the cache in seconds.
# Its bin dir goes on PATH so tests and `kubectl kustomize` use the kubectl built there.
testcluster: deps helm
	@hack/build-testcluster.sh >/dev/null
# Helm (pinned, built the same way) renders charts; its bin dir goes on PATH too.
helm: deps
	@hack/build-helm.sh >/dev/null
TESTCLUSTER_PATH = $$(hack/build-testcluster.sh):$$(hack/build-helm.sh):$$PATH

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: venv testcluster lint
	PATH="$(TESTCLUSTER_PATH)" $(BIN)/pytest

unit: venv helm
	$(BIN)/pytest -m "not cluster" tests/unit

# The real node (kubelet + containerd + runc + CNI) and gitsync's image built from the
# Dockerfile with buildah: apt packages, the kubelet (about 3 min cold), then tests/e2e.
# Needs root. $GITSYNC_REQUIRE_REALNODE turns "cannot start a real node here" from a skip
# into a failure, so this target never passes by skipping.
realnode-deps: deps
	@hack/install-deps.sh realnode image
	@hack/build-testcluster.sh kubelet >/dev/null

E2E_IMAGE ?= $(HOME)/.cache/gitsync/image/gitsync-dev.tar
image: realnode-deps
	hack/build-image.sh $(E2E_IMAGE) localhost/gitsync:dev

e2e: venv testcluster realnode-deps lint image
	GITSYNC_REQUIRE_REALNODE=1 GITSYNC_E2E_IMAGE=$(E2E_IMAGE) \
	  PATH="$$(hack/build-testcluster.sh kubelet):$$(hack/build-helm.sh):$$PATH" $(BIN)/pytest -rA tests/e2e

demo: venv testcluster
	@PATH="$(TESTCLUSTER_PATH)" hack/demo.sh

demo-down: venv
	$(BIN)/python -m gitsync.devcluster down

# bench_peers also builds kapply and the Flux harness (hack/build-peers.sh, cached like the cluster).
# bench_scale (100 apps x 100 objects, 1 app x 10,000) exits 1 if scenario A's peak RSS is 300 MiB or more.
bench: venv testcluster
	@hack/build-peers.sh >/dev/null
	PATH="$(TESTCLUSTER_PATH)" $(BIN)/python -m tests.bench.bench_sync
	PATH="$(TESTCLUSTER_PATH)" $(BIN)/python -m tests.bench.bench_drift
	PATH="$(TESTCLUSTER_PATH)" $(BIN)/python -m tests.bench.bench_state
	PATH="$(TESTCLUSTER_PATH)" $(BIN)/python -m tests.bench.bench_peers
	PATH="$(TESTCLUSTER_PATH)" $(BIN)/python -m tests.bench.bench_scale

# The peers at 1,000 and 10,000 objects in one run: about an hour on 2 cores (Flux alone ~30 min).
bench-peers: venv testcluster
	@hack/build-peers.sh >/dev/null
	PATH="$(TESTCLUSTER_PATH)" $(BIN)/python -m tests.bench.bench_peers --objects 1000 10000

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
