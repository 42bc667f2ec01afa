# gitsync controller image.  Build: docker build -t gitsync:0.1.0 .
# Without a registry (the tests): hack/build-image.sh builds this file with buildah on base
# images assembled from Debian packages, passed in as the two build arguments below.
# Runs as `gitsync run --config /etc/gitsync/config.yaml` (see config/deployment.yaml),
# as a non-root user, on a read-only root filesystem: everything it writes goes to
# /var/cache/gitsync (Git cache) and /tmp (HOME, credential files), both emptyDirs.

# One Go toolchain builds both tools (Helm v3.22 needs Go 1.26; kustomize builds with it).
ARG GO_IMAGE=golang:1.26
ARG PYTHON_IMAGE=python:3.11-slim

# --- kustomize, pinned, built from source (the Go module proxy is the only source) ------
FROM ${GO_IMAGE} AS kustomize
ARG KUSTOMIZE_VERSION=v5.7.1
RUN CGO_ENABLED=0 GOBIN=/out GOFLAGS=-trimpath \
    go install -ldflags "-s -w -X sigs.k8s.io/kustomize/api/provenance.version=${KUSTOMIZE_VERSION}" \
        sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION} \
 && /out/kustomize version

# --- helm, pinned, built from source (Helm v3.22 needs Go 1.26): renders charts --------
FROM ${GO_IMAGE} AS helm
ARG HELM_VERSION=v3.22.0
RUN CGO_ENABLED=0 GOBIN=/out GOFLAGS=-trimpath \
    go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
        helm.sh/helm/v3/cmd/helm@${HELM_VERSION} \
 && /out/helm version --short

# --- the package, in a venv that is copied whole into the final image -------------------
# The same steps as tests/integration/test_package.py runs on every test run.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# README.md* : the build must not depend on the README being present.
COPY pyproject.toml README.md* ./
COPY gitsync ./gitsync
RUN python -m venv /opt/gitsync \
 && /opt/gitsync/bin/pip install --upgrade pip \
 && /opt/gitsync/bin/pip install . \
 && /opt/gitsync/bin/gitsync --version

# --- runtime --------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends git openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 gitsync \
 && useradd --system --uid 10001 --gid gitsync --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin gitsync \
 && install -d -o gitsync -g gitsync -m 0750 /var/cache/gitsync
COPY --from=kustomize /out/kustomize /usr/local/bin/kustomize
COPY --from=helm /out/helm /usr/local/bin/helm
COPY --from=build /opt/gitsync /opt/gitsync
ENV PATH=/opt/gitsync/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
VOLUME ["/var/cache/gitsync", "/tmp"]
# gitsync is PID 1: it installs its own SIGTERM handler (finish the stage, release the
# Lease, exit 0), and waits for every git it starts.
ENTRYPOINT ["gitsync", "run"]
