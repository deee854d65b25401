"""Benchmark: other programs on the key, through the gateway or straight at Keepa.

One simulated account, W fleet workers (``bench.fleet_worker``: the real permit client,
a fixed backlog each) and N processes of the unmodified ``keepa`` package
(``bench.keepa_user``: a share of other ASINs each), in two modes of the same run:

- ``gateway``: the N processes go through ``keepa-fleet gateway`` (``use_gateway``, the
  two lines of the README); the broker sees every call of theirs as a client's.
- ``direct``: the same N processes straight at the simulator with the account's key (what
  they do without the gateway); the broker sees their spending only as ``unaccounted``.

Time is kept in Keepa's proportions: on Keepa an offer call takes about 5 s against a 60 s
refill step (1/12); here the step is ``refill_period_s`` and the simulator's latency is
scaled by ``refill_period_s / 60``, so an offer call is still about 1/12 of a step.

Figures from the simulator's ground truth (``/_sim/state``), the broker's STATUS at the end
and what the processes report: 429s of each side, the workers' time lost on failed attempts
(from asking the broker to the failure) and their wall time for their backlog.

``run_mix`` is also what ``tests/gateway/test_gateway_mix.py`` runs (small N, short).
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from bench import backlog
from bench import harness as h

NAME = "gateway"
TITLE = "10. Other programs on the key: through the gateway vs straight at Keepa"

KEEPA_STEP_S = 60.0
KEEPA_OFFER_CALL_S = 5.0  # the simulator's mean offer-call latency before scaling
MODES = ("gateway", "direct")
SETTLE_WAIT_S = 15.0  # after the run: the last settles reach the broker


@dataclasses.dataclass(frozen=True)
class MixSpec:
    mode: str  # "gateway" or "direct"
    users: int  # N processes of the keepa package
    workers: int  # W fleet workers
    worker_asins: int  # per worker
    user_asins: int  # per keepa process
    batch: int
    refill_rate: int
    refill_period_s: float
    initial_tokens: int
    time_limit_s: float
    seed: int = 1

    @property
    def latency_scale(self) -> float:
        """An offer call is ~1/12 of a refill step, as on Keepa (5 s of 60 s)."""
        return self.refill_period_s / KEEPA_STEP_S


def run_mix(spec: MixSpec, log_dir: Path, label: str) -> dict[str, Any]:
    """One run of ``spec`` on a simulator and an account of its own."""
    if spec.mode not in MODES:
        raise ValueError(f"mode {spec.mode!r}: one of {', '.join(MODES)}")
    key = f"benchmix{uuid.uuid4().hex[:16]}"
    run_dir = log_dir / label
    run_dir.mkdir(parents=True, exist_ok=True)
    address = f"tcp://127.0.0.1:{h.free_port()}"
    with h.owned_processes(run_dir) as procs:
        sim = h.start_sim(
            procs,
            refill_rate=spec.refill_rate,
            refill_period_s=spec.refill_period_s,
            latency_scale=spec.latency_scale,
            seed=spec.seed,
        )
        wanted = spec.workers * spec.worker_asins + spec.users * spec.user_asins
        asins = sim.catalog(wanted)
        worker_part = asins[: spec.workers * spec.worker_asins]
        user_part = asins[spec.workers * spec.worker_asins :]
        env = h.broker_env(address, sim.url, key, spec.refill_period_s)
        gateway_url = f"http://127.0.0.1:{h.free_port()}"
        workers, users = [], []
        for i, share in enumerate(backlog.shares(worker_part, spec.workers)):
            argv = h.python_command(
                "bench.fleet_worker",
                *("--id", f"{label}-w{i}", "--batch", str(spec.batch), "--stats", "90"),
                *("--offers", "20", "--asins", ",".join(share)),
            )
            workers.append(procs.start(f"worker{i}", argv, env=env, pipes=True))
        for i, share in enumerate(backlog.shares(user_part, spec.users)):
            mode_args = (
                ["--url", gateway_url, "--client", f"user{i}"]
                if spec.mode == "gateway"
                else ["--url", sim.url, "--key", key]
            )
            argv = h.python_command(
                "bench.keepa_user",
                *("--mode", spec.mode, *mode_args, "--batch", str(spec.batch)),
                *("--offers", "20", "--asins", ",".join(share)),
            )
            users.append(procs.start(f"user{i}", argv, env=env, pipes=True))
        children = workers + users
        gateway = None
        if spec.mode == "gateway":
            gateway = _start_gateway(procs, env, gateway_url, run_dir)
        h.wait_ready(children, timeout_s=180)
        # The balance is set last but the broker's start (it syncs /token then): the
        # account refills meanwhile, s0 below is the balance at GO.
        sim.admin("tokens", key=key, tokens=spec.initial_tokens)
        h.start_broker(procs, env)
        if gateway is not None:
            _wait_gateway(gateway, gateway_url)
        s0 = sim.state(key)
        t_go = time.time()
        for c in children:
            c.send("GO")
        limit_at = t_go + spec.time_limit_s
        sleeping: dict[int, float] = {}
        progress: list[dict[str, Any]] = [{} for _ in children]

        def on_line(i: int, line: str) -> None:
            if line.startswith("PROGRESS"):
                progress[i] = json.loads(line[len("PROGRESS") :])
                sleeping[i] = float(progress[i].get("sleeping_until") or 0)

        def over(results: list[dict[str, Any] | None]) -> bool:
            """The workers are done and every unfinished keepa process sleeps in its 429
            wait until past the time limit: nothing more can happen before it."""
            if any(r is None for r in results[: len(workers)]):
                return False
            pending = [i for i, r in enumerate(results) if r is None]
            return all(sleeping.get(i, 0) > limit_at for i in pending)

        results = h.gather(children, time.monotonic() + spec.time_limit_s, on_line, until=over)
        elapsed_s = time.time() - t_go
        state = _settled_status(address)
        s1 = sim.state(key)
    w = len(workers)
    return summarize(
        spec, s0, s1, state, t_go, elapsed_s, results[:w], results[w:], progress[:w], progress[w:]
    )


def _start_gateway(procs: h.Processes, env: dict[str, str], url: str, run_dir: Path) -> h.Child:
    """``keepa-fleet gateway`` as a process (it serves before the broker is up)."""
    return procs.start(
        "gateway",
        h.fleet_command(
            "gateway",
            *("--listen", url.removeprefix("http://"), "--clients", str(run_dir / "clients.json")),
        ),
        env=env,
    )


def _wait_gateway(child: h.Child, url: str) -> None:
    """Until the gateway answers /token from the broker's ledger."""

    def answering() -> bool:
        if child.proc.poll() is not None:
            raise h.BenchError(f"gateway exited; log:\n{child.log_tail()}")
        return requests.get(f"{url}/token", timeout=2).status_code == 200

    h.wait_until(answering, h.START_TIMEOUT_S, "the gateway to answer /token", interval_s=0.1)


