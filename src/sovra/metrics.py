"""Prometheus metrics shared by every role."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sovra.store import operations as operation_store
from sovra.store.database import Database

API_LATENCY = Histogram(
    "sovra_api_request_duration_seconds",
    "API request latency by route template, method and status code.",
    ["method", "route", "status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
AUTH_FAILURES = Counter(
    "sovra_auth_failures_total",
    "Refused credentials, by reason (missing, invalid, expired, revoked, oidc).",
    ["reason"],
)
RATE_LIMITED = Counter("sovra_rate_limited_total", "Requests refused with 429.")
OPERATIONS_FINISHED = Counter(
    "sovra_operations_finished_total",
    "Operations this worker finished, by verb and final state.",
    ["verb", "state"],
)
OPERATION_DURATION = Histogram(
    "sovra_operation_duration_seconds",
    "From creation to a final state, by verb.",
    ["verb"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
)
STEP_DURATION = Histogram(
    "sovra_operation_step_duration_seconds",
    "Time spent in one step attempt, by verb and step.",
    ["verb", "step"],
)
PLACEMENTS = Counter(
    "sovra_scheduler_placements_total",
    "Placement requests by outcome: placed, existing (a retried request) or no_valid_host.",
    ["outcome"],
)
CLAIM_CONFLICTS = Counter(
    "sovra_scheduler_claim_conflicts_total",
    "Claims lost to a concurrent scheduler (the host changed since it was selected); each is retried.",
)
PLACEMENT_DURATION = Histogram(
    "sovra_scheduler_placement_duration_seconds",
    "Time to place one server, claim included, by outcome.",
    ["outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class OperationsCollector(Collector):
    """``sovra_operations{state,verb}``: counted in the database at scrape time, so every replica
    reports the same truth instead of its own share."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "sovra_operations", "Operations by state and verb.", labels=["state", "verb"]
        )
        with self._db.read() as conn:
            for state, verb, count in operation_store.count_by_state_and_verb(conn):
                family.add_metric([state, verb], count)
        yield family
