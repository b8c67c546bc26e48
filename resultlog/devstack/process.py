"""Processes of the local stack: starting them detached, knowing them again, stopping them.

A pid file alone is not proof that a process is ours: pids are reused. A process
counts as ours only if it is alive *and* its working directory is the state directory
the service was started in (Redis and PostgreSQL ``chdir`` there themselves, Kafka is
started there). Anything else is foreign and is never signalled.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from resultlog.errors import DevStackError
from resultlog.redaction import redact_text

LOG_TAIL_LINES = 30

Out = Callable[[str], None]


# -- logs ---------------------------------------------------------------------------


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read()
    except (FileNotFoundError, PermissionError):
        return ""
    text = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:]) if lines > 0 else ""


def with_tail(message: str, log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """``message`` followed by the tail of a log, indented, for an error."""
    text = tail(log_path, lines)
    if not text:
        return f"{message}\n(log {log_path} is empty or missing)"
    body = "\n".join("    " + line for line in text.splitlines())
    return f"{message}\nlast lines of {log_path}:\n{body}"


def rotate(log_path: Path) -> None:
    """Keep one previous log (``.1``) so that every start begins a fresh file."""
    if log_path.exists():
        os.replace(log_path, log_path.with_name(log_path.name + ".1"))


# -- pids -----------------------------------------------------------------------------


def read_pid(pid_file: Path) -> int | None:
    """The pid on the first line of a pid file, or None."""
    try:
        first = pid_file.read_text().split("\n", 1)[0].strip()
    except (FileNotFoundError, PermissionError):
        return None
    return int(first) if first.isdigit() else None


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    # The state is the first field after the parenthesised command name.
    if stat.rpartition(")")[2].split()[0] not in ("Z", "X"):
        return True
    # A thread-group leader shows Z as soon as its own thread has exited, but the
    # process (its files, listening sockets among them) lives until its last thread
    # has: a killed redis-server's port could still be bound. Exited threads other
    # than the leader leave /proc at once, so any still listed is still running.
    try:
        return any(task != str(pid) for task in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return False


def owned_pid(pid_file: Path, home: Path) -> int | None:
    """The pid in ``pid_file`` if that process is alive and works in ``home``."""
    pid = read_pid(pid_file)
    if pid is None or not pid_alive(pid):
        return None
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    return pid if cwd == home.resolve() else None


def describe_pid(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"pid {pid}"
    cmd = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    if len(cmd) > 100:
        cmd = cmd[:97] + "..."
    return f"pid {pid} ({cmd})" if cmd else f"pid {pid}"


# -- ports ----------------------------------------------------------------------------


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if something is bound to ``host:port`` (or to the wildcard address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like the servers themselves: a port in TIME_WAIT is free to listen on.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it): for a server about to start, or
    a client that must find nobody there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_owner(port: int) -> str | None:
    """Best effort: which process listens on a TCP port, read from /proc."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local_address is HEX_IP:HEX_PORT; state 0A is LISTEN.
            if len(fields) > 9 and fields[3] == "0A":
                if int(fields[1].rpartition(":")[2], 16) == port:
                    inodes.add(fields[9])
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in targets:
                    return describe_pid(int(proc.name))
        except OSError:
            continue
    return None


async def port_open(port: int, host: str = "127.0.0.1", timeout_s: float = 1.0) -> bool:
    """True if a TCP connection to ``host:port`` succeeds."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True


# -- running commands -----------------------------------------------------------------


def as_user(argv: Sequence[str], user: str | None) -> list[str]:
    """``argv`` run as ``user`` (only when we are root and it is another user)."""
    if user is None or os.geteuid() != 0:
        return list(argv)
    return ["runuser", "-u", user, "--", *argv]


def run_logged(
    argv: Sequence[str],
    *,
    log_path: Path,
    what: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    timeout_s: float = 900.0,
    secrets: Sequence[str] = (),
) -> None:
    """Run a command to completion, appending its output to ``log_path``.

    ``on_line`` sees every output line (for progress reports). A non-zero exit, or
    running longer than ``timeout_s``, is a DevStackError with the log's tail.
    ``secrets`` (passwords among the arguments) are masked in the logged command line.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"$ {redact_text(' '.join(argv), list(secrets))}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=None if env is None else dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            raise DevStackError(f"{what}: cannot run {argv[0]}: {exc}") from exc
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                log.write(raw)
                if on_line is not None:
                    on_line(raw.decode(errors="replace").rstrip("\n"))
            code = proc.wait()
        finally:
            timer.cancel()
            if proc.stdout is not None:
                proc.stdout.close()
    if code != 0:
        raise DevStackError(with_tail(f"{what} failed (exit code {code})", log_path))


