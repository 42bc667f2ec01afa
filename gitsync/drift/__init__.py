"""Drift: compare live objects with Git, attribute, report and heal."""
