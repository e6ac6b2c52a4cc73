"""Start vLLM's OpenAI-compatible server with this model's defaults.

    python -m serving [--model M|tiny] [--host H] [--port P] [--log-file F] [--dry-run] [any vLLM flag ...]

Any vLLM flag given here replaces the default of the same name (see serving/defaults.toml). The final
command and the server's output are logged; when the server dies, the launcher exits with its code and a
message that quotes the end of its log.
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import logging
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from .config import ServeConfig

log = logging.getLogger("serving")
TINY = "tiny"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        allow_abbrev=False,
        description=__doc__.split("\n\n")[0],
        epilog="Unknown --flags are passed to vLLM and override the defaults.",
    )
    parser.add_argument("--config", type=Path, help="a defaults file instead of serving/defaults.toml")
    parser.add_argument("--model", help=f"model id or folder; '{TINY}' builds and serves the tiny test checkpoint")
    parser.add_argument("--host", help="address to bind (default from the config: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default from the config: 8000)")
    parser.add_argument("--log-file", type=Path, help="also append the server's output to this file")
    parser.add_argument("--dry-run", action="store_true", help="print the vLLM command and exit")
    return parser


def resolve_config(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, ServeConfig]:
    parser = build_parser()
    args, vllm_overrides = parser.parse_known_args(argv)
    if vllm_overrides[:1] == ["--"]:
        vllm_overrides = vllm_overrides[1:]
    try:
        config = ServeConfig.load(args.config).override(
            model=args.model, host=args.host, port=args.port, extra_args=vllm_overrides)
    except ValueError as exc:
        parser.error(str(exc))
    return args, config


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the launcher dies, so no orphaned server keeps the port (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run(config: ServeConfig, log_file: Path | None = None) -> int:
    if config.model == TINY:
        from .tiny import ensure_checkpoint  # needs torch + transformers: only loaded when asked for

        log.info("building or reusing the tiny checkpoint")
        config = config.override(model=str(ensure_checkpoint()))
    command = config.command()
    env = {**config.env, **os.environ}  # the caller's environment wins over the file's defaults
    log.info("starting: %s", shlex.join(command))

    tail: collections.deque[str] = collections.deque(maxlen=40)
    sink = open(log_file, "a", encoding="utf-8") if log_file else None
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", bufsize=1, start_new_session=True, preexec_fn=_die_with_parent)
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line)
            if sink:
                sink.write(line)
                sink.flush()
        code = proc.wait()
    finally:
        if sink:
            sink.close()
    if stopping:
        log.info("server stopped")
        return 0
    if code != 0:
        log.error("the vLLM server exited with code %s. Last lines of its output:\n%s", code, "".join(tail))
        return code if code > 0 else 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    args, config = resolve_config(argv)
    if args.dry_run:
        print(shlex.join(config.command()))
        return 0
    return run(config, args.log_file)


if __name__ == "__main__":
    sys.exit(main())
