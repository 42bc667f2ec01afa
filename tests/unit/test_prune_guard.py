"""The prune guards that stop a broken render from deleting the app."""

from gitsync.engine.prune import guard_reason


def test_empty_render_prunes_nothing_unless_allowed():
    """An empty desired set never prunes by default."""
    kw = {"inventory": 5, "candidates": 5, "allow_mass": True}
    assert "empty" in guard_reason(desired=0, allow_empty=False, **kw)
    assert guard_reason(desired=0, allow_empty=True, **kw) == ""


def test_mass_delete_guard():
    """Deleting more than half the inventory needs an opt-in; half or less does not."""
    assert "more than half" in guard_reason(
        desired=1, inventory=4, candidates=3, allow_empty=False, allow_mass=False
    )
    assert (
        guard_reason(desired=2, inventory=4, candidates=2, allow_empty=False, allow_mass=False)
        == ""
    )
    assert (
        guard_reason(desired=1, inventory=4, candidates=3, allow_empty=False, allow_mass=True) == ""
    )


def test_nothing_to_prune_is_never_guarded():
    """No candidates, no guard."""
    assert (
        guard_reason(desired=0, inventory=0, candidates=0, allow_empty=False, allow_mass=False)
        == ""
    )
