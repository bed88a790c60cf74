"""JupyterLab for the course, and the git side of its notebooks (`make lab` runs this).

    python scripts/lab.py [JUPYTERLAB ARGS]    # JupyterLab on this environment and the project, on notebooks/
    python scripts/lab.py smudge < stored.ipynb > working.ipynb      # git's smudge filter (make git-filter)
    python scripts/lab.py smudge-files notebooks/*.ipynb             # the same, in place, for checked-out files
    python scripts/lab.py strip --keep-id < working.ipynb            # git's clean filter: nbstripout (make git-filter)

Notebooks are committed without outputs: nbstripout, as the clean filter of .gitattributes, strips outputs and the
kernel's `language_info` fields (they differ between machines) from what git stores and compares. Two things
remain for a notebook to open and run in JupyterLab without git or JupyterLab seeing a change, and this file does
both:

- JupyterLab writes the kernel's `language_info` (with its Python version, e.g. 3.11.7) into a notebook as soon as
  the kernel starts, and marks the notebook changed when that differs from the file. The smudge filter writes this
  environment's on checkout (and on start, for notebooks checked out before the filter was set up).
- `git status` takes a file whose size changed for modified without filtering it, so a notebook saved with outputs
  is listed even though its filtered content is what git has. After each save, JupyterLab calls `post_save`, which
  re-stages a notebook whose filtered content equals the staged one: only git's cached file size and time change.

On Linux JupyterLab's kernels are forked from a process that has loaded torch and the course's other libraries
(`helpers/course/kernels.py`, as run-notebooks' kernels are): a kernel starts, or restarts, in half a second instead
of four. That process starts with JupyterLab and lives as long as it does (about 1 GB, shared with the kernels).

It imports no part of `helpers` as a package (that would load torch into every filter run and into the server);
`kernels.py`, which needs only jupyter_client, is loaded from its file.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

# jsonschema (under nbformat) imports rfc3987_syntax, which compiles an Earley grammar at import: 0.85 s of every git
# filter run and of JupyterLab's start, for the "iri" string format only, which no notebook schema uses (jsonschema
# issue 1428). None makes that import fail, which jsonschema skips (helpers/__init__.py does the same).
sys.modules.setdefault("rfc3987_syntax", None)

_logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
# Given to JupyterLab by `main`: the post-save hook, found on sys.path as this file's module.
SERVER_ARGS = (f"--ContentsManager.post_save_hook={Path(__file__).stem}.post_save",)
# ... and on Linux the kernel manager that forks kernels (`ForkedServerKernelManager`, made on first use).
FORKED_ARGS = (f"--MappingKernelManager.kernel_manager_class={Path(__file__).stem}.ForkedServerKernelManager",)
KERNEL_NAME = "food101"  # the project's kernel (Makefile: KERNEL_NAME); its fork server starts with JupyterLab


def _kernels():
    """helpers/course/kernels.py, loaded once from its file (importing `helpers` would load torch here)."""
    name = "food101_kernels"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "helpers" / "course" / "kernels.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def __getattr__(name: str):
    """`ForkedServerKernelManager`: jupyter_server's kernel manager with the forked launch (made when JupyterLab
    asks for it, so that the git filters, which import this file too, never import jupyter_server)."""
    if name == "ForkedServerKernelManager":
        from jupyter_server.services.kernels.kernelmanager import ServerKernelManager

        forked = _kernels().ForkedLaunch

        async def launch(self, kernel_cmd: list[str], **kw) -> None:
            # only the project's kernel: the fork server serves one interpreter and environment, and a kernel of
            # another (a kernelspec of another Python) would replace it, ending the kernels it forked
            if self.kernel_name != KERNEL_NAME:
                return await ServerKernelManager._async_launch_kernel(self, kernel_cmd, **kw)
            return await forked._async_launch_kernel(self, kernel_cmd, **kw)

        # a notebook opened while the server still loads waits for it (about 4 s after JupyterLab starts)
        cls = type(name, (forked, ServerKernelManager), {"__module__": __name__, "_async_launch_kernel": launch,
                                                          "wait_for_server": 30.0})
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def start_fork_server() -> None:
    """Start the project kernel's fork server now, with the environment JupyterLab gives its kernels, so that the
    first notebook's kernel is forked too; a problem is logged and kernels start as JupyterLab starts them."""
    from jupyter_client.kernelspec import KernelSpecManager

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        env = {**os.environ, **spec.env}
        env.pop("PYTHONEXECUTABLE", None)  # as jupyter_client's provisioner leaves it out of a Python kernel's
        _kernels().prestart(list(spec.argv), env)
    except Exception as exc:  # no such kernelspec, a server that cannot start: kernels start as JupyterLab starts them
        _logger.warning("Kernels start without the fork server: %s", exc)


