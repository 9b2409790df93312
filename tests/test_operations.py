"""The operation repository and engine, on both backends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sovra.config import Settings
from sovra.domain.errors import Conflict
from sovra.domain.operation import Operation, OperationState, StepState
from sovra.operations.context import StepContext
from sovra.operations.engine import PeriodicSchedule, Worker
from sovra.operations.errors import RetryableError, StepError
from sovra.operations.registry import Registry, Step
from sovra.store import operations as ops
from sovra.store import resources
from sovra.store.database import Database
from sovra.store.schema import operations as operations_table
from sovra.store.types import utcnow


def _target(db: Database, name: str = "t") -> str:
    with db.write() as conn:
        return resources.create(
            conn, kind="Project", name=name, project_id=None, labels={}, spec={}, state="ACTIVE"
        ).id


def _create(
    db: Database,
    verb: str = "noop",
    target: str | None = None,
    request_id: str | None = None,
    project: str | None = None,
    params: dict[str, Any] | None = None,
) -> tuple[Operation, bool]:
    with db.write() as conn:
        return ops.create(
            conn,
            verb=verb,
            principal="tester",
            project_id=project,
            target_id=target,
            target_kind="Project" if target else None,
            request_id=request_id,
            params=params,
        )


def _get(db: Database, operation_id: str) -> Operation:
    with db.read() as conn:
        return ops.get(conn, operation_id)


# -- the repository ----------------------------------------------------------------------------


def test_request_id_makes_creation_idempotent(db: Database) -> None:
    target = _target(db)
    first, created = _create(db, target=target, request_id="r-1", project=target)
    again, created_again = _create(db, target=target, request_id="r-1", project=target)
    assert created and not created_again and again.id == first.id
    with pytest.raises(Conflict, match="different request") as err:
        _create(db, verb="other", target=target, request_id="r-1", project=target)
    assert err.value.extensions["field"] == "request_id"
    # the same request id in another project is another request
    other = _target(db, "other")
    assert _create(db, request_id="r-1", project=other)[1]


def test_one_active_operation_per_target_and_the_409_names_it(db: Database) -> None:
    target = _target(db)
    first, _ = _create(db, target=target)
    with db.read() as conn:
        assert resources.get(conn, target).status.operation_id == first.id
    with pytest.raises(Conflict) as err:
        _create(db, verb="other", target=target)
    assert err.value.extensions["blocking_operation"] == first.id
    assert first.id in err.value.detail
    with db.write() as conn:
        ops.request_cancel(conn, first.id, None)
    second, created = _create(db, target=target)  # free again once the first ended
    assert created and second.id != first.id


def test_the_database_enforces_the_mutex_even_without_the_precheck(db: Database) -> None:
    target = _target(db)
    _create(db, target=target)
    now = utcnow()
    with pytest.raises(sa.exc.IntegrityError), db.write() as conn:
        conn.execute(
            sa.insert(operations_table).values(
                id="01a2061c-844d-7e94-a0d3-426b2cf400de",
                target_id=target,
                verb="x",
                state="RUNNING",
                progress=0,
                progress_message="",
                params={},
                principal="p",
                attempt=0,
                cancel_requested=False,
                not_before=now,
                created_at=now,
                updated_at=now,
                version=1,
            )
        )


def test_claim_leases_the_oldest_due_operation_once(db: Database) -> None:
    first, _ = _create(db)
    second, _ = _create(db)
    with db.write() as conn:
        a = ops.claim(conn, "w1", 30, ["noop"])
    with db.write() as conn:
        b = ops.claim(conn, "w2", 30, ["noop"])
    with db.write() as conn:
        none = ops.claim(conn, "w3", 30, ["noop"])
    assert a is not None and b is not None and none is None
    assert (a.id, a.lease_owner, a.state, a.attempt) == (first.id, "w1", OperationState.RUNNING, 1)
    assert b.id == second.id and b.lease_owner == "w2"


def test_expired_leases_are_reaped_and_the_old_worker_cannot_write(db: Database) -> None:
    op, _ = _create(db)
    with db.write() as conn:
        ops.claim(conn, "dead", 0.01, ["noop"])
        step = ops.start_step(conn, op.id, "dead", "noop")
    time.sleep(0.05)
    with db.write() as conn:
        assert ops.reap_expired(conn) == [op.id]
    reaped = _get(db, op.id)
    assert reaped.state == OperationState.PENDING and reaped.lease_owner is None
    assert reaped.steps[0].state == StepState.FAILED and reaped.steps[0].error is not None
    assert reaped.steps[0].error.code == "LEASE_EXPIRED" and "dead" in reaped.steps[0].error.message
    with db.write() as conn:
        assert ops.claim(conn, "alive", 30, ["noop"]) is not None
    with pytest.raises(ops.LeaseLost), db.write() as conn:
        ops.finish_step(conn, op.id, step, "dead", result={})
    with pytest.raises(ops.LeaseLost), db.write() as conn:
        ops.finish(conn, op.id, "dead", OperationState.SUCCEEDED)
    with db.write() as conn:
        assert ops.renew_lease(conn, [op.id], "dead", 30) == {}
        assert ops.renew_lease(conn, [op.id], "alive", 30) == {op.id: False}


def test_cancel_pending_is_immediate_and_running_is_a_request(db: Database) -> None:
    pending, _ = _create(db)
    with db.write() as conn:
        cancelled = ops.request_cancel(conn, pending.id, None)
    assert cancelled.state == OperationState.CANCELLED and cancelled.finished_at is not None
    with pytest.raises(Conflict, match="already ended"), db.write() as conn:
        ops.request_cancel(conn, pending.id, None)
    running, _ = _create(db)
    with db.write() as conn:
        ops.claim(conn, "w", 30, ["noop"])
        asked = ops.request_cancel(conn, running.id, None)
        assert ops.renew_lease(conn, [running.id], "w", 30) == {running.id: True}
    assert asked.state == OperationState.RUNNING and asked.cancel_requested


def test_listing_filters_and_pages_newest_first(db: Database) -> None:
    made = [_create(db, verb="noop" if i % 2 else "other")[0].id for i in range(7)]
    with db.read() as conn:
        page1 = ops.list_page(conn, project_ids=None, page_size=3, page_token=None)
        page2 = ops.list_page(conn, project_ids=None, page_size=3, page_token=page1.next_page_token)
        noops = ops.list_page(conn, project_ids=None, page_size=10, page_token=None, verb="noop")
    assert [o.id for o in page1.items + page2.items] == made[::-1][:6]
    assert [o.id for o in noops.items] == [m for i, m in enumerate(made) if i % 2][::-1]


# -- the engine --------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, lease_seconds=1.0, poll_seconds=0.02, default_step_deadline_seconds=5)


def _run_until_done(worker: Worker, db: Database, operation_id: str, timeout: float = 20) -> Operation:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.run_once()
        operation = _get(db, operation_id)
        if operation.done:
            return operation
        time.sleep(0.02)
    raise AssertionError(f"operation {operation_id} did not finish: {_get(db, operation_id)}")


def _registry(verb: str, *steps: Step) -> Registry:
    registry = Registry()
    registry.register(verb, steps)
    return registry


def test_steps_run_in_order_and_pass_results(db: Database, settings: Settings) -> None:
    seen: list[str] = []

    def first(ctx: StepContext) -> dict[str, int]:
        seen.append("first")
        return {"n": ctx.params["n"]}

    def second(ctx: StepContext) -> dict[str, int]:
        seen.append("second")
        return {"double": ctx.results["first"]["n"] * 2}

    worker = Worker(db, _registry("calc", Step("first", first), Step("second", second)), settings)
    op, _ = _create(db, verb="calc", params={"n": 21})
    done = _run_until_done(worker, db, op.id)
    assert seen == ["first", "second"]
    assert done.state == OperationState.SUCCEEDED and done.result == {"double": 42} and done.progress == 100
    assert [(s.name, s.state, s.worker) for s in done.steps] == [
        ("first", StepState.SUCCEEDED, worker.id),
        ("second", StepState.SUCCEEDED, worker.id),
    ]


def test_retryable_errors_back_off_then_succeed(db: Database, settings: Settings) -> None:
    calls: list[float] = []

    def flaky(ctx: StepContext) -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise RetryableError("HOST_BUSY", "host is busy")
        return "ok"

    worker = Worker(db, _registry("flaky", Step("flaky", flaky, retry_base_seconds=0.1)), settings)
    op, _ = _create(db, verb="flaky")
    done = _run_until_done(worker, db, op.id)
    assert done.state == OperationState.SUCCEEDED and done.result == "ok"
    assert [s.state for s in done.steps] == [StepState.FAILED, StepState.FAILED, StepState.SUCCEEDED]
    assert [s.attempt for s in done.steps] == [1, 2, 3]
    assert done.steps[0].error is not None and done.steps[0].error.code == "HOST_BUSY"
    # back-off: base 0.1 s then 0.2 s, each with at most 20 % jitter
    assert calls[1] - calls[0] >= 0.08 and calls[2] - calls[1] >= 0.16


def test_retry_budget_runs_out_with_the_last_error(db: Database, settings: Settings) -> None:
    def always(ctx: StepContext) -> None:
        raise RetryableError("HOST_DOWN", "host unreachable")

    worker = Worker(
        db, _registry("doomed", Step("s", always, max_attempts=2, retry_base_seconds=0.01)), settings
    )
    op, _ = _create(db, verb="doomed")
    done = _run_until_done(worker, db, op.id)
    assert done.state == OperationState.FAILED and done.error is not None
    assert (done.error.code, done.error.step) == ("HOST_DOWN", "s")
    assert len(done.steps) == 2


def test_permanent_and_unexpected_errors_fail_at_once(db: Database, settings: Settings) -> None:
    def permanent(ctx: StepContext) -> None:
        raise StepError("BAD_IMAGE", "image is corrupt", offset=12)

    def crash(ctx: StepContext) -> None:
        raise ZeroDivisionError("boom")

    registry = _registry("permanent", Step("p", permanent))
    registry.register("crash", [Step("c", crash)])
    worker = Worker(db, registry, settings)
    for verb, code in (("permanent", "BAD_IMAGE"), ("crash", "INTERNAL")):
        op, _ = _create(db, verb=verb)
        done = _run_until_done(worker, db, op.id)
        assert done.state == OperationState.FAILED and done.error is not None and done.error.code == code
        assert len(done.steps) == 1
    assert done.error is not None and "ZeroDivisionError" in done.error.message


def test_a_step_past_its_deadline_fails_and_stops(db: Database, settings: Settings) -> None:
    stopped = threading.Event()

    def slow(ctx: StepContext) -> None:
        try:
            ctx.sleep(30)
        finally:
            stopped.set()

    worker = Worker(db, _registry("slow", Step("slow", slow, deadline_seconds=0.3, max_attempts=1)), settings)
    op, _ = _create(db, verb="slow")
    started = time.monotonic()
    done = _run_until_done(worker, db, op.id)
    assert done.state == OperationState.FAILED and done.error is not None
    assert done.error.code == "DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 10
    assert stopped.wait(2), "the abandoned step did not stop at its next check()"


def test_cancel_stops_a_running_step_at_its_safe_point(db: Database, settings: Settings) -> None:
    started = threading.Event()
    after: list[str] = []

    def long(ctx: StepContext) -> None:
        started.set()
        ctx.sleep(30)

    def never(ctx: StepContext) -> None:
        after.append("ran")

    worker = Worker(db, _registry("long", Step("long", long), Step("after", never)), settings)
    op, _ = _create(db, verb="long")
    runner = threading.Thread(target=worker.run)
    runner.start()
    try:
        assert started.wait(10)
        with db.write() as conn:
            ops.request_cancel(conn, op.id, None)
        deadline = time.monotonic() + 10
        while not _get(db, op.id).done and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop.set()
        runner.join(10)
    done = _get(db, op.id)
    assert done.state == OperationState.CANCELLED and after == []
    assert done.error is not None and done.error.code == "CANCELLED"


def test_a_resumed_operation_skips_steps_already_done(db: Database, settings: Settings) -> None:
    counts = {"a": 0, "b": 0}

    def step(name: str) -> Callable[[StepContext], None]:
        def run(ctx: StepContext) -> None:
            counts[name] += 1

        return run

    registry = _registry("two", Step("a", step("a")), Step("b", step("b")))
    op, _ = _create(db, verb="two")
    # a first worker finishes step a, then vanishes
    with db.write() as conn:
        ops.claim(conn, "vanished", 0.01, ["two"])
        step_id = ops.start_step(conn, op.id, "vanished", "a")
        ops.finish_step(conn, op.id, step_id, "vanished", result=None)
    time.sleep(0.05)
    worker = Worker(db, registry, settings)
    worker._maybe_reap()
    done = _run_until_done(worker, db, op.id)
    assert done.state == OperationState.SUCCEEDED
    assert counts == {"a": 0, "b": 1}
    assert [(s.name, s.worker) for s in done.steps] == [("a", "vanished"), ("b", worker.id)]


def test_workers_leave_verbs_they_cannot_handle_for_others(db: Database, settings: Settings) -> None:
    op, _ = _create(db, verb="plugin.only")
    assert Worker(db, Registry(), settings).run_once() is False
    assert _get(db, op.id).state == OperationState.PENDING
    registry = _registry("plugin.only", Step("s", lambda ctx: "handled"))
    assert _run_until_done(Worker(db, registry, settings), db, op.id).result == "handled"


def test_a_step_whose_workers_keep_dying_runs_out_of_attempts(db: Database, settings: Settings) -> None:
    ran: list[int] = []
    registry = _registry("fragile", Step("s", lambda ctx: ran.append(1), max_attempts=2))
    op, _ = _create(db, verb="fragile")
    for attempt in range(2):  # two workers claim it and vanish inside the step
        with db.write() as conn:
            ops.claim(conn, f"doomed{attempt}", 0.01, ["fragile"])
            ops.start_step(conn, op.id, f"doomed{attempt}", "s")
        time.sleep(0.05)
        with db.write() as conn:
            assert ops.reap_expired(conn) == [op.id]
    done = _run_until_done(Worker(db, registry, settings), db, op.id)
    assert done.state == OperationState.FAILED and done.error is not None
    assert (done.error.code, done.error.step) == ("RETRIES_EXHAUSTED", "s")
    assert ran == []


def test_target_status_is_released_when_the_operation_ends(db: Database, settings: Settings) -> None:
    target = _target(db)
    op, _ = _create(db, target=target)
    from sovra.operations.registry import default_registry

    _run_until_done(Worker(db, default_registry(), settings), db, op.id)
    with db.read() as conn:
        assert resources.get(conn, target).status.operation_id is None


def test_rescheduled_operations_wait_for_not_before(db: Database) -> None:
    op, _ = _create(db)
    with db.write() as conn:
        ops.claim(conn, "w", 30, ["noop"])
        ops.reschedule(conn, op.id, "w", utcnow() + timedelta(seconds=60))
    with db.write() as conn:
        assert ops.claim(conn, "w2", 30, ["noop"]) is None
    assert _get(db, op.id).state == OperationState.PENDING


def test_periodic_tasks_run_when_due(db: Database, settings: Settings) -> None:
    runs: list[float] = []
    registry = Registry()
    registry.add_periodic("tick", 0.05, lambda database, config: runs.append(time.monotonic()))
    registry.add_periodic(
        "broken", 0.05, lambda database, config: 1 / 0
    )  # a failing task is logged, not fatal
    worker = Worker(db, registry, settings)
    worker._run_due_periodic()
    assert runs == []  # not at start-up: one interval later
    time.sleep(0.06)
    worker._run_due_periodic()
    worker._run_due_periodic()  # not due again yet
    assert len(runs) == 1


def test_worker_threads_of_a_process_share_one_periodic_schedule(db: Database, settings: Settings) -> None:
    """With ``--concurrency N`` a periodic task runs once per interval, not once per thread."""
    runs: list[str] = []
    registry = Registry()
    registry.add_periodic("tick", 0.05, lambda database, config: runs.append("tick"))
    schedule = PeriodicSchedule()
    workers = [Worker(db, registry, settings, schedule=schedule) for _ in range(3)]
    for worker in workers:
        worker._run_due_periodic()
    time.sleep(0.06)
    for worker in workers:
        worker._run_due_periodic()
    assert runs == ["tick"]
