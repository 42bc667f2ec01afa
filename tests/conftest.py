"""Shared pytest set-up: fixtures live in tests/support and are loaded as plugins."""

pytest_plugins = [
    "tests.support.cluster_fixtures",
    "tests.support.git_fixtures",
    "tests.support.controller_process",
    "tests.support.app_fixtures",
    "tests.support.signing",
]
