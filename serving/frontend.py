"""One front address for several replicas: nginx (Debian's package), requests with the client's affinity header
hashed consistently on it (a group's pairs meet on one replica), the rest least-connections.

    python -m unifiedreward.serving.frontend --listen 0.0.0.0:8080 --upstream 10.0.0.1:8000 --upstream 10.0.0.2:8000

The configuration is rendered from serving/nginx.conf.template into a work folder and nginx runs in the
foreground with it; the access log there says which replica answered each request. On Kubernetes the
Service does this job instead (deploy/k8s).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Sequence

TEMPLATE = "nginx.conf.template"
DEFAULT_MAX_BODY = "33m"  # a little above the guard's 32 MiB, so the guard's clearer 413 answers first


def render(upstreams: Sequence[str], listen: str, prefix: Path, max_body: str = DEFAULT_MAX_BODY) -> str:
    """The nginx configuration for these replicas (host:port each)."""
    if not upstreams:
        raise ValueError("give at least one upstream host:port")
    servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=10s;" for u in upstreams)
    template = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    return template.format(prefix=prefix, servers=servers, listen=listen, max_body=max_body)


def upstream_answers(access_log: str | Path) -> list[tuple[str, str]]:
    """(replica, status) for every upstream attempt of every POST in the access log, in order: a request
    that nginx moved on from a dead replica has two attempts, e.g. ("10.0.0.1:8000", "502") then
    ("10.0.0.2:8000", "200")."""
    return [(replica, status) for replica, status, _key in keyed_answers(access_log)]


def keyed_answers(access_log: str | Path) -> list[tuple[str, str, str | None]]:
    """(replica, status, affinity key or None) for every upstream attempt of every POST in the access log."""
    out = []
    for line in Path(access_log).read_text(encoding="utf-8").splitlines():
        _time, _id, request, _status, addrs, statuses, _seconds, *rest = line.split("|")
        if request.startswith("POST"):
            key = rest[0] if rest and rest[0] not in ("", "-") else None  # no key field: a log from before
            out += [(a.strip(), s.strip(), key) for a, s in zip(addrs.split(","), statuses.split(","))]
    return out


def find_nginx() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("nginx is not installed (Debian: apt-get install nginx-light; `make setup` does it)")


class FrontProxy:
    """nginx in front of `upstreams`, in the foreground of a child process; a context manager."""

    def __init__(self, upstreams: Sequence[str], *, host: str = "127.0.0.1", port: int, prefix: str | Path) -> None:
        self.host, self.port = host, port
        self.prefix = Path(prefix).resolve()
        self.config_text = render(upstreams, f"{host}:{port}", self.prefix)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    def start(self, timeout_s: float = 10.0) -> "FrontProxy":
        for folder in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / folder).mkdir(parents=True, exist_ok=True)
        config = self.prefix / "nginx.conf"
        config.write_text(self.config_text, encoding="utf-8")
        nginx = find_nginx()
        subprocess.run([nginx, "-t", "-q", "-p", str(self.prefix), "-c", str(config)], check=True,
                       capture_output=True)
        self.proc = subprocess.Popen([nginx, "-p", str(self.prefix), "-c", str(config)], start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: "
                                   f"{(self.prefix / 'error.log').read_text(errors='replace')[-2000:]}")
            try:
                urllib.request.urlopen(self.url + "/nginx-probe", timeout=1)
            except urllib.error.HTTPError:
                return self  # nginx answered (whatever the replicas say)
            except OSError:
                time.sleep(0.1)
                continue
            return self
        raise RuntimeError("nginx did not start listening")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish the requests in flight
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "FrontProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unifiedreward.serving.frontend", description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", action="append", required=True, metavar="HOST:PORT", help="a replica; repeat")
    parser.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT")
    parser.add_argument("--prefix", type=Path, default=Path(".cache/frontend"), help="work folder (config, logs)")
    parser.add_argument("--print-config", action="store_true", help="print the nginx configuration and exit")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    proxy = FrontProxy(args.upstream, host=host or "127.0.0.1", port=int(port), prefix=args.prefix)
    if args.print_config:
        print(proxy.config_text)
        return 0
    with proxy:
        print(f"unifiedreward.serving.frontend: {proxy.url} -> {', '.join(args.upstream)} (logs in {proxy.prefix})", flush=True)
        try:
            assert proxy.proc is not None
            return proxy.proc.wait()
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