def _settled_status(address: str) -> dict[str, Any]:
    """The broker's STATUS once nothing is in flight (the last settles arrived), or the last
    one seen after ``SETTLE_WAIT_S``."""
    end = time.monotonic() + SETTLE_WAIT_S
    state: dict[str, Any] | None = None
    while True:
        state = h.broker_status(address) or state
        idle = state is not None and not state["tokens"].get("in_flight")
        if idle or time.monotonic() >= end:
            break
        time.sleep(0.1)
    if state is None:
        raise h.BenchError("the broker did not answer STATUS after the run")
    return state


def summarize(
    spec: MixSpec,
    s0: dict[str, Any],
    s1: dict[str, Any],
    state: dict[str, Any],
    t_go: float,
    elapsed_s: float,
    workers: list[dict[str, Any] | None],
    users: list[dict[str, Any] | None],
    worker_progress: list[dict[str, Any]],
    user_progress: list[dict[str, Any]],
) -> dict[str, Any]:
    """One run's figures; a process cut off at the limit counts with its last PROGRESS."""
    tokens = state["tokens"]
    consumed = int(s1["tokens_consumed"]) - int(s0["tokens_consumed"])
    workers_finished = all(r is not None for r in workers)
    users_finished = all(r is not None for r in users)
    w_done = [r if r is not None else p for r, p in zip(workers, worker_progress, strict=True)]
    u_done = [r if r is not None else p for r, p in zip(users, user_progress, strict=True)]
    return {
        "mode": spec.mode,
        "users": spec.users,
        "workers": spec.workers,
        "elapsed_s": elapsed_s,
        "balance_at_go": int(s0["tokens_left"]),
        "sim_429": int(s1.get("status_429", 0)) - int(s0.get("status_429", 0)),
        "worker_429": sum(int(r.get("status_429", 0)) for r in w_done),
        "user_429": sum(int(r.get("status_429", 0)) for r in u_done),
        "user_sleep_s": sum(sum(r.get("waits_s", [])) for r in u_done),
        "worker_lost_s": sum(float(r.get("lost_s", 0.0)) for r in w_done),
        "worker_errors": sum(int(r.get("errors", 0)) for r in w_done),
        "worker_items": sum(int(r.get("items", 0)) for r in w_done),
        "worker_backlog": spec.workers * spec.worker_asins,
        "workers_finished": workers_finished,
        "worker_wall_s": (
            max(float(r["finished"]) for r in w_done) - t_go if workers_finished else float("nan")
        ),
        "user_items": sum(int(r.get("items", 0)) for r in u_done),
        "user_backlog": spec.users * spec.user_asins,
        "users_finished": users_finished,
        "user_wall_s": (
            max(float(r["finished"]) for r in u_done) - t_go if users_finished else float("nan")
        ),
        "user_errors": sum(int(r.get("errors", 0)) for r in u_done),
        "sim_consumed": consumed,
        "fleet_settled": int(tokens["spent"]),
        "spent_workers": int(tokens.get("spent_workers", 0)),
        "spent_clients": int(tokens.get("spent_clients", 0)),
        "unaccounted": int(tokens.get("unaccounted", 0)),
        "in_flight": int(tokens.get("in_flight", 0)),
        "min_tokens_left": int(s1.get("min_tokens_left", s1["tokens_left"])),
        "clients": [
            {k: c.get(k) for k in ("id", "granted", "tokens_spent", "permits_held", "waiting")}
            for c in state.get("clients", [])
        ],
    }