def spawn_detached(
    argv: Sequence[str],
    *,
    cwd: Path,
    log_path: Path,
) -> int:
    """Start ``argv`` in a new session, not a child of this process; return its pid.

    A small shell starts it in the background and exits, so the service is adopted by
    init: it outlives this process, is never left as our zombie, and Ctrl-C in the
    terminal that ran ``resultlog dev up`` does not reach it. ``setsid`` executes the
    program in place (the background job is not a process-group leader), so ``$!`` is
    the service's own pid. Output goes to ``log_path``.
    """
    launcher = 'log=$1; shift; setsid "$@" >>"$log" 2>&1 </dev/null & echo $!'
    try:
        done = subprocess.run(
            ["sh", "-c", launcher, "sh", str(log_path), *argv],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise DevStackError(f"cannot start {argv[0]}: {exc}") from exc
    return int(done.stdout.strip())


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> bool:
    """Signal a process and wait for it to exit; SIGKILL it after ``timeout_s``.

    Returns False if it had to be killed.
    """
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return False


def group_members(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` (zombies included), read from /proc."""
    members = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        # After the parenthesised command name: state, ppid, pgrp, ...
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 2 and fields[2] == str(pgid):
            members.append(int(proc.name))
    return members


def kill_group(pid: int, *, what: str, reaped: bool = False, timeout_s: float = 30.0) -> None:
    """SIGKILL ``pid`` and every process of the group it leads; wait until all are dead.

    With ``reaped``, wait until they are reaped too (gone from /proc), which can take
    init a while (about 2 s on this machine).

    Each service of the stack leads a process group of its own (``spawn_detached``
    and ``pg_ctl`` start it with ``setsid``), so the group is the whole server: a
    PostgreSQL postmaster with its backends, a JVM, a redis-server. Killing them at once
    is what a crash of the server does; killing only a postmaster would leave backends
    holding its shared memory, and a restart would refuse to start until they noticed.
    """
    try:
        leads_group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return
    try:
        if leads_group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    def remaining() -> list[int]:
        members = group_members(pid) if leads_group else [pid]
        if reaped:
            return [m for m in members if Path(f"/proc/{m}").exists()]
        return [m for m in members if pid_alive(m)]

    deadline = time.monotonic() + timeout_s
    while left := remaining():
        if time.monotonic() > deadline:
            state = "dead but not reaped by init" if reaped else "alive"
            raise DevStackError(
                f"{what}: processes {left} still {state} {timeout_s:.0f} s after SIGKILL"
            )
        time.sleep(0.02)


async def wait_until_ready(
    probe: Callable[[], Awaitable[bool]],
    *,
    alive: Callable[[], bool],
    what: str,
    log_path: Path,
    timeout_s: float,
) -> None:
    """Poll ``probe`` until it is true; fail early (with the log) if ``alive`` is not."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        if await probe():
            return
        if not alive():
            # One more try: the process may have handed over (pg_ctl) just now.
            await asyncio.sleep(0.2)
            if await probe():
                return
            if not alive():
                raise DevStackError(with_tail(f"{what} exited while starting", log_path))
        if time.monotonic() > deadline:
            raise DevStackError(
                with_tail(f"{what} did not answer within {timeout_s:.0f} s", log_path)
            )
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)
