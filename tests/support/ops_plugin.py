"""Operation handlers used by the process-level tests, loaded by ``SOVRA_PLUGINS``.

``test.ledger`` has one step with a side effect: it appends the operation id to a ledger file,
then holds for a while (a slow call to the outside world). It is idempotent the way every real
step must be, keyed by the operation id: if the ledger already has the id, it does not append.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sovra.operations.context import StepContext
from sovra.operations.registry import Registry, Step

LEDGER_VERB = "test.ledger"


def _effect(ctx: StepContext) -> dict[str, Any]:
    ledger = Path(ctx.params["ledger"])
    entry = f"{ctx.operation.id} {ctx.worker_id}\n"
    with ledger.open("a+") as handle:
        handle.seek(0)
        if not any(line.startswith(ctx.operation.id) for line in handle):
            handle.write(entry)
            handle.flush()
            os.fsync(handle.fileno())
    ctx.sleep(float(ctx.params.get("hold_seconds", 0)))
    return {"finished_by": ctx.worker_id}


def register(registry: Registry) -> None:
    registry.register(LEDGER_VERB, [Step("effect", _effect, deadline_seconds=60)])
