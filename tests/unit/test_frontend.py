"""The front load balancer's configuration (nginx accepts it) and its access log (parsed per attempt)."""
from __future__ import annotations

import subprocess

import pytest

from unifiedreward.serving.frontend import find_nginx, keyed_answers, render, upstream_answers


def test_rendered_configuration_is_valid_nginx(tmp_path):
    config = tmp_path / "nginx.conf"
    config.write_text(render(["127.0.0.1:8001", "127.0.0.1:8002"], "127.0.0.1:8080", tmp_path))
    text = config.read_text()
    assert "least_conn;" in text and "server 127.0.0.1:8002 max_fails=1" in text
    # The affinity header picks the consistently hashed pool; without it, least connections.
    assert "hash $http_x_unifiedreward_affinity consistent;" in text and "proxy_pass http://$unifiedreward_pool;" in text
    assert text.count("server 127.0.0.1:8001 max_fails=1") == 2
    # A request a replica already received is never sent to another (no `non_idempotent`).
    (next_upstream,) = [line for line in text.splitlines() if line.strip().startswith("proxy_next_upstream ")]
    assert next_upstream.split()[1:] == ["error", "timeout;"]
    for folder in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / folder).mkdir()
    done = subprocess.run([find_nginx(), "-t", "-p", str(tmp_path), "-c", str(config)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with pytest.raises(ValueError):
        render([], "127.0.0.1:8080", tmp_path)


def test_access_log_lists_every_upstream_attempt(tmp_path):
    log = tmp_path / "access.log"
    log.write_text(
        "2026-11-26T18:53:28+00:00|a1|POST /v1/chat/completions|200|127.0.0.1:1|200|0.3\n"
        "2026-11-26T18:53:29+00:00|a2|POST /v1/chat/completions|200|127.0.0.1:2, 127.0.0.1:1|502, 200|0.3\n"
        "2026-11-26T18:53:30+00:00|a3|GET /nginx-probe|404|127.0.0.1:1|404|0.0\n")
    assert upstream_answers(log) == [("127.0.0.1:1", "200"), ("127.0.0.1:2", "502"), ("127.0.0.1:1", "200")]
    log.write_text(
        "2026-12-01T18:53:28+00:00|a1|POST /v1/chat/completions|200|127.0.0.1:1|200|0.3|-\n"
        "2026-12-01T18:53:29+00:00|a2|POST /v1/chat/completions|200|127.0.0.1:2|200|0.3|9f86d081884c7d65\n")
    assert keyed_answers(log) == [("127.0.0.1:1", "200", None), ("127.0.0.1:2", "200", "9f86d081884c7d65")]
