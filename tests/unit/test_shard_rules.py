"""Sharding rules: the app-to-shard map, Lease names, the spread rule, the config key."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest

from gitsync.config import parse
from gitsync.errors import ConfigError
from gitsync.runtime.shards import (
    fair_share,
    lease_names,
    member_lease_name,
    shard_of,
    should_acquire,
    should_shed,
)

APP = {"name": "shop", "repo": "https://git.example.test/acme/deploy.git"}
NAMES = [f"app{i:02d}" for i in range(30)]


def test_shard_of_is_sha256_of_the_name_modulo_the_count() -> None:
    """Known values: the map is part of the on-cluster contract and must never drift."""
    assert [shard_of(n, 3) for n in ("web", "shop", "app00", "app01")] == [0, 1, 1, 2]
    assert shard_of("anything", 1) == 0


def test_shard_of_is_the_same_in_other_processes_whatever_the_hash_seed() -> None:
    """Two interpreters with different PYTHONHASHSEED agree with this one."""
    code = (
        "from gitsync.runtime.shards import shard_of;"
        f"print(','.join(str(shard_of(n, 7)) for n in {NAMES!r}))"
    )
    here = ",".join(str(shard_of(n, 7)) for n in NAMES)
    for seed in ("1", "4242"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert out == here


def test_thirty_apps_land_on_every_one_of_three_shards() -> None:
    """The hash spreads 30 names over all three shards, none with more than half."""
    counts = Counter(shard_of(n, 3) for n in NAMES)
    assert set(counts) == {0, 1, 2}
    assert max(counts.values()) <= 15


def test_one_shard_keeps_the_configured_lease_name() -> None:
    """shards: 1 is today's single Lease; more get -0 .. -N-1 suffixes."""
    assert lease_names("gitsync-leader", 1) == ("gitsync-leader",)
    assert lease_names("gitsync-leader", 3) == (
        "gitsync-leader-0",
        "gitsync-leader-1",
        "gitsync-leader-2",
    )


def test_member_lease_name_is_a_valid_object_name() -> None:
    """Upper case and underscores of a default identity become a DNS subdomain."""
    assert member_lease_name("gitsync-leader", "Pod-A_1f2e3d4c") == (
        "gitsync-leader-member-pod-a-1f2e3d4c"
    )
    assert len(member_lease_name("l", "x" * 400)) <= 253


@pytest.mark.parametrize(
    ("shards", "live", "share"), [(3, 1, 3), (3, 2, 2), (3, 3, 1), (4, 3, 2), (3, 5, 1)]
)
def test_fair_share_rounds_up(shards: int, live: int, share: int) -> None:
    """ceil(shards / live replicas): every shard fits within the shares."""
    assert fair_share(shards, live) == share


def test_a_replica_below_its_share_takes_a_free_shard() -> None:
    """Three live replicas, three shards: the one holding none takes one."""
    args = {"shards": 3, "live": 3, "free_for": 0.0, "lease_duration": 4.0, "settled": True}
    assert should_acquire(held=0, **args)
    assert not should_acquire(held=1, **args)


def test_a_replica_waits_to_see_the_others_before_taking_by_share() -> None:
    """Not yet a member for one leaseDuration: it takes nothing by the share rule."""
    assert not should_acquire(
        held=0, shards=3, live=1, free_for=0.0, lease_duration=4.0, settled=False
    )


def test_a_shard_free_for_two_lease_durations_is_taken_by_anyone() -> None:
    """Nobody below its share took it: a replica at its share takes it, no orphan."""
    args = {"held": 1, "shards": 3, "live": 3, "lease_duration": 4.0, "settled": True}
    assert not should_acquire(free_for=8.0, **args)
    assert should_acquire(free_for=8.1, **args)


def test_after_a_replica_dies_the_two_left_may_take_its_shard() -> None:
    """Two live replicas: share 2, so one holding one shard may take the orphan."""
    assert should_acquire(held=1, shards=3, live=2, free_for=0.0, lease_duration=4.0, settled=True)
    assert not should_acquire(
        held=2, shards=3, live=2, free_for=0.0, lease_duration=4.0, settled=True
    )


def test_one_shard_is_always_taken_when_free() -> None:
    """shards: 1 keeps the single-leader behaviour: any standby takes a free Lease."""
    assert should_acquire(held=0, shards=1, live=5, free_for=0.0, lease_duration=4, settled=False)


def test_shards_config_defaults_to_one_and_is_validated() -> None:
    """controller.shards: default 1; below 1, or with leader election off, is an error."""
    assert parse({"apps": [APP]}).controller.shards == 1
    assert parse({"apps": [APP], "controller": {"shards": 4}}).controller.shards == 4
    with pytest.raises(ConfigError, match=r"controller\.shards: Input should be greater"):
        parse({"apps": [APP], "controller": {"shards": 0}})
    with pytest.raises(ConfigError, match=r"controller\.shards: .* at most 50 characters"):
        parse(
            {
                "apps": [APP],
                "controller": {"shards": 2, "leaderElection": {"leaseName": "x" * 51}},
            }
        )
    with pytest.raises(ConfigError, match=r"controller\.shards: sharding needs leader election"):
        parse({"apps": [APP], "controller": {"shards": 2, "leaderElection": {"enabled": False}}})


def test_a_replica_above_its_share_hands_one_off_once_members_are_steady() -> None:
    """A third replica joined: the two holding three of six shards each shed one, but
    only after the member set has been steady for one leaseDuration."""
    args = {"shards": 6, "live": 3, "settled": True, "lease_duration": 4.0}
    assert should_shed(held=3, steady_for=4.0, **args)
    assert not should_shed(held=3, steady_for=3.9, **args)
    assert not should_shed(held=2, steady_for=60.0, **args)


def test_nothing_is_handed_off_at_the_share_or_with_one_shard() -> None:
    """Four shards over three replicas: holding two is the share; shards: 1 never sheds."""
    assert not should_shed(
        held=2, shards=4, live=3, settled=True, steady_for=60.0, lease_duration=4.0
    )
    assert not should_shed(
        held=1, shards=1, live=3, settled=True, steady_for=60.0, lease_duration=4.0
    )
