"""Kernels forked from a process that has already loaded torch (Linux): `run-notebooks` starts one kernel per
notebook, and each paid 3-4 s of a core to import torch, timm, pyplot and the rest before its first cell. Here a
fork server (`zygote.py`, started once, with the kernels' environment) loads them once and forks each kernel, which
then starts in a fraction of a second with those modules in memory. The kernel is otherwise the one its kernelspec
names: `python -m ipykernel_launcher -f CONNECTION_FILE`, its own session, the folder, environment and output
files `jupyter_client` would give it; it imports helpers itself, as it is at that moment.

`KernelManager` is jupyter_client's `AsyncKernelManager` with only the launch changed (the hook its docstring
offers); it launches as jupyter_client does where forking does not apply: not Linux (macOS forbids fork() after
its system frameworks are loaded, and torch loads them), a kernelspec that is not `python -m ipykernel_launcher`,
while the server still loads its modules (the first kernels of a process: nobody waits for it, so a run of one
small notebook costs no more than before), or after a server failed to start (logged once)."""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager

_logger = logging.getLogger(__name__)
SCRIPT = Path(__file__).with_name("zygote.py")
# Environment variables a fork server may differ in from the kernel it forks: it imports nothing that reads them
# (not helpers: HELPERS_*; jupyter_client's JPY_*; pytest's name of the running test, which changes with every
# test), and PYTHONPATH is applied to the kernel's sys.path. Any other difference starts a new server.
PER_KERNEL = ("HELPERS_", "JPY_", "PYTHONPATH", "PYTEST_CURRENT_TEST")


def can_fork(argv: list[str]) -> bool:
    """Whether a kernel with this kernelspec command can be forked: Linux, and `python [-X... options] -m
    ipykernel_launcher -f CONNECTION_FILE`, as `ipykernel install` writes it."""
    return (sys.platform == "linux" and len(argv) >= 5 and Path(argv[0]).name.startswith("python")
            and argv[-4:-1] == ["-m", "ipykernel_launcher", "-f"] and all(a.startswith("-X") for a in argv[1:-4]))


class _Refused(RuntimeError):
    """The server could not fork this kernel (it goes on serving)."""


class _Server:
    """A running fork server: its process, the socket to it, and the exits it reported."""

    def __init__(self, python: list[str], env: dict[str, str]):
        self.python, self.key = python, _key(env)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        environment = {k: v for k, v in env.items() if not k.startswith("JPY_")}
        code = f"import runpy; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
        self.process = subprocess.Popen([*python, "-c", code, str(theirs.fileno())], stdin=subprocess.DEVNULL,
                                        pass_fds=(theirs.fileno(),), env=environment, cwd="/",
                                        start_new_session=True)
        theirs.close()
        self.sock, self.exits, self.loaded = ours, {}, False

    def ready(self, timeout: float = 0) -> bool:
        """Whether the server has loaded its modules (waiting up to `timeout` s for it).

        Raises:
            RuntimeError: it ended before.
        """
        if not self.loaded:
            message = self._receive(timeout)
            if message and message.get("ready"):
                self.loaded = True
            elif (message and message.get("closed")) or self.process.poll() is not None:
                self.close()
                raise RuntimeError(f"the fork server did not start (exit code {self.process.poll()})")
        return self.loaded

    def _receive(self, timeout: float | None) -> dict | None:
        try:
            self.sock.settimeout(timeout)
            data = self.sock.recv(1 << 16)
        except OSError:  # nothing yet (a timeout), or the socket closed here
            return None
        return json.loads(data) if data else {"closed": True}

    def _drain(self, until_pid: bool = False, timeout: float = 60) -> int | None:
        """Read what the server sent (exits; with until_pid, up to the pid of the kernel just asked for)."""
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(max(0.0, deadline - time.monotonic()) if until_pid else 0)
            if message is None:
                if until_pid:
                    raise RuntimeError("the fork server did not answer")
                return None
            if message.get("closed"):
                self.process.poll()
                if until_pid:
                    raise RuntimeError("the fork server has ended")
                return None
            if message.get("ready"):
                self.loaded = True
            elif "exit" in message:
                global _finished_cpu
                self.exits[message["exit"]] = message["code"]
                _finished_cpu += message.get("cpu", 0.0)
            elif until_pid and "error" in message:
                raise _Refused(message["error"])
            elif until_pid and "pid" in message:
                self.exits.pop(message["pid"], None)  # an earlier kernel's exit under the same pid (pids wrap)
                return message["pid"]

    def fork(self, argv: list[str], env: dict[str, str], cwd: str, stdout: int, stderr: int) -> int:
        path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        request = {"argv": ["ipykernel_launcher"] + argv[-2:], "env": env, "cwd": cwd, "path": path}
        socket.send_fds(self.sock, [json.dumps(request).encode()], [stdout, stderr])
        return self._drain(until_pid=True)

    def returncode(self, pid: int) -> int | None:
        self._drain()
        if pid in self.exits:
            return self.exits[pid]
        if self.process.poll() is not None:  # the server is gone: its kernels end with it (their parent poller)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return -signal.SIGKILL
        return None

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        """End the server at once (it holds nothing to save; its kernels' parent pollers see it end)."""
        self.sock.close()
        self.process.kill()
        self.process.wait()


