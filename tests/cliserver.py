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

Protocol: one JSON request per line on the server's stdin, one JSON line back.  ``run`` (argv,
env, cwd, timeout, the files for the child's stdin, stdout and stderr): back when the child has
ended, its exit code, or ``null`` when it outlived its timeout and was killed.  ``spawn``: the
same, back at once with the child's pid; ``wait`` (pid, timeout): its exit code, or ``null``
while it still runs -- the server is the parent, so it reaps.

Run by the tests through :func:`shared` (or a :class:`CliServer` of their own); ``python
tests/cliserver.py`` is the server.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


class CliServer:
    """``run(*args)`` behaves like ``subprocess.run([meterd, *args], capture_output=True,
    text=True)``: a :class:`subprocess.CompletedProcess`, or :class:`subprocess.TimeoutExpired`.
    ``spawn(*args)`` starts one in the background, like ``subprocess.Popen``: a :class:`Spawned`."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = Path(cwd)
        self._dir = Path(tempfile.mkdtemp(prefix="meterd-cli-"))
        self._lock = threading.Lock()
        self._count = 0
        self._requests = 0
        self._spawned: list[Spawned] = []
        self._proc = subprocess.Popen([sys.executable, "-u", __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"}, text=True, bufsize=1)
        ready = self._ask(None)
        if ready != {"ready": True}:
            raise RuntimeError(f"the meterd fork server did not start: {ready!r}")

    def _ask(self, request: dict[str, Any] | None) -> dict[str, Any]:
        """Send ``request``; its answer (an answer to an earlier request that was interrupted --
        a test stopped by Ctrl-C or a timeout in the middle -- is skipped)."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        if request is not None:
            self._requests += 1
            request["id"] = self._requests
            self._proc.stdin.write(json.dumps(request) + "\n")
        while True:
            line = self._proc.stdout.readline()
            if not line:
                raise RuntimeError("the meterd fork server died")
            answer = json.loads(line)
            if answer.pop("id", None) == (request or {}).get("id"):
                return answer

    def _files(self, input: str | None) -> tuple[Path, Path, Path | None]:
        self._count += 1
        out, err = self._dir / f"{self._count}.out", self._dir / f"{self._count}.err"
        # made here, before the request: a spawned child opens them after spawn() has returned, and
        # a test that reads its output at once must find them (empty), not FileNotFoundError
        out.touch()
        err.touch()
        stdin = None
        if input is not None:
            stdin = self._dir / f"{self._count}.in"
            stdin.write_text(input)
        return out, err, stdin

    def _request(self, op: str, args: tuple[str, ...], files: tuple[Path, Path, Path | None], timeout: float,
                 cwd: Path | None, env: dict[str, str] | None) -> dict[str, Any]:
        out, err, stdin = files
        return {"op": op, "argv": list(args), "cwd": str(cwd or self.cwd), "timeout": timeout,
                "env": {**os.environ, "PYTHONUNBUFFERED": "1"} if env is None else env,
                "stdin": str(stdin) if stdin else None, "stdout": str(out), "stderr": str(err)}

    def run(self, *args: str, timeout: float = 60, input: str | None = None, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        with self._lock:
            files = self._files(input)
            out, err, _ = files
            code = self._ask(self._request("run", args, files, timeout, cwd, env))["code"]
            stdout, stderr = out.read_text(), err.read_text()
            for path in files:
                if path is not None:
                    path.unlink()
        if code is None:
            raise subprocess.TimeoutExpired(["meterd", *args], timeout, stdout, stderr)
        return subprocess.CompletedProcess(["meterd", *args], code, stdout, stderr)

    def spawn(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Spawned:
        """A ``meterd`` process in the background; its stdout and stderr go to files."""
        with self._lock:
            files = self._files(None)
            pid = self._ask(self._request("spawn", args, files, 0, cwd, env))["pid"]
        spawned = Spawned(self, pid, ["meterd", *args], files[0], files[1])
        self._spawned.append(spawned)
        return spawned

    def _wait(self, pid: int, timeout: float) -> int | None:
        with self._lock:
            return self._ask({"op": "wait", "pid": pid, "timeout": timeout})["code"]

    def close(self) -> None:
        for spawned in self._spawned:
            if spawned.poll() is None:
                spawned.kill()
                spawned.wait(10)
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


class Spawned:
    """A background ``meterd`` process of a :class:`CliServer` (the server's child: it reaps it)."""

    def __init__(self, server: CliServer, pid: int, args: list[str], stdout: Path, stderr: Path) -> None:
        self.server = server
        self.pid = pid
        self.args = args
        self.stdout_path = stdout
        self.stderr_path = stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server._wait(self.pid, 0)
        return self.returncode

    def wait(self, timeout: float = 60) -> int:
        if self.returncode is None:
            self.returncode = self.server._wait(self.pid, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stdout(self) -> str:
        return self.stdout_path.read_text()


_shared: CliServer | None = None


def shared() -> CliServer:
    """This test process's server (each xdist worker has its own), started on first use and
    closed when the process ends: one import of the package per worker, not per test module."""
    global _shared
    if _shared is None or _shared._proc.poll() is not None:
        _shared = CliServer(Path(tempfile.gettempdir()))
        atexit.register(_shared.close)
    return _shared


def _wait(pid: int, timeout: float) -> int | None:
    """``pid``'s exit code, or None while it runs after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.005)


def _requests() -> dict[str, Any]:
    """The server's loop; returns (in a forked child only) the request the child is to run."""
    buffered = b""
    while True:
        while b"\n" not in buffered:
            chunk = os.read(0, 65536)
            if not chunk:
                os._exit(0)  # the tests closed the pipe: done
            buffered += chunk
        line, buffered = buffered.split(b"\n", 1)
        request = json.loads(line)
        if request["op"] == "wait":
            answer = {"code": _wait(request["pid"], request["timeout"])}
        else:
            pid = os.fork()
            if pid == 0:
                return request
            if request["op"] == "spawn":
                answer = {"pid": pid}
            else:
                code = _wait(pid, request["timeout"])
                if code is None:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                answer = {"code": code}
        os.write(1, (json.dumps({**answer, "id": request["id"]}) + "\n").encode())


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
    os.write(1, b'{"ready": true}\n')
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
