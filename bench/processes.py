"""The benchmark's child processes: starting them pinned to a CPU, reading their CPU time and RSS, ending them.

Every child is registered with a `ProcessSupervisor`, which ends them all on the way out (normal
exit, exception or Ctrl-C), and each child also gets SIGTERM from the kernel if the harness dies
without cleaning up (PR_SET_PDEATHSIG), so no server outlives a killed benchmark.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

BASE_DIR = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class Pinning:
    """Which CPU the server under test runs on, and which the upstream and load generator share."""

    server_cpu: int | None
    harness_cpu: int | None
    # Every CPU the benchmark may use (the two-process comparison unpins the harness onto all of them).
    all_cpus: tuple[int, ...] = ()

    @property
    def active(self) -> bool:
        return self.server_cpu is not None

    def describe(self) -> str:
        if not self.active:
            return "no CPU pinning (taskset missing or fewer than 2 CPUs): processes float across CPUs"
        return (
            f"taskset: proxy server pinned to CPU {self.server_cpu}; "
            f"fake upstream and load generator pinned to CPU {self.harness_cpu}"
        )

    def prefix(self, cpu: int | None) -> list[str]:
        return ["taskset", "-c", str(cpu)] if self.active and cpu is not None else []


def plan_pinning(enabled: bool = True) -> Pinning:
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or len(cpus) < 2 or shutil.which("taskset") is None:
        return Pinning(None, None)
    return Pinning(cpus[0], cpus[1], tuple(cpus))


def pin_this_process(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def set_process_cpus(pid: int, cpus: set[int]) -> None:
    """Move every thread of a running process onto `cpus` (`sched_setaffinity` moves one thread;
    threads created later inherit their creator's CPUs). The harness's own threads when `pid` is ours."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
            os.sched_setaffinity(int(task.name), cpus)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    # After the command name: state is field 3, utime field 14, stime field 15 (proc(5)).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def busy_seconds_per_cpu() -> dict[int, float]:
    """Non-idle time of each CPU so far (user, nice, system, irq, softirq, steal), from /proc/stat."""
    busy = {}
    with open("/proc/stat", "rb") as stat:
        for line in stat:
            if line.startswith(b"cpu") and line[3:4].isdigit():
                name, user, nice, system, _idle, _iowait, irq, softirq, steal, *_ = line.split()
                ticks = int(user) + int(nice) + int(system) + int(irq) + int(softirq) + int(steal)
                busy[int(name[3:])] = ticks / CLOCK_TICKS
    return busy


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE


def machine_description() -> dict[str, str | int]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cpus_online": os.cpu_count() or 0,
        "cpus_available": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_at_start": " ".join(f"{value:.2f}" for value in os.getloadavg()),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ProcessSupervisor:
    """Starts child processes and guarantees they are ended, in reverse order, on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._processes: list[subprocess.Popen] = []
        self._logs: list = []

    def __enter__(self) -> Self:
        # Turn SIGTERM into an exception so `with` blocks unwind and the children are ended.
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for process in reversed(self._processes):
            self.stop(process)
        for log in self._logs:
            log.close()

    def start(
        self,
        name: str,
        command: list[str],
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
    ) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("ab")
        self._logs.append(log)
        process = subprocess.Popen(
            command,
            cwd=BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else log,
            stderr=log,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - children start before any thread does
        )
        self._processes.append(process)
        return process

    def stop(self, process: subprocess.Popen, timeout: float = 5.0) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if process.stdout is not None:
            process.stdout.close()
        if process in self._processes:
            self._processes.remove(process)

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def read_announced_port(process: subprocess.Popen, timeout: float = 15.0) -> tuple[int, str]:
    """The port a child prints as its first line (`PORT <n> ...`), waiting at most `timeout` seconds."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"child {process.args} did not announce its port within {timeout:g} s")
    line = process.stdout.readline().decode().strip()
    if not line.startswith("PORT "):
        raise RuntimeError(f"child {process.args} said {line!r} instead of its port (exit code {process.poll()})")
    _, port, *rest = line.split()
    return int(port), " ".join(rest)


def wait_until_listening(process: subprocess.Popen, port: int, log_path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited early:\n{log_path.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout:g} s:\n{log_path.read_text()[-3000:]}")


def python_command(*arguments: str) -> list[str]:
    return [sys.executable, *arguments]
