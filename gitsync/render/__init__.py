"""Render: read YAML, Kustomize and Helm into manifests."""