def kernel_language_info() -> dict:
    """The language_info that the project's kernel (ipykernel on this Python) reports to JupyterLab."""
    from ipykernel.ipkernel import IPythonKernel

    return dict(IPythonKernel.language_info)


def smudge(text: str, info: dict) -> str:
    """The notebook `text` with `info` as its language_info; text that is not a Python notebook, unchanged."""
    import nbformat

    try:
        nb = nbformat.reads(text, as_version=nbformat.NO_CONVERT)
    except Exception:  # not JSON, or not a notebook: git must still check it out
        return text
    language = nb.metadata.get("kernelspec", {}).get("language") or nb.metadata.get("language_info", {}).get("name")
    if language != "python" or nb.metadata.get("language_info") == info:
        return text
    nb.metadata["language_info"] = info
    out = nbformat.writes(nb)
    return out if out.endswith("\n") else out + "\n"  # as nbformat.write (and so JupyterLab) writes a file


def smudge_files(paths: list[Path]) -> int:
    """Smudge notebooks in place, keeping their modification time; returns how many changed.

    (The time is kept so that a metadata touch-up does not make an .ipynb look newer than its paired .py: jupytext
    refuses to open a notebook whose .ipynb is more recent than its text file.)
    """
    info, changed = kernel_language_info(), 0
    for path in paths:
        text = path.read_text(encoding="utf-8")
        new = smudge(text, info)
        if new != text:
            stat = path.stat()
            path.write_text(new, encoding="utf-8")
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            changed += 1
    return changed


def refresh_git(path: Path) -> bool:
    """Re-stage a tracked file whose filtered content is what git has staged (git then sees it unchanged).

    Returns:
        True when the file was re-staged; False when it is not tracked, differs from the staged content, or git
        is not available (never raises: it runs after every save).
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path.parent), *args], check=True, capture_output=True,
                              text=True, timeout=60).stdout.strip()

    try:
        staged = git("ls-files", "-s", "--", path.name).split()
        if len(staged) < 4 or staged[2] != "0":  # untracked, or in a merge conflict
            return False
        if git("hash-object", f"--path={path.name}", "--", path.name) != staged[1]:
            return False  # a real change: leave it to the user
        git("add", "--", path.name)
        return True
    except (OSError, subprocess.SubprocessError) as exc:
        _logger.warning("Could not refresh git's view of %s: %s", path, exc)
        return False


def post_save(model: dict, os_path: str, contents_manager=None, **_) -> None:  # noqa: ARG001 (the hook's signature)
    """Jupyter server's post-save hook: keep a saved notebook whose outputs are all that changed clean in git."""
    if model.get("type") == "notebook" or os_path.endswith(".ipynb"):
        refresh_git(Path(os_path))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["smudge"]:
        sys.stdout.write(smudge(sys.stdin.read(), kernel_language_info()))
        return 0
    if argv[:1] == ["smudge-files"]:
        smudge_files([Path(p) for p in argv[1:]])
        return 0
    if argv[:1] == ["strip"]:  # nbstripout with its own arguments, in 0.1 s instead of 1 s
        import nbstripout

        sys.argv = ["nbstripout", *argv[1:]]
        return nbstripout.main() or 0
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--ServerApp.root_dir=")]
    root = Path(given[-1]) if given else ROOT
    argv = [a for a in argv if not a.startswith("--ServerApp.root_dir=")]
    tracked = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "*.ipynb"], capture_output=True, text=True)
    if tracked.returncode == 0:  # notebooks checked out before the filter existed; no git (an archive): none
        smudge_files([root / p for p in tracked.stdout.split("\0") if p])
    from jupyterlab.labapp import main as lab_main

    forked = FORKED_ARGS if sys.platform == "linux" else ()  # macOS: no fork() after torch (kernels.py)
    if forked:
        start_fork_server()
    lab_main([*SERVER_ARGS, *forked, f"--ServerApp.root_dir={root}", "--LabApp.default_url=/lab/tree/notebooks",
              *argv])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
