"""bench_peers' bookkeeping: a step that runs out of time stays in the table, and Pods fit."""

import sys

from tests.bench import bench_peers, bench_sync
from tests.bench.bench_peers import Row, Step


def test_run_child_kills_a_process_past_its_limit():
    """A child still running at the limit is killed and reported as timed out, not raised."""
    child = bench_peers.run_child([sys.executable, "-c", "import time; time.sleep(60)"], limit=0.2)
    assert child.outcome == "timed out"
    assert child.killed


def test_run_child_reports_a_failure_without_ending_the_bench():
    """A non-zero exit is an outcome with its output kept, so the run goes on."""
    code = "import sys; print('partial'); sys.exit(3)"
    child = bench_peers.run_child([sys.executable, "-c", code])
    assert (child.outcome, child.code) == ("failed", 3)
    assert "partial" in child.tail()


def test_a_timed_out_step_is_printed_in_the_table():
    """The table keeps a tool whose step timed out and says so in its cell."""
    ok = Step(seconds=10.0, rss_mib=50.0)
    late = Step(seconds=1800.0, rss_mib=60.0, outcome="timed out", detail="wait: timeout")
    rows = [
        Row(tool="gitsync", first=ok, noop=ok, change=ok),
        Row(tool="flux", first=late, noop=ok, change=ok),
    ]
    text = bench_peers.table(10010, rows, None, [])
    flux_line = next(line for line in text.splitlines() if line.startswith("| Flux"))
    assert "**timed out** after 1800 s (>180.0x)" in flux_line
    assert "- flux first: wait: timeout" in text


def test_nodes_have_room_for_every_pod_of_a_full_run():
    """All four tools at 1,000 and 10,000 objects fit on the KWOK nodes at once."""
    pods = (bench_peers.deployments(1000) + bench_peers.deployments(10000)) * 4
    assert pods == 4400
    nodes, per_node = bench_sync.node_sizing(pods)
    assert nodes * per_node >= pods
