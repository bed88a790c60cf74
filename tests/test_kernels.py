"""Kernels forked from the fork server (`helpers/course/kernels.py`, `zygote.py`): the same kernel jupyter_client
starts (folder, environment, sys.path, own session, output files, interrupts, exit), with torch already loaded;
the server ends with the process that started it, also when that process is killed, and its kernels with it;
where forking does not apply, the kernel is started as jupyter_client starts it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync

from helpers.course import kernels

ROOT = Path(__file__).resolve().parents[1]
LOOK = ("import os, sys, json, signal; print(json.dumps({'cwd': os.getcwd(), 'path': sys.path, "
        "'env': dict(os.environ), 'pid': os.getpid(), 'ppid': os.getppid(), 'pgid': os.getpgid(0), "
        "'draw': __import__('numpy').random.random(), 'signals': [str(signal.getsignal(s)) for s in "
        "(signal.SIGINT, signal.SIGPIPE, signal.SIGTERM, signal.SIGCHLD)], "
        "'loaded': sorted(m for m in ('torch', 'timm', 'helpers') if m in sys.modules)})); "
        "print('written to stderr', file=sys.__stderr__, flush=True)")


def _server_ready(env: dict) -> None:
    """Start the fork server for these kernels, if none runs, and wait until it has loaded its modules (a kernel
    asked for before that starts as jupyter_client starts it)."""
    from jupyter_client.kernelspec import KernelSpecManager

    argv = KernelSpecManager().get_kernel_spec("food101").argv
    assert kernels.server(argv[:-4], env).ready(timeout=120)


def _start(cls, folder: Path, log: Path, env: dict):
    km = cls(kernel_name="food101")
    with open(log, "w") as stderr:
        run_sync(km.start_kernel)(cwd=str(folder), env=env, stderr=stderr)
    kc = km.blocking_client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc


def _run(kc, code: str, timeout: float = 60) -> tuple[str, dict]:
    out = []
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=lambda m: m["msg_type"] == "stream" and
                                   out.append(m["content"]["text"]))
    return "".join(out), reply["content"]


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():  # ended and reaped: no zombie left either
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(sys.platform != "linux", reason="kernels are forked on Linux only")
def test_a_forked_kernel_is_the_kernel_jupyter_starts_with_torch_loaded(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "mine.py").write_text("ANSWER = 42\n")
    folder = tmp_path / "here"
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": str(project), "HELPERS_COURSE_DIR": str(tmp_path / "course")}
    env.pop("MPLBACKEND", None)
    seen, managers = {}, {}
    _server_ready(env)
    for name, cls in (("plain", AsyncKernelManager), ("forked", kernels.KernelManager),
                      ("forked again", kernels.KernelManager)):
        km, kc = _start(cls, folder, tmp_path / f"{name}.log", env)
        managers[name] = (km, kc)
        text, _ = _run(kc, LOOK)
        seen[name] = json.loads(text)
        assert _run(kc, "import mine; print(mine.ANSWER)")[0] == "42\n"  # the kernel's PYTHONPATH
        assert "written to stderr" in (tmp_path / f"{name}.log").read_text()
    plain, forked = seen["plain"], seen["forked"]
    assert forked["signals"] == plain["signals"]  # SIGPIPE ignored, SIGINT a KeyboardInterrupt, as in a new Python
    assert len({s.pop("draw") for s in seen.values()}) == 3  # numpy's generator seeded in each kernel, not shared
    assert plain["loaded"] == [] and forked["loaded"] == ["timm", "torch"]  # helpers: imported by the notebook
    assert forked["path"] == plain["path"] and forked["cwd"] == plain["cwd"] == str(folder)
    server = kernels._server.process.pid
    assert plain["ppid"] == os.getpid() and forked["ppid"] == server
    assert forked["env"].pop("JPY_PARENT_PID") == str(server)  # it ends when its server ends
    plain["env"].pop("JPY_PARENT_PID")
    assert forked["env"] == plain["env"]
    assert forked["pgid"] == forked["pid"] and plain["pgid"] == plain["pid"]  # its own session, as launched

    km, kc = managers["forked"]
    cpu = kernels.finished_cpu()
    _run(kc, "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass")
    kc.execute("import time; time.sleep(60)")
    time.sleep(0.5)
    run_sync(km.interrupt_kernel)()
    assert kc.get_shell_msg(timeout=10)["content"]["ename"] == "KeyboardInterrupt"
    for km, kc in managers.values():
        kc.stop_channels()
        run_sync(km.shutdown_kernel)(now=True)
        assert not run_sync(km.is_alive)()
    assert _gone(forked["pid"], 5) and _gone(plain["pid"], 5)
    assert kernels.finished_cpu() - cpu > 0.5  # its CPU, counted when it ended (run-notebooks' CPU column)
    assert kernels._server.alive()  # it serves the next kernel (the next test: it ends with its starter)


@pytest.mark.skipif(sys.platform != "linux", reason="kernels are forked on Linux only")
def test_killing_the_process_that_started_the_server_ends_the_server_and_its_kernels(tmp_path):
    script = tmp_path / "starter.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from jupyter_core.utils import run_sync
        from jupyter_client.kernelspec import KernelSpecManager
        from helpers.course import kernels
        argv = KernelSpecManager().get_kernel_spec("food101").argv
        assert kernels.server(argv[:-4], dict(os.environ)).ready(timeout=120)
        km = kernels.KernelManager(kernel_name="food101")
        run_sync(km.start_kernel)(cwd={str(tmp_path)!r})
        print(json.dumps({{"server": kernels._server.process.pid, "kernel": km.provisioner.pid}}), flush=True)
        time.sleep(600)
    """))
    starter = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(starter.stdout.readline())
        assert Path(f"/proc/{pids['kernel']}").exists()
    finally:
        starter.send_signal(signal.SIGKILL)
        starter.wait()
    assert _gone(pids["server"], 5) and _gone(pids["kernel"], 5)


