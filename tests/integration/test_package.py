"""The Dockerfile's build steps, run here: no container engine, same pip and Python steps."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gitsync import __version__

ROOT = Path(__file__).resolve().parents[2]


def test_package_installs_into_a_fresh_venv_like_the_image(tmp_path: Path) -> None:
    """Copy what .dockerignore lets in, `python -m venv`, `pip install .`, `gitsync --version`."""
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the image runs Python 3.11")
    context = tmp_path / "context"
    context.mkdir()
    shutil.copy(ROOT / "pyproject.toml", context)
    if (ROOT / "README.md").exists():
        shutil.copy(ROOT / "README.md", context)
    shutil.copytree(
        ROOT / "gitsync", context / "gitsync", ignore=shutil.ignore_patterns("__pycache__")
    )
    venv = tmp_path / "opt-gitsync"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "."],
        cwd=context,
        check=True,
        timeout=600,
    )
    version = subprocess.run(
        [str(venv / "bin" / "gitsync"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert version.stdout.strip() == f"gitsync {__version__}"
    usage = subprocess.run(
        [str(venv / "bin" / "gitsync"), "run", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert "--config" in usage.stdout


def test_dockerfile_pins_kustomize_and_runs_as_non_root() -> None:
    """The image facts the deployment relies on are in the Dockerfile; its bases are build
    arguments that default to the public images (the tests pass locally built ones)."""
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG GO_IMAGE=golang:1.26" in text
    assert "FROM ${GO_IMAGE} AS kustomize" in text
    assert "ARG KUSTOMIZE_VERSION=v5." in text
    assert "sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION}" in text
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert "FROM ${PYTHON_IMAGE}" in text
    assert "git openssh-client" in text
    assert "USER 10001:10001" in text
    assert 'ENTRYPOINT ["gitsync", "run"]' in text
    assert "pip install ." in text


def test_dockerfile_pins_helm() -> None:
    """The image has the pinned helm that renders charts, on PATH."""
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG HELM_VERSION=v3.22.0" in text
    assert "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" in text
    assert "COPY --from=helm /out/helm /usr/local/bin/helm" in text
