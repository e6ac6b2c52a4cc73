"""Run the launcher as a child process and wait until it serves: used by `make demo` and the test suite."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence


class ServerDiedError(RuntimeError):
    """The server process exited before it became healthy; the message quotes its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _live_members(pgid: int) -> list[int]:
    """Processes of a process group that are still running (zombies, which no signal can end, left out)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


class ServerProcess:
    """`python -m unifiedreward.serving ARGS` in its own process group, its output in `log_path`.

    with ServerProcess(["--model", "tiny"], port=8011) as server:
        ... server.base_url ...
    """

    def __init__(self, args: Sequence[str] = (), *, host: str = "127.0.0.1", port: int | None = None,
                 log_path: str | Path | None = None, env: dict[str, str] | None = None,
                 startup_timeout_s: float = 900.0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.args = [*args, "--host", host, "--port", str(self.port)]
        self.log_path = Path(log_path) if log_path else Path(f"vllm-server-{self.port}.log")
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL."""
        return self.url + "/v1"

    def start(self) -> "ServerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "unifiedreward.serving", *self.args], stdout=log,
                                         stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self) -> "ServerProcess":
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerDiedError(f"the server exited with code {self.proc.returncode} before it was "
                                      f"ready; last lines of {self.log_path}:\n{self.log_tail()}")
            if self.healthy():
                return self
            time.sleep(1.0)
        self.stop()
        raise ServerDiedError(f"the server was not ready after {self.startup_timeout_s:.0f} s; "
                              f"last lines of {self.log_path}:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM to the whole process group (launcher, API server, engine core), then SIGKILL to what is
        left of it. The group, not only the launcher, must be gone: an API server whose engine died first
        keeps its connections open, waiting for answers that never come."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            if self._group_gone(wait):
                return

    def _group_gone(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.proc.poll()  # reap the launcher, so that it no longer counts as a member
            if not _live_members(self.proc.pid):
                return True
            time.sleep(0.1)
        return False

    def kill(self) -> None:
        """SIGKILL to the whole process group at once: a replica dying without warning."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.proc.wait(30)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "".join(self.log_path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "ServerProcess":
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()