def test_kernels_are_forked_only_where_it_applies_and_otherwise_started_as_jupyter_does(tmp_path, monkeypatch, caplog):
    python = sys.executable
    assert kernels.can_fork([python, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}"]) \
        == (sys.platform == "linux")
    assert not kernels.can_fork([python, "-m", "other_kernel", "-f", "{connection_file}"])
    assert not kernels.can_fork(["/usr/bin/R", "--slave", "-m", "ipykernel_launcher", "-f", "{connection_file}"])
    # one server for kernels whose environments differ only in what it never reads (PER_KERNEL)
    env = {"LANG": "C", "HELPERS_COURSE_DIR": "/a", "PYTHONPATH": "/p", "PYTEST_CURRENT_TEST": "t1",
           "JPY_PARENT_PID": "1"}
    assert kernels._key(env) == kernels._key({"LANG": "C", "HELPERS_COURSE_DIR": "/b", "PYTEST_CURRENT_TEST": "t2"})
    assert kernels._key(env) != kernels._key({**env, "LANG": "de_DE.UTF-8"})
    monkeypatch.setattr(sys, "platform", "darwin")  # macOS: no fork() after torch loaded its system frameworks
    assert not kernels.can_fork([python, "-m", "ipykernel_launcher", "-f", "{connection_file}"])
    monkeypatch.undo()
    if sys.platform != "linux":
        return
    broken = tmp_path / "zygote.py"
    broken.write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(kernels, "SCRIPT", broken)
    monkeypatch.setattr(kernels, "_server", None)  # a server started now (the running one is back after the test)
    monkeypatch.setattr(kernels, "_failed", None)
    started = []
    try:
        for i in range(3):  # while it loads, when it has failed, and after
            km, kc = _start(kernels.KernelManager, tmp_path, tmp_path / f"k{i}.log", dict(os.environ))
            started.append((km, kc))
            assert isinstance(km.provisioner.process, subprocess.Popen)  # jupyter_client's own launch
            if i == 0:
                assert kernels._server is not None and kernels._server.process.wait(timeout=30) == 3
        assert json.loads(_run(kc, LOOK)[0])["ppid"] == os.getpid()
        warning = "kernels start without the fork server: the fork server did not start (exit code 3)"
        assert caplog.text.count(warning) == 1
        assert kernels._server is None  # not tried again
    finally:
        for km, kc in started:
            kc.stop_channels()
            run_sync(km.shutdown_kernel)(now=True)
