"""gitsync: a GitOps reconciler that rolls bad commits back and says who drifted what."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gitsync")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]