# --- the benchmark ----------------------------------------------------------------------

QUICK = {
    "users": (2, 4),
    "spec": MixSpec(
        mode="gateway",
        users=4,
        workers=2,
        worker_asins=32,
        user_asins=16,
        batch=8,
        refill_rate=60,
        refill_period_s=1.0,
        initial_tokens=100,
        time_limit_s=90.0,
    ),
    "repeats": 1,
}
PROFILES: dict[str, dict[str, Any]] = {
    "quick": QUICK,
    "full": {**QUICK, "users": (2, 4, 8), "repeats": 2},
}


def run(profile: str, log_dir: Path) -> str:
    prof = PROFILES[profile]
    base: MixSpec = prof["spec"]
    runs: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in range(prof["repeats"]):
        for n in prof["users"]:
            for mode in MODES:
                spec = dataclasses.replace(base, mode=mode, users=n, seed=base.seed + r)
                h.progress(f"{NAME}: {mode}, N={n}, repeat {r + 1}/{prof['repeats']}")
                out = run_mix(spec, log_dir, f"{mode}-n{n}-r{r}")
                h.progress(
                    f"{NAME}: {mode}, N={n}: 429s {out['sim_429']} (workers "
                    f"{out['worker_429']}, keepa {out['user_429']}), workers lost "
                    f"{out['worker_lost_s']:.1f} s, unaccounted {out['unaccounted']}, "
                    f"consumed {out['sim_consumed']} / settled {out['fleet_settled']}"
                )
                runs.setdefault((n, mode), []).append(out)
    return report(base, prof, runs)


def _wall(rs: list[dict[str, Any]], key: str, finished: str, limit: float) -> str:
    if all(r[finished] for r in rs):
        return h.figures(rs, key).fmt(".1f", " s")
    return f"not finished in {limit:.0f} s"


