"""What the machine and a process are doing, read from /proc; free loopback ports.

Thresholds that depend on the machine's size are written as fractions of
``CORES`` here or where they are used, never as a fixed core count.
"""

from __future__ import annotations

import datetime as dt
import os
import resource
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORES = os.cpu_count() or 1
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process, all its threads."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid: int) -> dict[str, int]:
    """The numeric fields of /proc/PID/status (VmRSS, VmHWM in kB; Threads); empty once it exited."""
    out: dict[str, int] = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        key, _, rest = line.partition(":")
        words = rest.split()
        if words and words[0].isdigit():
            out[key] = int(words[0])
    return out


def vm_kb(pid: int, key: str) -> int | None:
    return proc_status(pid).get(key)


def open_fds(pid: int) -> tuple[int, int]:
    """(open file descriptors, of which sockets) of a process."""
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return 0, 0
    sockets = 0
    for name in names:
        try:
            sockets += os.readlink(f"{base}/{name}").startswith("socket:")
        except OSError:
            pass  # closed between listdir and readlink
    return len(names), sockets


def disk_usage(path: Path) -> dict[str, int]:
    """Bytes allocated on disk (like ``du``) under ``path``, as {"": total, entry: its share} for every
    top-level entry and every folder two levels down ("feedback", "feedback/images")."""
    usage = {"": 0}
    for folder, _, files in os.walk(path):
        parts = [] if folder == str(path) else os.path.relpath(folder, path).split(os.sep)
        for name in files:
            try:
                size = os.lstat(os.path.join(folder, name)).st_blocks * 512
            except OSError:
                continue  # deleted meanwhile
            usage[""] += size
            for key in ["/".join(parts[:depth]) for depth in (1, 2) if len(parts) >= depth] or [name]:
                usage[key] = usage.get(key, 0) + size
    return usage


def sys_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(x) for x in parts]
    idle = vals[3] + vals[4]  # idle + iowait
    total = sum(vals[:8])  # guest time is already in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wait_idle(max_wait: float, threshold: float = 0.175 * CORES) -> float:
    """Wait (at most max_wait s) until other work uses < threshold cores; return what it used."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, _ = sys_cpu()
        t0 = time.monotonic()
        time.sleep(2.0)
        b1, _ = sys_cpu()
        busy = (b1 - b0) / (time.monotonic() - t0)
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def int8_dot_product() -> str:
    """Which int8 dot-product instructions the CPU has: the figure int8's
    speed-up depends on (VNNI accumulates u8 x s8 in int32 in one step)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    found = [f for f in ("amx_int8", "avx512_vnni", "avx_vnni") if f in flags]
    return ", ".join(found) if found else "no VNNI"


def mem_gb() -> float:
    return round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)


def git_info() -> dict:
    """The commit under test, and whether src/ has uncommitted changes."""

    def run(*a: str) -> str:
        try:
            return subprocess.run(a, cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {"commit": run("git", "rev-parse", "--short", "HEAD"), "dirty": bool(run("git", "status", "--porcelain", "src"))}


def describe() -> dict:
    """When and on what a run happened, for its report: date, git, cpu, cores, mem_gb, int8_dot_product."""
    return {"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "git": git_info(), "cpu": cpu_model(), "cores": CORES,
            "mem_gb": mem_gb(), "int8_dot_product": int8_dot_product()}
