"""Which copy the informer-fed gate believes: the apply response or the cache's (pure)."""

import pytest

from gitsync.health.cached import covers, fresher
from gitsync.model import APP_LABEL


def _obj(generation, rv, labels=None):
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "ns",
            "generation": generation,
            "resourceVersion": rv,
            "labels": labels or {},
        },
    }


APPLIED = _obj(3, "500")


@pytest.mark.parametrize(
    ("candidate", "caught_up", "taken"),
    [
        (_obj(2, "600"), True, False),  # lower generation: stale, whatever the order
        (_obj(4, "400"), False, True),  # higher generation: newer, whatever the order
        (_obj(3, "500"), True, False),  # the same version: nothing new
        (_obj(3, "600"), True, True),  # delivered after the applied version
        (_obj(3, "450"), False, False),  # the cache is behind the apply (a label change)
        (_obj(3, "600"), False, True),  # a relist skipped the applied version
        (_obj(3, "opaque"), False, False),  # no order known: wait for the applied version
    ],
    ids=["older-gen", "newer-gen", "same", "after", "behind", "relisted", "opaque"],
)
def test_a_cached_copy_replaces_the_applied_one_only_if_not_older(candidate, caught_up, taken):
    """Generation first; at equal generations, delivery order, then etcd revision order."""
    assert fresher(candidate, APPLIED, caught_up=caught_up) is taken


def test_objects_without_the_app_label_are_not_covered_by_the_informers():
    """The managed informers select on the app label: an unlabelled object needs watches."""
    assert covers([_obj(1, "1", {APP_LABEL: "a"})])
    assert not covers([_obj(1, "1", {APP_LABEL: "a"}), _obj(1, "1")])