def _key(env: dict[str, str]) -> tuple:
    return tuple(sorted((k, v) for k, v in env.items() if not k.startswith(PER_KERNEL)))


_server: _Server | None = None
_failed: str | None = None  # why a fork server failed to start in this process (no second try)
_finished_cpu = 0.0  # CPU seconds of the forked kernels that ended (they are the servers' children, not ours)


def finished_cpu() -> float:
    """CPU seconds (user + system) used by the kernels forked for this process that have ended: what
    `resource.getrusage(RUSAGE_CHILDREN)` counts for the kernels it started itself."""
    return _finished_cpu


def server(python: list[str], env: dict[str, str]) -> _Server:
    """The fork server for kernels of `python` (the interpreter and its options) with this environment (apart
    from PER_KERNEL variables): the running one, or a new one, which loads its modules while the caller goes on
    (the old one, of another environment, is ended).

    Raises:
        RuntimeError: a fork server failed to start earlier in this process.
    """
    global _server
    if _failed:
        raise RuntimeError(_failed)
    if _server is not None and not _server.loaded and not _server.alive():
        _server.ready()  # raises: it ended before it had loaded its modules
    if _server is not None and (_server.python != python or _server.key != _key(env) or not _server.alive()):
        shut_down()
    if _server is None:
        _server = _Server(python, env)
    return _server


@atexit.register
def shut_down() -> None:
    """End the fork server (its kernels end with it); the next forked kernel starts a new one."""
    global _server
    if _server is not None:
        _server, old = None, _server
        old.close()


class _Forked:
    """The part of `subprocess.Popen` jupyter_client's LocalProvisioner uses, for a kernel the fork server started
    (its parent is the server, which reports its exit code)."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int, server: _Server):
        self.pid, self.server, self.returncode = pid, server, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.returncode(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"kernel {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkedLaunch:
    """The launch of a kernel manager class of jupyter_client (mixed in before it): on Linux the kernel is forked
    from the fork server (module docstring). `KernelManager` is AsyncKernelManager with it; JupyterLab's is
    jupyter_server's ServerKernelManager with it (`scripts/lab.py`)."""

    wait_for_server = 0.0  # seconds a launch waits for a server that is still loading (JupyterLab's: 30)

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        if not can_fork(kernel_cmd):
            return await super()._async_launch_kernel(kernel_cmd, **kw)
        global _failed
        env = dict(kw.get("env") or os.environ)
        try:
            forker = server(kernel_cmd[:-4], env)
            deadline = time.monotonic() + self.wait_for_server
            while not forker.ready() and time.monotonic() < deadline:  # without blocking the caller's event loop
                await asyncio.sleep(0.05)
            if not forker.ready():  # still loading (the first kernels of a process): started as jupyter does
                return await super()._async_launch_kernel(kernel_cmd, **kw)
            out, err = kw.get("stdout"), kw.get("stderr")
            pid = forker.fork(kernel_cmd, env, str(kw.get("cwd") or os.getcwd()),
                              _fd(out, 1), _fd(err, 2))
        except (_Refused, ValueError) as exc:  # this kernel only: the server and its other kernels go on
            _logger.warning("kernel started without the fork server: %s", exc)
            return await super()._async_launch_kernel(kernel_cmd, **kw)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            if not _failed:
                _logger.warning("kernels start without the fork server: %s", exc)
            _failed = _failed or str(exc)
            shut_down()
            return await super()._async_launch_kernel(kernel_cmd, **kw)
        provisioner = self.provisioner
        provisioner.process = _Forked(pid, forker)
        provisioner.pid = provisioner.pgid = pid  # the kernel made itself a session leader
        provisioner.cwd = kw.get("cwd") or os.getcwd()
        self._reconcile_connection_info(provisioner.connection_info)


class KernelManager(ForkedLaunch, AsyncKernelManager):
    """jupyter_client's kernel manager; on Linux its kernel is forked from the fork server (module docstring)."""


def prestart(kernel_cmd: list[str], env: dict[str, str]) -> None:
    """Start the fork server for kernels of this kernelspec command and environment now, so that the first kernel
    is forked too (JupyterLab: the server loads while the page opens). Nothing where kernels are not forked."""
    if can_fork(kernel_cmd) and not _failed:
        server(kernel_cmd[:-4], env)


def _fd(stream: Any, default: int) -> int:
    """The file descriptor a Popen-style stream argument names (None: this process's own)."""
    if stream is None:
        return default
    fd = stream if isinstance(stream, int) else stream.fileno()
    if fd < 0:  # subprocess.PIPE or DEVNULL: streams only Popen makes
        raise ValueError("a kernel whose output goes to a pipe Popen makes is started by Popen")
    return fd
