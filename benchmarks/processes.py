"""A vLLM server's processes, found from the port it listens on, and the CPU time of each kind, read from the OS.

One API server: the process that listens runs the HTTP front end and starts the engine (EngineCore, its model
workers). Several (`--api-server-count N` through `vllm serve`): the process that binds the port (a supervisor)
starts N processes titled `VLLM::APIServer_<i>` that share its socket, and the engine; it serves no HTTP itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import psutil

API_TITLE = "VLLM::APIServer"


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _title(process: psutil.Process) -> str:
    try:
        argv = process.cmdline()
        return argv[0] if argv else process.name()
    except psutil.Error:
        return ""


def _listens(process: psutil.Process, port: int) -> bool:
    try:
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for c in process.net_connections(kind="tcp"))
    except psutil.Error:
        return False


@dataclass
class ServerProcesses:
    """The root (the process that bound the port), its API-server processes and everything else it started."""

    root: psutil.Process

    @classmethod
    def find(cls, port: int) -> "ServerProcesses | None":
        """The server listening on `port` on this machine; None when it is not local."""
        listening = [p for p in psutil.process_iter() if _listens(p, port)]
        pids = {p.pid for p in listening}
        roots = [p for p in listening if p.ppid() not in pids]  # API servers share the root's socket
        return cls(roots[0]) if roots else None

    def tree(self) -> list[psutil.Process]:
        try:
            return self.root.children(recursive=True)
        except psutil.Error:
            return []

    def api_servers(self) -> list[psutil.Process]:
        """The processes that serve HTTP: the `VLLM::APIServer_<i>` children, or the root when there are none."""
        children = [p for p in self.tree() if _title(p).startswith(API_TITLE)]
        return children or [self.root]

    def cpu_seconds(self) -> dict[str, float] | None:
        """User + system CPU seconds so far: `api` (all API servers), `engine` (EngineCore and its workers),
        `supervisor` (the root, when it is not itself the API server). None once the server is gone."""
        try:
            api = self.api_servers()
            api_pids = {p.pid for p in api}
            engine = [p for p in self.tree() if p.pid not in api_pids]
            supervisor = 0.0 if self.root.pid in api_pids else _cpu(self.root)
            return {"api": sum(_cpu(p) for p in api), "engine": sum(_cpu(p) for p in engine),
                    "supervisor": supervisor, "api_processes": float(len(api))}
        except psutil.Error:
            return None
