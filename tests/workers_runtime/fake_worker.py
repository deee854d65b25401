"""A worker process with fake stages, for the runtime's real-process tests (KILL, SIGTERM):
the real runtime, link and permit client, settings from the environment, no database.

    python fake_worker.py --broker ADDR --id NAME --mode MODE --dir DIR

``--mode idle``: one stage that never has work. ``--mode call``: one stage that makes one
permitted call whose fn prints FN_STARTED and returns once DIR/release exists (a stand-in
for a slow HTTP call; bounded); the stage prints GAVE_BACK when it gives back.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common.config import load_settings
from common.keepa import KeepaResponse, TokenEnvelope
from common.log import setup_logging
from workers.permit_client import BrokerPermitClient
from workers.runtime import run_worker

FN_LIMIT_S = 30.0
FN_POLL_S = 0.02


class CallStage:
    name = "fake_call"

    def __init__(self, permits: BrokerPermitClient, release: Path) -> None:
        self.permits = permits
        self.release = release
        self.done = False

    def urgency(self, now: float) -> float:
        return 0.0 if self.done else 1.0

    def run_once(self, now: float) -> int:
        resp = self.permits.call(5, self._fn)
        print(f"CALL_DONE {resp.status}", flush=True)
        self.done = True
        self.permits.advance(self.name, 1)
        return 1

    def _fn(self) -> KeepaResponse:
        print("FN_STARTED", flush=True)
        end = time.monotonic() + FN_LIMIT_S
        while not self.release.exists() and time.monotonic() < end:
            time.sleep(FN_POLL_S)  # the fake HTTP call lasts until the test releases it
        env = TokenEnvelope(1_700_000_000_000, 90, 1000, 20, 0.0, 5, 10)
        return KeepaResponse(status=200, envelope=env, payload={}, elapsed_s=0.1)

    def give_back(self) -> None:
        print("GAVE_BACK", flush=True)


class IdleStage:
    name = "fake_idle"

    def urgency(self, now: float) -> float:
        return 0.0

    def run_once(self, now: float) -> int:
        raise AssertionError("never runs")

    def give_back(self) -> None:
        print("GAVE_BACK", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--mode", choices=("idle", "call"), required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    setup_logging("DEBUG")
    settings = load_settings(overrides={"broker.address": args.broker})
    release = Path(args.dir) / "release"

    def make_stages(permits: BrokerPermitClient) -> list[CallStage | IdleStage]:
        return [CallStage(permits, release) if args.mode == "call" else IdleStage()]

    print("STARTING", flush=True)
    return run_worker(settings, worker_id=args.id, role="all", make_stages=make_stages)


if __name__ == "__main__":
    sys.exit(main())
