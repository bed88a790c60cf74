"""The fork server behind `run-notebooks`' kernels on Linux (`kernels.py` starts and talks to it). Run as a script,
never imported: it loads the third-party modules every notebook imports (torch, timm, albumentations, pyplot,
seaborn, grad-cam, IPython: 3-4 s of a core), then waits. For each kernel it is asked for, it forks: the child
becomes the kernel (`python -m ipykernel_launcher -f CONNECTION_FILE` as the kernelspec says) with those modules
already in memory, in its own session, with the environment, folder and output files it was sent. Nothing of the
project (helpers) is imported here, so a kernel imports helpers as they are when it starts, and reads its
HELPERS_* settings itself. It reports each child's exit, and ends when the socket to its starter closes.

Protocol (a SOCK_SEQPACKET socket, its file descriptor the first argument): a request is JSON {"argv", "env",
"cwd", "path"} with two file descriptors (the kernel's stdout and stderr); the reply {"pid"} (or {"error"} when
fork() failed); later {"exit": pid, "code": returncode, "cpu": seconds}.
"""

import json
import os
import select
import signal
import socket
import sys
import traceback

MODULES = ("torch", "torchvision", "timm", "albumentations", "numpy", "pandas", "PIL.Image", "yaml", "tqdm",
           "matplotlib.pyplot", "seaborn", "pytorch_grad_cam", "IPython", "ipykernel.ipkernel")


def _load() -> None:
    # as ipykernel does before a notebook imports pyplot: figures are drawn inline
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    for name in MODULES:
        try:
            __import__(name)
        except Exception as exc:  # a module that cannot load here is loaded (or fails) in the kernel, as without us
            print(f"zygote: {name} not preloaded: {exc}", file=sys.stderr, flush=True)


def _child(request: dict, out: int, err: int, sock: socket.socket, wake: tuple[int, int], base: list[str]) -> None:
    """Become the kernel the request describes; never returns."""
    code = 1
    try:
        os.setsid()  # its own process group, as jupyter_client's launcher gives a kernel: interrupts reach only it
        signal.set_wakeup_fd(-1)
        # as a new Python has them: SIGINT raises KeyboardInterrupt, SIGPIPE is ignored (BrokenPipeError)
        for signum, handler in ((signal.SIGCHLD, signal.SIG_DFL), (signal.SIGTERM, signal.SIG_DFL),
                                (signal.SIGINT, signal.default_int_handler), (signal.SIGPIPE, signal.SIG_IGN)):
            signal.signal(signum, handler)
        sock.close()
        os.close(wake[0])
        os.close(wake[1])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        for fd in (null, out, err):
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ["JPY_PARENT_PID"] = str(os.getppid())  # the kernel ends when this server ends
        # sys.path as `python -m` in `cwd` with the request's PYTHONPATH would have built it
        sys.path[:] = [os.getcwd()] + request["path"] + base
        if "numpy" in sys.modules:  # its global generator was seeded once, in the server: each kernel its own
            sys.modules["numpy"].random.seed()
        sys.argv = list(request["argv"])
        import runpy

        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            import atexit

            atexit._run_exitfuncs()  # what a kernel's own interpreter runs at exit (history, temporary folders)
        except BaseException:
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _reap(sock: socket.socket) -> None:
    """Report each kernel that ended: its exit code and the CPU seconds it used (its starter is not its parent,
    so its own accounting of children's CPU does not see them)."""
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.send(json.dumps({"exit": pid, "code": os.waitstatus_to_exitcode(status),
                              "cpu": usage.ru_utime + usage.ru_stime}).encode())


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    # sys.path without the current folder and PYTHONPATH: each kernel's own go before it
    own = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    base = [p for p in sys.path[1:] if p not in own]
    _load()
    wake = os.pipe()
    os.set_blocking(wake[0], False)
    os.set_blocking(wake[1], False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the starter decides; its socket closing ends this server
    sock.send(b'{"ready": true}')
    while True:
        try:
            readable, _, _ = select.select([sock, wake[0]], [], [])
        except InterruptedError:
            continue
        if wake[0] in readable:
            while True:
                try:
                    if not os.read(wake[0], 512):
                        break
                except BlockingIOError:
                    break
            _reap(sock)
        if sock in readable:
            data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 2)
            if not data:
                return
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                pid = os.fork()
            except OSError as exc:  # no memory or process left for it: the starter launches this kernel itself
                reply = {"error": f"fork() failed: {exc}"}
            else:
                if pid == 0:
                    _child(json.loads(data), fds[0], fds[1], sock, wake, base)
                reply = {"pid": pid}
            for fd in fds:
                os.close(fd)
            sock.send(json.dumps(reply).encode())
            _reap(sock)


if __name__ == "__main__":
    main()
