"""``meterd`` commands as real processes without a Python start-up each: a fork server.

Every ``meterd`` process spends about a second of CPU importing the package before it does
anything, which is most of what a walk through twenty short commands costs.  :class:`CliServer`
starts one Python process that imports every module of :mod:`meterd` once, then forks a child per
command.  The child is still a process of its own -- its own environment,
working directory, stdin/stdout/stderr, exit code; a fresh interpreter state apart from the modules
already imported -- and it ends as the console script does, ``sys.exit(main())`` at top level with
the interpreter's normal shutdown (atexit handlers, non-daemon threads joined, an uncaught
exception printed as a traceback, exit 1).  What a test of the process boundary itself checks
(the installed console script, signals to a running daemon) stays with ``subprocess`` and
``meterd_bin``, and so does a test of what a command imports: here everything is imported already.

Protocol: one JSON request per line on the server's stdin (argv, env, cwd, input, timeout, the
paths of the files for the child's stdout and stderr); one JSON line back when the child has
ended: its exit code, or ``null`` when it outlived its timeout and was killed.

Run by the tests through :class:`CliServer`; ``python tests/cliserver.py`` is the server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


class CliServer:
    """``run(*args)`` behaves like ``subprocess.run([meterd, *args], capture_output=True,
    text=True)``: a :class:`subprocess.CompletedProcess`, or :class:`subprocess.TimeoutExpired`."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = Path(cwd)
        self._dir = Path(tempfile.mkdtemp(prefix="meterd-cli-"))
        self._lock = threading.Lock()
        self._count = 0
        self._proc = subprocess.Popen([sys.executable, "-u", __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"}, text=True, bufsize=1)
        assert self._proc.stdout is not None
        ready = self._proc.stdout.readline()
        if ready.strip() != "ready":
            raise RuntimeError(f"the meterd fork server did not start: {ready!r}")

    def run(self, *args: str, timeout: float = 60, input: str | None = None, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        with self._lock:
            self._count += 1
            out, err = self._dir / f"{self._count}.out", self._dir / f"{self._count}.err"
            stdin = None
            if input is not None:
                stdin = self._dir / f"{self._count}.in"
                stdin.write_text(input)
            request = {"argv": list(args), "cwd": str(cwd or self.cwd), "timeout": timeout,
                       "env": {**os.environ, "PYTHONUNBUFFERED": "1"} if env is None else env,
                       "stdin": str(stdin) if stdin else None, "stdout": str(out), "stderr": str(err)}
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.write(json.dumps(request) + "\n")
            answer = self._proc.stdout.readline()
            if not answer:
                raise RuntimeError("the meterd fork server died")
            code = json.loads(answer)["code"]
            stdout, stderr = out.read_text(), err.read_text()
            for path in (out, err, stdin):
                if path is not None:
                    path.unlink()
        if code is None:
            raise subprocess.TimeoutExpired(["meterd", *args], timeout, stdout, stderr)
        return subprocess.CompletedProcess(["meterd", *args], code, stdout, stderr)

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        for path in self._dir.iterdir():
            path.unlink()
        self._dir.rmdir()


def _requests():
    """The server's loop; returns (in the forked child only) the request the child is to run."""
    buffered = b""
    while True:
        while b"\n" not in buffered:
            chunk = os.read(0, 65536)
            if not chunk:
                os._exit(0)  # the tests closed the pipe: done
            buffered += chunk
        line, buffered = buffered.split(b"\n", 1)
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            return request
        deadline = time.monotonic() + request["timeout"]
        code: int | None
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                code = None
                break
            time.sleep(0.005)
        os.write(1, (json.dumps({"code": code}) + "\n").encode())


if __name__ == "__main__":
    import gc
    import importlib
    import pkgutil

    import meterd
    from meterd.cli.main import main

    # what each child would spend its start on: every module of the package (and through them the
    # libraries: psycopg, starlette, ...), imported before the first fork; no thread, no event loop
    for module in pkgutil.walk_packages(meterd.__path__, "meterd."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    gc.freeze()  # the imported objects stay out of the children's collections: fewer pages copied
    os.write(1, b"ready\n")
    job = _requests()
    # the child: the process a ``meterd`` console script would be
    for fd, path, flags in ((0, job["stdin"] or os.devnull, os.O_RDONLY),
                            (1, job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    os.chdir(job["cwd"])
    os.environ.clear()
    os.environ.update(job["env"])
    sys.argv = ["meterd", *job["argv"]]
    sys.exit(main(job["argv"]))
