"""``verify --tracker HOST:PORT --key K --devices N``: a fleet behind TVM's RPC tracker.

TVM's own tracker and two of TVM's own Python RPC servers (this host's CPU, key ``x86``) stand in for a
team's boards; verify must get two sessions from the tracker and pass on both.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("tvm")
pytest.importorskip("tornado", reason="TVM's tracker needs tornado (the rpc extra)")
pytest.importorskip("cloudpickle", reason="TVM's Python RPC server needs cloudpickle (the rpc extra)")

from bhvit_export.cli import cli  # noqa: E402


@pytest.fixture
def fleet():
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=9300, port_end=9400, silent=True)
    servers = []
    try:
        for _ in range(2):
            servers.append(
                rpc.Server(host="127.0.0.1", port=9500, port_end=9700, key="x86",
                           tracker_addr=("127.0.0.1", tracker.port), silent=True)
            )
        time.sleep(1.0)  # the servers register with the tracker
        yield f"127.0.0.1:{tracker.port}"
    finally:
        for s in servers:
            s.terminate()
        tracker.terminate()


def test_verify_fans_out_over_the_tracker(micro_bundle: Path, fleet: str) -> None:
    res = CliRunner().invoke(
        cli, ["verify", str(micro_bundle), "--tracker", fleet, "--key", "x86", "--devices", "2",
              "--runs", "1", "--warmup", "0", "--no-torch", "--json"],
    )
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["passed"] and len(report["devices"]) == 2
    assert all(d["passed"] and d["top1_agreement"] == 1.0 for d in report["devices"])
    assert {d["where"] for d in report["devices"]} == {f"tracker {fleet} key x86 #0", f"tracker {fleet} key x86 #1"}
    # TVM's Python server has no bhvit.cpu_features: said once, not pretended
    count = len(report["target"]["cpu_features"])
    assert [n for n in report["notes"] if "CPU features" in n] == [
        f"tracker {fleet} key x86 #{i} did not report its CPU features: the {count} the bundle needs were not checked"
        for i in range(2)
    ]


def test_tracker_without_key_is_bad_input(micro_bundle: Path) -> None:
    res = CliRunner().invoke(cli, ["verify", str(micro_bundle), "--tracker", "127.0.0.1:9", "--no-torch"])
    assert res.exit_code == 2 and "--key" in res.stderr
