"""Real ``sovra worker`` processes, on both backends: one is SIGKILLed in the middle of a step and
another finishes the operation with the step's side effect done exactly once; a worker serves its
own Prometheus metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from sovra.domain.operation import Operation, OperationState, StepState
from sovra.store import operations as ops
from sovra.store.database import Database
from tests.support.live_server import free_port
from tests.support.ops_plugin import LEDGER_VERB

REPO = Path(__file__).resolve().parents[1]
SOVRA = Path(sys.executable).with_name("sovra")


def _worker_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SOVRA_DATABASE_URL": database_url,
        "SOVRA_DATA_DIR": str(tmp_path / "data"),
        "SOVRA_PLUGINS": json.dumps(["tests.support.ops_plugin"]),
        "SOVRA_LEASE_SECONDS": "2",
        "SOVRA_POLL_SECONDS": "0.1",
        "PYTHONPATH": str(REPO),
    }


@pytest.fixture
def workers(database_url: str, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    env = _worker_env(database_url, tmp_path)
    with ExitStack() as stack:
        procs = [
            subprocess.Popen(
                [str(SOVRA), "worker"],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stack.enter_context(open(tmp_path / f"worker{i}.log", "wb")),
            )
            for i in range(2)
        ]
        stack.callback(_stop, procs)
        yield procs


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _get(db: Database, operation_id: str) -> Operation:
    with db.read() as conn:
        return ops.get(conn, operation_id)


def test_sigkill_mid_step_another_worker_finishes_effect_once(
    db: Database, workers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    with db.write() as conn:
        operation, _ = ops.create(
            conn,
            verb=LEDGER_VERB,
            principal="test",
            project_id=None,
            params={"ledger": str(ledger), "hold_seconds": 3},
        )
    # the first worker to claim it writes its ledger entry and holds inside the step
    _wait_for(lambda: ledger.exists() and ledger.read_text(), 30, "the side effect")
    claimed = _get(db, operation.id)
    assert claimed.state == OperationState.RUNNING and claimed.lease_owner
    victim_pid = int(claimed.lease_owner.split(":")[1])
    victim = next(p for p in workers if p.pid == victim_pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)

    done = _wait_for(lambda: (o := _get(db, operation.id)).done and o, 60, "the operation to finish")
    survivor = next(p for p in workers if p.pid != victim_pid)
    assert survivor.poll() is None

    assert done.state == OperationState.SUCCEEDED, done.error
    finisher = done.result["finished_by"]
    assert int(finisher.split(":")[1]) == survivor.pid
    # exactly one side effect, made by the killed worker; the survivor's re-run found it
    lines = ledger.read_text().splitlines()
    assert len(lines) == 1 and lines[0].split()[1] == claimed.lease_owner
    # the audit trail shows both attempts: the lost lease, then the survivor's success
    trail = [(s.name, s.state, s.worker) for s in done.steps]
    assert trail == [
        ("effect", StepState.FAILED, claimed.lease_owner),
        ("effect", StepState.SUCCEEDED, finisher),
    ]
    assert done.steps[0].error is not None and done.steps[0].error.code == "LEASE_EXPIRED"
    assert done.attempt == 2


def test_a_worker_serves_its_metrics(database_url: str, db: Database, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [str(SOVRA), "worker", "--metrics-port", str(port)],
        cwd=REPO,
        env=_worker_env(database_url, tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with db.write() as conn:
            operation, _ = ops.create(conn, verb="noop", principal="test", project_id=None)
        _wait_for(lambda: _get(db, operation.id).done, 30, "the noop operation")

        def scrape() -> str:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                return ""

        text = _wait_for(scrape, 15, "the metrics endpoint")
        assert 'sovra_operations_finished_total{state="SUCCEEDED",verb="noop"} 1.0' in text
        assert 'sovra_operation_step_duration_seconds_count{step="noop",verb="noop"} 1.0' in text
    finally:
        _stop([proc])
