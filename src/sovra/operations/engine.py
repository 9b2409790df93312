"""The worker: claims operations, runs their steps, and keeps its leases alive.

Guarantees:

* A claimed operation is leased; a heartbeat thread renews the lease. If the worker dies, the lease
  expires and any worker's reaper hands the operation back to the queue.
* Steps already recorded as succeeded are skipped on resume; the unfinished step runs again, so
  steps are written to be idempotent (keyed by the target resource's id).
* Every step has a deadline. A step that overruns is failed (and retried if its budget allows);
  the abandoned thread sees ``check()`` raise and stops at its next safe point.
* Retryable errors back off exponentially with jitter; cancellation is honoured between steps and
  at every ``check()``.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Connection

from sovra import metrics
from sovra.config import Settings
from sovra.domain.operation import ErrorInfo, Operation, OperationState
from sovra.operations.context import StepContext
from sovra.operations.errors import Cancelled, DeadlineExceeded, StepError
from sovra.operations.registry import Registry, Step
from sovra.store import audit
from sovra.store import operations as operation_store
from sovra.store.database import Database
from sovra.store.operations import LeaseLost
from sovra.store.types import utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepOutcome:
    """What became of one step attempt."""

    result: Any = None
    error: ErrorInfo | None = None
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.cancelled


def _error_from(exc: BaseException, step: str) -> ErrorInfo:
    if isinstance(exc, StepError):
        return ErrorInfo(
            code=exc.code, message=exc.message, step=step, retryable=exc.retryable, details=exc.details
        )
    if isinstance(exc, DeadlineExceeded):
        return ErrorInfo(
            code="DEADLINE_EXCEEDED", message=f"step {step} ran past its deadline", step=step, retryable=True
        )
    return ErrorInfo(code="INTERNAL", message=f"{type(exc).__name__}: {exc}", step=step)


def backoff_seconds(step: Step, failures: int) -> float:
    """Exponential back-off with ±20 % jitter so retries of many operations do not align."""
    delay: float = min(step.retry_max_seconds, step.retry_base_seconds * 2 ** max(0, failures - 1))
    return delay * random.uniform(0.8, 1.2)


class PeriodicSchedule:
    """When each periodic task last ran, shared by the worker threads of one process: a task is run
    by whichever thread finds it due first, once per interval per process, not once per thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def claim(self, name: str, interval_seconds: float, now: float) -> bool:
        """True (and the task counts as run now) when ``name`` is due; the first run of a task is
        one interval after start-up, so that starting workers is cheap."""
        with self._lock:
            last = self._last.setdefault(name, now)
            if now - last < interval_seconds:
                return False
            self._last[name] = now
            return True