def report(
    base: MixSpec, prof: dict[str, Any], runs: dict[tuple[int, str], list[dict[str, Any]]]
) -> str:
    rows = []
    for n in prof["users"]:
        for mode in MODES:
            rs = runs.get((n, mode), [])
            if not rs:
                continue
            f = lambda key, rs=rs: h.figures(rs, key)  # noqa: E731
            rows.append(
                [
                    n,
                    mode,
                    f("sim_429").fmt(".0f"),
                    f("user_429").fmt(".0f") + f" ({f('user_sleep_s').fmt('.0f')} s asleep)",
                    f("worker_429").fmt(".0f"),
                    f("worker_lost_s").fmt(".1f", " s"),
                    _wall(rs, "worker_wall_s", "workers_finished", base.time_limit_s),
                    f("worker_items").fmt(".0f") + f" / {rs[0]['worker_backlog']}",
                    f("user_items").fmt(".0f") + f" / {rs[0]['user_backlog']}",
                    _wall(rs, "user_wall_s", "users_finished", base.time_limit_s),
                    f("unaccounted").fmt(".0f"),
                    f("sim_consumed").fmt(".0f") + " / " + f("fleet_settled").fmt(".0f"),
                    f("spent_workers").fmt(".0f") + " / " + f("spent_clients").fmt(".0f"),
                    f("min_tokens_left").fmt(".0f"),
                ]
            )
    table = h.table(
        [
            "N keepa processes",
            "mode",
            "429s (simulator)",
            "429s met by the keepa processes",
            "429s met by the workers",
            "workers' time lost on failed attempts",
            "workers' wall time for their backlog",
            "workers' ASINs",
            "keepa processes' ASINs",
            "keepa processes' wall time",
            "unaccounted (broker)",
            "consumed (simulator) / settled (broker)",
            "settled: workers / clients",
            "lowest balance",
        ],
        rows,
    )
    goals = []
    for n in prof["users"]:
        g, d = runs.get((n, "gateway"), []), runs.get((n, "direct"), [])
        if not g:
            continue
        zero_429 = all(r["sim_429"] == 0 for r in g)
        zero_unacc = all(r["unaccounted"] == 0 for r in g)
        equal = all(r["sim_consumed"] == r["fleet_settled"] for r in g)
        direct_429 = h.figures(d, "sim_429").fmt(".0f") if d else "n/a"
        direct_unacc = h.figures(d, "unaccounted").fmt(".0f") if d else "n/a"
        goals += [
            [n, "0 429s through the gateway", h.figures(g, "sim_429").fmt(".0f"), direct_429,
             h.verdict(zero_429)],
            [n, "unaccounted 0 through the gateway", h.figures(g, "unaccounted").fmt(".0f"),
             direct_unacc, h.verdict(zero_unacc)],
            [n, "simulator consumed == fleet settled", _eq(g), _eq(d) if d else "n/a",
             h.verdict(equal)],
        ]  # fmt: skip
    setup = (
        f"One simulated account: {base.refill_rate} tokens per {base.refill_period_s:g} s "
        f"refill step, starting balance {base.initial_tokens}. Keepa's proportions: the "
        f"simulator's latency × {base.latency_scale:.4f} (= step ÷ {KEEPA_STEP_S:.0f} s), so "
        f"an offer call takes about {KEEPA_OFFER_CALL_S * base.latency_scale * 1000:.0f} ms, "
        f"1/12 of a step, as 5 s is of Keepa's 60 s. {base.workers} fleet workers "
        f"(`bench/fleet_worker.py`, {base.worker_asins} ASINs each) and N processes of the "
        f"unmodified `keepa` 1.6.0 (`bench/keepa_user.py`, {base.user_asins} other ASINs "
        f"each), all `offers=20`, {base.batch} ASINs a call. Mode *gateway*: the keepa "
        "processes through `keepa-fleet gateway` (`use_gateway`, a dummy key); *direct*: the "
        "same processes straight at the simulator with the account's key. A run ends when "
        "every process is done, or the workers are and every keepa process left sleeps in "
        f"its 429 wait past the {base.time_limit_s:.0f} s limit, or at the limit. "
        f"{prof['repeats']} repeat(s) a cell. *Time lost* = the workers' failed attempts, "
        "from the first attempt of a batch to the send that worked (a 429 another program "
        "caused, then the wait for the refills that paid for it)."
    )
    notes = (
        "Notes: the keepa package's 429 sleep (`time_to_refill`) adds |tokensLeft| ÷ "
        f"refillRate × {KEEPA_STEP_S:.0f} s, a formula for Keepa's {KEEPA_STEP_S:.0f} s step: "
        f"on this {base.refill_period_s:g} s step its sleeps after a negative balance are "
        f"{KEEPA_STEP_S / base.refill_period_s:.0f}× what the refills need, so in *direct* mode "
        "its own wall time is worse than it would be on Keepa; its 429s and the workers' "
        "failed attempts come from sending without a permit, which is the same on Keepa. In "
        "*gateway* mode the keepa processes wait in the broker's queue (priority 0, below the "
        "workers' commits) instead of meeting 429s. The workers' wall time is shorter in "
        "*direct* mode for the same reason: the keepa processes, asleep in their 429 waits, "
        "leave the account to them; through the gateway the broker shares it, so the "
        "workers' wall time grows and the keepa processes' shrinks."
    )
    return "\n\n".join(
        [setup, table, h.table(["N", "goal", "gateway", "direct", "verdict"], goals), notes]
    )


def _eq(rs: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{r['sim_consumed']} {'=' if r['sim_consumed'] == r['fleet_settled'] else '≠'} "
        f"{r['fleet_settled']}"
        for r in rs
    )
