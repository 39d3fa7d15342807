"""Worker for the concurrency test: promote one version from a separate process.

Usage: python registry_worker.py URL APP MODEL VERSION LOCK_DIR EXPECTED BARRIER
Prints "ready", waits for the BARRIER file, promotes, prints one JSON line with the outcome.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from mlflow import MlflowClient

from loopwright.release.approval import ApprovalDecision
from loopwright.release.registry_ops import ANY_CHAMPION, RegistryError, RegistryOps


def main() -> None:
    url, app, model, version, lock_dir, expected, barrier = sys.argv[1:8]
    ops = RegistryOps(MlflowClient(tracking_uri=url, registry_uri=url), app, lock_dir)
    approval = ApprovalDecision(
        approved=True, by=f"worker-{version}", at=datetime.now(UTC), reason="test", channel="auto"
    )
    print("ready", flush=True)
    while not Path(barrier).exists():
        time.sleep(0.005)
    try:
        result = ops.promote(
            model,
            version,
            approval,
            expected_champion=ANY_CHAMPION if expected == "*" else expected,
            request_id=f"worker-{version}",
        )
        print(json.dumps({"ok": True, "status": result.status}), flush=True)
    except RegistryError as exc:
        print(json.dumps({"ok": False, "error": type(exc).__name__, "msg": str(exc)}), flush=True)


if __name__ == "__main__":
    main()
