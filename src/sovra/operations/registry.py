"""Which steps make up each operation verb.

A handler is an ordered list of steps. Each step must be idempotent and keyed by the operation's
target, because after a worker dies the next worker runs the unfinished step again.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from sovra.config import Settings
    from sovra.domain.operation import Operation
    from sovra.operations.context import StepContext
    from sovra.store.database import Database

StepFunction = Callable[["StepContext"], Any]
EndHook = Callable[["Connection", "Operation"], None]
"""Runs in the transaction that ends an operation as FAILED or CANCELLED: put the target back in a
state that tells the truth (e.g. an image version that failed its boot test becomes ``failed``)."""


@dataclass(frozen=True)
class Step:
    """One idempotent unit of work with a deadline and a retry budget."""

    name: str
    run: StepFunction
    deadline_seconds: float | None = None  # None: the configured default
    max_attempts: int = 5
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 60.0


@dataclass(frozen=True)
class Handler:
    verb: str
    steps: tuple[Step, ...]
    on_end: EndHook | None = None


PeriodicFunction = Callable[["Database", "Settings"], Any]


@dataclass(frozen=True)
class PeriodicTask:
    """Housekeeping every worker runs now and then (retention, garbage collection). Tasks must be
    safe to run in several workers at once: they work through the same compare-and-swap writes as
    everything else."""

    name: str
    interval_seconds: float
    run: PeriodicFunction


class UnknownVerb(KeyError):
    pass


class Registry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self.periodic: list[PeriodicTask] = []

    def add_periodic(self, name: str, interval_seconds: float, run: PeriodicFunction) -> None:
        self.periodic.append(PeriodicTask(name, interval_seconds, run))

    def register(self, verb: str, steps: Iterable[Step], on_end: EndHook | None = None) -> None:
        steps = tuple(steps)
        names = [s.name for s in steps]
        if not steps or len(set(names)) != len(names):
            raise ValueError(f"handler {verb!r} needs at least one step and unique step names")
        self._handlers[verb] = Handler(verb, steps, on_end)

    def get(self, verb: str) -> Handler:
        try:
            return self._handlers[verb]
        except KeyError:
            raise UnknownVerb(verb) from None

    @property
    def verbs(self) -> list[str]:
        return sorted(self._handlers)

    def load_plugins(self, modules: Iterable[str]) -> None:
        """Import each module and call its ``register(registry)``."""
        for name in modules:
            module = importlib.import_module(name)
            module.register(self)


def default_registry(plugins: Iterable[str] = ()) -> Registry:
    """The built-in handlers plus those of the configured plugin modules."""
    from sovra.compute import hosts, power_sync, server_ops, snapshots
    from sovra.images import pipeline
    from sovra.operations import builtin

    registry = Registry()
    builtin.register(registry)
    pipeline.register(registry)
    hosts.register(registry)
    server_ops.register(registry)
    snapshots.register(registry)
    power_sync.register(registry)
    registry.load_plugins(plugins)
    return registry