class Worker:
    """One worker identity; ``run`` loops until ``stop`` is set."""

    def __init__(
        self,
        db: Database,
        registry: Registry,
        settings: Settings,
        name: str | None = None,
        schedule: PeriodicSchedule | None = None,
    ) -> None:
        self.db = db
        self.registry = registry
        self.settings = settings
        self.id = name or f"{socket.gethostname()}:{os.getpid()}:{random.randrange(16**6):06x}"
        self.stop = threading.Event()
        self._held: dict[str, StepContext] = {}
        self._held_lock = threading.Lock()
        self._last_reap = 0.0
        self._schedule = schedule or PeriodicSchedule()

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        heartbeat = threading.Thread(target=self._heartbeat_loop, name=f"heartbeat-{self.id}", daemon=True)
        heartbeat.start()
        log.info("worker %s started", self.id)
        while not self.stop.is_set():
            try:
                self._maybe_reap()
                self._run_due_periodic()
                if not self.run_once():
                    self.stop.wait(self.settings.poll_seconds * random.uniform(0.5, 1.5))
            except Exception:  # a database hiccup must not kill the worker
                log.exception("worker %s: loop error; continuing", self.id)
                self.stop.wait(1.0)
        log.info("worker %s stopped", self.id)

    def run_once(self) -> bool:
        """Claim and execute one operation; False when there was nothing to do."""
        with self.db.write() as conn:
            operation = operation_store.claim(conn, self.id, self.settings.lease_seconds, self.registry.verbs)
        if operation is None:
            return False
        self.execute(operation)
        return True

    def _maybe_reap(self) -> None:
        now = time.monotonic()
        if now - self._last_reap < self.settings.lease_seconds / 2:
            return
        self._last_reap = now
        with self.db.write() as conn:
            reaped = operation_store.reap_expired(conn)
        for operation_id in reaped:
            log.warning("reaped operation %s: its worker's lease expired", operation_id)

    def _run_due_periodic(self) -> None:
        now = time.monotonic()
        for task in self.registry.periodic:
            if not self._schedule.claim(task.name, task.interval_seconds, now):
                continue
            try:
                task.run(self.db, self.settings)
            except Exception:
                log.exception(
                    "periodic task %s failed; it runs again in %.0fs", task.name, task.interval_seconds
                )

    def _heartbeat_loop(self) -> None:
        interval = self.settings.lease_seconds / 3
        while not self.stop.wait(interval):
            with self._held_lock:
                held = dict(self._held)
            if not held:
                continue
            try:
                with self.db.write() as conn:
                    alive = operation_store.renew_lease(
                        conn, list(held), self.id, self.settings.lease_seconds
                    )
            except Exception:
                log.exception("worker %s: heartbeat failed", self.id)
                continue
            for operation_id, ctx in held.items():
                if operation_id not in alive:
                    ctx.lease_lost.set()
                elif alive[operation_id]:
                    ctx.cancelled.set()

    # -- one operation --------------------------------------------------------------------------

    def execute(self, operation: Operation) -> None:
        handler = self.registry.get(operation.verb)
        ctx = StepContext(
            operation=operation,
            db=self.db,
            settings=self.settings,
            worker_id=self.id,
            step="",
            deadline=0.0,
            results={},
        )
        if operation.cancel_requested:
            ctx.cancelled.set()
        with self._held_lock:
            self._held[operation.id] = ctx
        try:
            self._run_steps(operation, handler.steps, ctx)
        except LeaseLost:
            log.warning("worker %s lost the lease on %s; another worker owns it now", self.id, operation.id)
        finally:
            with self._held_lock:
                self._held.pop(operation.id, None)

    def _run_steps(self, operation: Operation, steps: tuple[Step, ...], ctx: StepContext) -> None:
        if operation.attempt > 1:  # a first attempt has no step records yet
            with self.db.read() as conn:
                ctx.results = operation_store.succeeded_steps(conn, operation.id)
        for index, step in enumerate(steps):
            if step.name in ctx.results:
                continue
            if ctx.cancelled.is_set():
                self._finish(
                    operation,
                    OperationState.CANCELLED,
                    error=ErrorInfo(
                        code="CANCELLED", message=f"cancelled before step {step.name}", step=step.name
                    ),
                )
                return
            if operation.attempt > 1 and self._out_of_attempts(operation, step):
                return
            with self.db.write() as conn:
                step_id = operation_store.start_step(conn, operation.id, self.id, step.name)
            outcome = self._run_step(operation, step, ctx)
            if not self._after_step(
                operation,
                step,
                step_id,
                outcome,
                last=index == len(steps) - 1,
                progress=(index + 1) * 100 // len(steps),
            ):
                return
            ctx.results[step.name] = outcome.result

    def _out_of_attempts(self, operation: Operation, step: Step) -> bool:
        """Fail the operation when a step already used its budget (e.g. its workers kept dying)."""
        with self.db.read() as conn:
            failures = operation_store.failed_attempts(conn, operation.id, step.name)
        if failures < step.max_attempts:
            return False
        self._finish(
            operation,
            OperationState.FAILED,
            error=ErrorInfo(
                code="RETRIES_EXHAUSTED",
                message=f"step {step.name} failed {failures} times (workers lost or errors); giving up",
                step=step.name,
            ),
        )
        return True

    def _run_step(self, operation: Operation, step: Step, ctx: StepContext) -> StepOutcome:
        deadline = step.deadline_seconds or self.settings.default_step_deadline_seconds
        ctx.step = step.name
        ctx.deadline = time.monotonic() + deadline
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = step.run(ctx)
            except BaseException as exc:
                box["exc"] = exc

        started = time.perf_counter()
        thread = threading.Thread(target=target, name=f"step-{operation.id}-{step.name}", daemon=True)
        thread.start()
        thread.join(deadline)
        metrics.STEP_DURATION.labels(operation.verb, step.name).observe(time.perf_counter() - started)
        if thread.is_alive():
            return StepOutcome(error=_error_from(DeadlineExceeded(step.name), step.name))
        exc = box.get("exc")
        if isinstance(exc, LeaseLost):
            raise exc
        if isinstance(exc, Cancelled):
            return StepOutcome(cancelled=True)
        if exc is not None:
            if not isinstance(exc, StepError):
                log.error("step %s of %s failed", step.name, operation.id, exc_info=exc)
            return StepOutcome(error=_error_from(exc, step.name))
        return StepOutcome(result=box.get("result"))

    def _after_step(
        self,
        operation: Operation,
        step: Step,
        step_id: int,
        outcome: StepOutcome,
        *,
        last: bool,
        progress: int,
    ) -> bool:
        """Record the outcome; True when the operation goes on to its next step."""
        with self.db.write() as conn:
            if outcome.cancelled:
                error = ErrorInfo(
                    code="CANCELLED", message=f"cancelled during step {step.name}", step=step.name
                )
                self._close_step(conn, operation, step, step_id, error=error)
                self._finish(operation, OperationState.CANCELLED, error=error, conn=conn)
                return False
            if outcome.error is not None:
                self._close_step(conn, operation, step, step_id, error=outcome.error)
                failures = operation_store.failed_attempts(conn, operation.id, step.name)
                if outcome.error.retryable and failures < step.max_attempts:
                    delay = backoff_seconds(step, failures)
                    operation_store.reschedule(
                        conn, operation.id, self.id, utcnow() + timedelta(seconds=delay)
                    )
                    log.info(
                        "step %s of %s failed (%s); retry %d/%d in %.1fs",
                        step.name,
                        operation.id,
                        outcome.error.code,
                        failures,
                        step.max_attempts,
                        delay,
                    )
                else:
                    self._finish(operation, OperationState.FAILED, error=outcome.error, conn=conn)
                return False
            self._close_step(conn, operation, step, step_id, result=outcome.result)
            if last:
                self._finish(operation, OperationState.SUCCEEDED, result=outcome.result, conn=conn)
                return False
            operation_store.set_progress(conn, operation.id, self.id, progress, f"{step.name} done")
        return True

    def _close_step(
        self,
        conn: Connection,
        operation: Operation,
        step: Step,
        step_id: int,
        *,
        result: Any = None,
        error: ErrorInfo | None = None,
    ) -> None:
        """Record the step's end and its audit record in one transaction."""
        operation_store.finish_step(conn, operation.id, step_id, self.id, result=result, error=error)
        audit.record(
            conn,
            principal=operation.principal,
            project_id=operation.project_id,
            action=f"{operation.verb}:{step.name}",
            resource_kind=operation.target_kind,
            resource_id=operation.target_id,
            result="failure" if error else "success",
            request_id=operation.origin_request_id,
            source=f"worker {self.id}",
            details={"operation_id": operation.id, **({"error": error.code} if error else {})},
        )

    def _finish(
        self,
        operation: Operation,
        state: OperationState,
        *,
        result: Any = None,
        error: ErrorInfo | None = None,
        conn: Connection | None = None,
    ) -> None:
        if conn is None:
            with self.db.write() as own:
                self._finish_in(own, operation, state, result, error)
        else:
            self._finish_in(conn, operation, state, result, error)
        metrics.OPERATIONS_FINISHED.labels(operation.verb, str(state)).inc()
        metrics.OPERATION_DURATION.labels(operation.verb).observe(
            (utcnow() - operation.created_at).total_seconds()
        )

    def _finish_in(
        self,
        conn: Connection,
        operation: Operation,
        state: OperationState,
        result: Any,
        error: ErrorInfo | None,
    ) -> None:
        ended = operation_store.finish(conn, operation.id, self.id, state, result=result, error=error)
        hook = self.registry.get(operation.verb).on_end
        if hook is not None and state != OperationState.SUCCEEDED:
            hook(conn, ended)


def run_workers(
    db: Database, registry: Registry, settings: Settings, count: int, stop: threading.Event
) -> list[threading.Thread]:
    """Start ``count`` worker threads sharing ``stop``; used by ``sovra up`` and ``sovra worker``."""
    threads = []
    schedule = PeriodicSchedule()
    for _ in range(count):
        worker = Worker(db, registry, settings, schedule=schedule)
        worker.stop = stop
        thread = threading.Thread(target=worker.run, name=f"worker-{worker.id}", daemon=True)
        thread.start()
        threads.append(thread)
    return threads
