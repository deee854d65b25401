"""What every benchmark shares: processes it owns, the simulator and the broker as
subprocesses, a start barrier, /proc readings, statistics, progress lines and tables.

Every process started here is stopped by ``Processes.stop_all`` (called from a ``finally``);
every wait has a deadline. Child programs talk to the parent with lines on stdout:
``READY`` once set up, then ``RESULT {json}`` when done; the parent answers ``READY`` with a
``GO ...`` line on their stdin. Their stderr goes to a log file kept for diagnosis.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import requests

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")

START_TIMEOUT_S = 60.0  # a child or server up and ready (imports on a busy 2-core machine)
STOP_GRACE_S = 5.0  # SIGTERM to SIGKILL
HTTP_TIMEOUT_S = 10.0

T = TypeVar("T")


class BenchError(Exception):
    """A benchmark could not run (a process did not start, a deadline passed)."""


# --- progress ---------------------------------------------------------------------------

_T0 = time.monotonic()


def progress(text: str) -> None:
    """One progress line on stdout: elapsed time since the run started, then the text."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {text}", flush=True)


# --- ports, waiting ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.05
) -> T:
    """Poll ``predicate`` until truthy; BenchError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except BenchError:
            raise
        except Exception as exc:  # not ready yet
            last = exc
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}") from last
        time.sleep(interval_s)


# --- processes --------------------------------------------------------------------------


def python_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def fleet_command(*args: str) -> list[str]:
    return python_command("common.cli", *args)


@dataclasses.dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    _buf: bytes = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def read_line(self, deadline: float) -> str:
        """The next stdout line, waiting at most until ``deadline`` (monotonic)."""
        out = self.proc.stdout
        assert out is not None
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"{self.name}: no answer in time; log:\n{self.log_tail()}")
            ready, _, _ = select.select([out], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(out.fileno(), 65536)
                if not chunk:
                    raise BenchError(
                        f"{self.name}: exited ({self.proc.poll()}); log:\n{self.log_tail()}"
                    )
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode(errors="replace").strip()

    def expect(self, prefix: str, deadline: float) -> str:
        """Read lines until one starts with ``prefix``; return the rest of that line."""
        while True:
            line = self.read_line(deadline)
            if line.startswith(prefix):
                return line[len(prefix) :].strip()


class Processes:
    """Subprocesses a benchmark starts; ``stop_all`` terminates and reaps all of them."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        pipes: bool = False,
    ) -> Child:
        full_env = dict(os.environ)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.setdefault("FLEET_LOG_LEVEL", "WARNING")
        if env:
            full_env.update(env)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else log,
                stderr=log,
                env=full_env,
                cwd=ROOT,
                start_new_session=True,
            )
        child = Child(name, proc, log_path)
        self.children.append(child)
        return child

    def stop(self, child: Child, grace_s: float = STOP_GRACE_S) -> None:
        self._stop([child], grace_s)
        self.children.remove(child)

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> None:
        self._stop(self.children, grace_s)
        self.children.clear()

    @staticmethod
    def _stop(children: Iterable[Child], grace_s: float) -> None:
        children = list(children)
        for c in children:
            if c.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    c.proc.stdin.close()
            if c.proc.poll() is None:
                _signal_group(c.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for c in children:
            try:
                c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(c.proc, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.proc.wait(timeout=5)
            if c.proc.stdout is not None:
                c.proc.stdout.close()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def wait_ready(children: Sequence[Child], timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    for c in children:
        c.expect("READY", deadline)


def collect_results(children: Sequence[Child], timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    return [json.loads(c.expect("RESULT", deadline)) for c in children]


# --- child side of the barrier ----------------------------------------------------------


def child_ready() -> None:
    print("READY", flush=True)


def child_wait_go(stdin: IO[str] | None = None, timeout_s: float = 600.0) -> list[str]:
    """Block until the parent's ``GO`` line (its words after GO are returned)."""
    stream = stdin or sys.stdin
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 1.0)
        if ready:
            line = stream.readline()
            if not line:
                raise SystemExit("parent went away")
            words = line.split()
            if words and words[0] == "GO":
                return words[1:]
    raise SystemExit("no GO from the parent in time")


def child_result(result: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(result, separators=(",", ":")), flush=True)


# --- the simulator and the broker -------------------------------------------------------


@dataclasses.dataclass
class Sim:
    url: str
    child: Child

    def state(self, key: str) -> dict[str, Any]:
        resp = requests.get(f"{self.url}/_sim/state", params={"key": key}, timeout=HTTP_TIMEOUT_S)
        resp.raise_for_status()
        return dict(resp.json())

    def admin(self, what: str, **params: Any) -> dict[str, Any]:
        resp = requests.post(f"{self.url}/_sim/{what}", params=params, timeout=HTTP_TIMEOUT_S)
        resp.raise_for_status()
        try:
            return dict(resp.json())
        except ValueError:
            return {}

    def catalog(self, count: int) -> list[str]:
        asins: list[str] = []
        while len(asins) < count:
            resp = requests.get(
                f"{self.url}/_sim/catalog",
                params={"offset": len(asins), "limit": min(1000, count - len(asins))},
                timeout=HTTP_TIMEOUT_S,
            )
            resp.raise_for_status()
            page = list(resp.json()["asins"])
            if not page:
                raise BenchError(f"the simulator's catalog has only {len(asins)} ASINs")
            asins.extend(page)
        return asins[:count]


def start_sim(
    procs: Processes,
    *,
    refill_rate: int,
    refill_period_s: float,
    latency_scale: float,
    seed: int = 1,
    name: str = "sim",
    deal_interval_s: float | None = None,
    deal_cache_s: float | None = None,
) -> Sim:
    port = free_port()
    feed = [] if deal_interval_s is None else ["--deal-interval", str(deal_interval_s)]
    if deal_cache_s is not None:
        feed += ["--deal-cache", str(deal_cache_s)]
    child = procs.start(
        name,
        fleet_command(
            "sim",
            "--port",
            str(port),
            "--refill-rate",
            str(refill_rate),
            "--refill-period",
            str(refill_period_s),
            "--seed",
            str(seed),
            "--latency-scale",
            str(latency_scale),
            *feed,
        ),
    )
    sim = Sim(f"http://127.0.0.1:{port}", child)

    def up() -> bool:
        if child.proc.poll() is not None:
            raise BenchError(f"simulator exited; log:\n{child.log_tail()}")
        return requests.get(f"{sim.url}/_sim/catalog", params={"limit": 1}, timeout=2).ok

    wait_until(up, START_TIMEOUT_S, "the simulator")
    return sim


def broker_env(address: str, sim_url: str, key: str, refill_period_s: float) -> dict[str, str]:
    """The environment of every fleet process of a run (broker and workers)."""
    return {
        "FLEET_BROKER": address,
        "KEEPA_BASE_URL": sim_url,
        "KEEPA_API_KEY": key,
        "KEEPA_REFILL_PERIOD_S": str(refill_period_s),
    }


def start_broker(
    procs: Processes,
    env: dict[str, str],
    *,
    name: str = "broker",
    extra: dict[str, str] | None = None,
) -> Child:
    """``keepa-fleet broker`` as a process; returns once it answers STATUS."""
    address = env["FLEET_BROKER"]
    child = procs.start(
        name,
        fleet_command("broker", "--bind", address, "--metrics-port", "0", "--drain-timeout", "1"),
        env={**env, **(extra or {})},
    )

    def answering() -> bool:
        if child.proc.poll() is not None:
            raise BenchError(f"broker exited; log:\n{child.log_tail()}")
        return broker_status(address, timeout_s=1.0) is not None

    wait_until(answering, START_TIMEOUT_S, "the broker to answer STATUS", interval_s=0.2)
    return child


def start_sim_and_broker(
    procs: Processes,
    *,
    refill_rate: int,
    refill_period_s: float,
    key_prefix: str,
    extra: dict[str, str] | None = None,
) -> tuple[str, Child]:
    """A simulator without latency and a broker on a fresh account of it (a random key
    starting with ``key_prefix``): the broker's address and process."""
    sim = start_sim(
        procs, refill_rate=refill_rate, refill_period_s=refill_period_s, latency_scale=0
    )
    key = key_prefix + uuid.uuid4().hex[:12]
    address = f"tcp://127.0.0.1:{free_port()}"
    broker = start_broker(procs, broker_env(address, sim.url, key, refill_period_s), extra=extra)
    return address, broker


def broker_status(address: str, timeout_s: float = 3.0) -> dict[str, Any] | None:
    """The broker's live state (one STATUS request), or None when it does not answer."""
    import zmq

    from common import protocol

    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(address)
        sock.send(protocol.Status().encode())
        if not sock.poll(int(timeout_s * 1000)):
            return None
        msg = protocol.decode(sock.recv(), max_bytes=protocol.MAX_REPLY_BYTES)
        return msg.state if isinstance(msg, protocol.StatusReply) else None
    finally:
        sock.close(linger=0)


# --- /proc readings ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        data = fh.read()
    rest = data[data.rfind(b")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK  # fields 14 and 15 overall


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as fh:
        return int(fh.read().split()[1]) * PAGE_BYTES


# --- statistics and tables --------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100.0 * len(ordered) - 1e-9)))
    return float(ordered[rank - 1])


@dataclasses.dataclass
class Figure:
    """One figure measured over repeats: its median and spread (min-max)."""

    values: list[float]

    @property
    def measured(self) -> list[float]:
        """The values that are not NaN (a repeat that did not measure this figure)."""
        return [v for v in self.values if v == v]

    @property
    def median(self) -> float:
        vals = self.measured
        return float(statistics.median(vals)) if vals else float("nan")

    @property
    def low(self) -> float:
        return min(self.measured, default=float("nan"))

    @property
    def high(self) -> float:
        return max(self.measured, default=float("nan"))

    def fmt(self, spec: str = ".1f", unit: str = "") -> str:
        if self.median != self.median:
            return "n/a"
        text = f"{self.median:{spec}}{unit}"
        if len(self.values) > 1 and self.low != self.high:
            text += f" ({self.low:{spec}}–{self.high:{spec}})"
        return text


def figures(runs: Sequence[dict[str, Any]], key: str) -> Figure:
    return Figure([float(r[key]) if r.get(key) is not None else float("nan") for r in runs])


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def verdict(met: bool | None) -> str:
    if met is None:
        return "not measured"
    return "met" if met else "**missed**"


# --- the machine ------------------------------------------------------------------------


def machine() -> dict[str, str]:
    import zmq

    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info = {
        "cores": str(os.cpu_count()),
        "cpu": model or platform.processor() or "unknown",
        "memory": _mem_total(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "pyzmq": f"{zmq.__version__} (libzmq {zmq.zmq_version()})",
    }
    try:
        from importlib.metadata import version

        info["keepa (peer)"] = version("keepa")
        info["requests"] = version("requests")
    except Exception:
        info["keepa (peer)"] = "not installed"
    info["load average at start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return info


def _mem_total() -> str:
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown"


@contextlib.contextmanager
def owned_processes(log_dir: Path) -> Iterator[Processes]:
    procs = Processes(log_dir)
    try:
        yield procs
    finally:
        procs.stop_all()


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def gather(
    children: Sequence[Child],
    deadline: float,
    on_line: Callable[[int, str], None] | None = None,
    until: Callable[[list[dict[str, Any] | None]], bool] | None = None,
) -> list[dict[str, Any] | None]:
    """Read every child's lines until each printed ``RESULT``, ``deadline`` (monotonic)
    passed or ``until(results so far)`` says so. ``on_line(index, line)`` sees the other
    lines (``PROGRESS ...``). A child with no RESULT by then, or that exited without one,
    gets None."""
    results: list[dict[str, Any] | None] = [None] * len(children)
    pending = {c.proc.stdout.fileno(): i for i, c in enumerate(children) if c.proc.stdout}

    def drain(i: int) -> bool:
        """Handle the complete lines buffered for child i; True once its RESULT came."""
        c = children[i]
        while b"\n" in c._buf:
            line, c._buf = c._buf.split(b"\n", 1)
            text = line.decode(errors="replace").strip()
            if text.startswith("RESULT"):
                results[i] = json.loads(text[len("RESULT") :])
                return True
            if on_line is not None:
                on_line(i, text)
        return False

    for fd, i in list(pending.items()):
        if drain(i):
            del pending[fd]
    while pending and time.monotonic() < deadline:
        if until is not None and until(results):
            break
        remaining = max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select(list(pending), [], [], min(remaining, 0.5))
        for fd in ready:
            i = pending[fd]
            chunk = os.read(fd, 65536)
            children[i]._buf += chunk
            if drain(i) or not chunk:
                del pending[fd]
    return results
