"""`unifiedreward` (also `python -m unifiedreward.clients`): score items or rank a group from the command line.

    unifiedreward score --task image_gen.pair_rank --image a.png --image b.png --caption "a red cat"
    unifiedreward score --input items.jsonl --output results.jsonl --concurrency 64 [--resume]
    unifiedreward score --input data.parquet --output results.parquet --task image_gen.pair_rank \
        --map caption=prompt --map images=chosen,rejected --shard 0/4
    unifiedreward group --task image_gen.pair_rank --caption "a red cat" --image 1.png --image 2.png ...
    unifiedreward request --task image_gen.pair_rank --image a.png --image b.png --caption "a red cat" > body.json

The same client as the library: one code path. Exit status 0 when every item was scored, 1 when any failed,
2 for bad input (before anything is sent), 130/143 when stopped by SIGINT/SIGTERM (then it says how to
resume).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ._async import AsyncRewardClient
from ._version import __version__
from ._constants import (DEFAULT_BASE_URL, DEFAULT_CONCURRENCY, DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_IMAGE_FORMAT,
                         DEFAULT_JPEG_QUALITY, DEFAULT_MAX_RETRIES, DEFAULT_MODEL, DEFAULT_STALL_TIMEOUT_S,
                         DEFAULT_TIMEOUT_S, MAX_PIXELS, MIN_PIXELS)
from ._requests import (CONSTRAINTS, DECODES, IMAGE_FORMATS, MIN_MAX_PIXELS, EncodeOptions, build_request,
                        encode_media, resolve_task)
from ._types import Logprobs
from .client import RewardClient
from .dataset_io import Source, open_sink, parse_mapping
from .errors import BadInputError
from .jobs import JobOutcome, Shard, run_job
from .jobs import summary as job_summary



def _client_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument("--base-url", action="append", dest="base_urls", metavar="URL",
                       help=f"an OpenAI-compatible base URL; repeat for several endpoints "
                            f"(default: $UNIFIEDREWARD_BASE_URL or {DEFAULT_BASE_URL})")
    group.add_argument("--api-key", default=None,
                       help="API key (default: $UNIFIEDREWARD_API_KEY)")
    group.add_argument("--model", default=DEFAULT_MODEL, help=f"served model name (default: {DEFAULT_MODEL})")
    group.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT_S, help="seconds per request attempt")
    group.add_argument("--connect-timeout", type=_seconds, default=DEFAULT_CONNECT_TIMEOUT_S,
                       help="seconds to open a connection (an unreachable replica fails this fast)")
    group.add_argument("--max-retries", type=_integer(0), default=DEFAULT_MAX_RETRIES,
                       help="retries of connection errors, 429 and 5xx")
    group.add_argument("--stall-timeout", type=_stall_timeout, default=DEFAULT_STALL_TIMEOUT_S, metavar="SECONDS",
                       help=f"abandon an answer that stops arriving for this long and retry it elsewhere "
                            f"(default {DEFAULT_STALL_TIMEOUT_S:g}; 'none': read plain answers, wait the --timeout)")
    group.add_argument("--data-parallel-size", type=_at_least_one, default=1, metavar="N",
                       help="the vLLM data-parallel size behind each --base-url (its /metrics has one `engine` "
                            "label per rank): requests sharing an affinity key are pinned to one rank")
    group.add_argument("--no-affinity", dest="affinity", action="store_false",
                       help="ignore affinity keys (a group's pairs, the input's `affinity` column): every request "
                            "to the least busy endpoint")


def _stall_timeout(text: str) -> float | None:
    return None if text.lower() == "none" else _seconds(text)


def _integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high]; the message names the range."""
    allowed = f"an integer from {low} to {high}" if high is not None else f"an integer of at least {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{allowed}, not {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{allowed}, not {text!r}")
        return value
    return parse


_at_least_one = _integer(1)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seconds (a number above 0), not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"seconds (a number above 0), not {text!r}")
    return value


def _max_pixels(text: str) -> int | None:
    if text.lower() == "none":
        return None  # full size: for a server without a pixel cap (the `authors` profile)
    return _integer(MIN_MAX_PIXELS)(text)


def _image_format(text: str) -> str:
    if text.upper() not in IMAGE_FORMATS:
        raise argparse.ArgumentTypeError(f"one of {', '.join(IMAGE_FORMATS)}, not {text!r}")
    return text.upper()


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The rules that join flags, checked before anything is read or sent (parser.error: exit 2)."""
    if getattr(args, "max_pixels", None) is not None and getattr(args, "min_pixels", 0) > args.max_pixels:
        parser.error(f"--min-pixels {args.min_pixels} is above --max-pixels {args.max_pixels}: images would land "
                     f"outside both bounds")
    if getattr(args, "debias", False) and getattr(args, "task", None):
        try:
            task = resolve_task(args.task)
        except BadInputError as exc:
            parser.error(f"--task: {exc}")
        if task.pairwise is None:
            parser.error(f"--debias scores a pair in both orders; {task.name} is not a pairwise task")


def _item_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", help="task name, e.g. image_gen.pair_rank")
    parser.add_argument("--image", action="append", default=[], help="an image file or URL; repeat in order")
    parser.add_argument("--video", action="append", default=[], help="a video file or URL; repeat in order")
    parser.add_argument("--caption")
    parser.add_argument("--question")
    parser.add_argument("--answer", action="append", default=[], help="answer 1, then answer 2")
    parser.add_argument("--response")
    parser.add_argument("--constraint", choices=CONSTRAINTS, default="auto",
                        help="decoding constraint: the task's default, verdict only, or none")
    parser.add_argument("--decode", choices=DECODES, default="decisive",
                        help="decisive: stop a constrained choice or one-digit score at the token that decides "
                             "it (same verdict and soft score, fewer tokens); full: the whole answer")
    parser.add_argument("--logprobs", nargs="?", const="on", choices=("on", "require"),
                        help="soft scores (p_first, expected_score) where the answer gives one, else the stated "
                             "verdict (reward_kind says which); 'require': soft or the item fails")
    parser.add_argument("--debias", action="store_true", help="pair tasks: score both orders and average")


def _encode_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("media encoding")
    group.add_argument("--image-format", type=_image_format, default=DEFAULT_IMAGE_FORMAT, help="JPEG (default) or PNG")
    group.add_argument("--jpeg-quality", type=_integer(1, 100), default=DEFAULT_JPEG_QUALITY, help="1 to 100")
    group.add_argument("--min-pixels", type=_integer(0), default=MIN_PIXELS, help="per image, after resizing")
    group.add_argument("--max-pixels", type=_max_pixels, default=MAX_PIXELS,
                       help=f"per image, after resizing (the server's own cap: sending more is wasted; at least "
                            f"{MIN_MAX_PIXELS}); 'none' sends images at their own size, for a server without a "
                            f"cap (the `authors` profile)")


def _logprobs(args: argparse.Namespace) -> Logprobs:
    return {None: False, "on": True, "require": "require"}[args.logprobs]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unifiedreward", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    score = commands.add_parser("score", help="score one item (flags) or a JSONL batch (--input)")
    _item_arguments(score)
    job = score.add_argument_group("dataset jobs (--input)")
    job.add_argument("--input", type=Path, help="items: .jsonl, .csv, .parquet (file or folder) or a `datasets` "
                                                "save_to_disk folder; rows {id, task, images|videos, caption|"
                                                "question|answer1|answer2|response, affinity}: rows with the same "
                                                "affinity go to the same endpoint")
    job.add_argument("--output", type=Path, help="results, each written as soon as it is final: .jsonl (a line "
                                                 "per item) or .parquet (a folder of row-group files); default: "
                                                 "standard output")
    job.add_argument("--map", action="append", default=[], metavar="KEY=COLUMN[,COLUMN]",
                     help="take an item key from other columns: --map caption=prompt --map images=img_0,img_1")
    job.add_argument("--resume", action="store_true",
                     help="continue an earlier run: skip the ids already in --output, retry the failed ones")
    job.add_argument("--resume-skip-failed", action="store_true", help="with --resume: keep earlier failures")
    job.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    job.add_argument("--unordered", action="store_true", help="write in completion order, not input order")
    job.add_argument("--shard", default="0/1", metavar="I/N", help="score only the rows whose position mod N is I")
    job.add_argument("--grace", type=float, default=30.0,
                     help="on SIGINT/SIGTERM, seconds the requests in flight get to finish (default 30)")
    job.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar on stderr (default: when stderr is a terminal)")
    score.add_argument("--concurrency", type=_at_least_one, default=DEFAULT_CONCURRENCY, help="requests in flight")
    score.add_argument("--deadline", type=_seconds, help="overall seconds; later items fail as deadline exceeded")
    _client_arguments(score)
    _encode_arguments(score)

    group = commands.add_parser("group", help="rank candidates with a pairwise task (win rates, strengths)")
    _item_arguments(group)
    group.add_argument("--pairs", type=_at_least_one, help="compare only this many pairs (default: all)")
    group.add_argument("--concurrency", type=_at_least_one, default=DEFAULT_CONCURRENCY)
    _client_arguments(group)
    _encode_arguments(group)

    request = commands.add_parser("request", help="print the chat request one item becomes (JSON, for curl or "
                                                  "another client); nothing is sent")
    _item_arguments(request)
    request.add_argument("--model", default=DEFAULT_MODEL, help=f"served model name (default: {DEFAULT_MODEL})")
    _encode_arguments(request)
    return parser


def _fields(args: argparse.Namespace) -> dict[str, str]:
    fields = {k: getattr(args, k) for k in ("caption", "question", "response") if getattr(args, k) is not None}
    if args.answer:
        if len(args.answer) != 2:
            raise BadInputError(f"--answer takes exactly two answers (answer 1, then answer 2), got {len(args.answer)}")
        fields["answer1"], fields["answer2"] = args.answer
    return fields


def _encode_options(args: argparse.Namespace) -> EncodeOptions:
    return EncodeOptions(args.image_format, args.jpeg_quality, args.min_pixels, args.max_pixels)


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    return dict(api_key=args.api_key, model=args.model, timeout=args.timeout, connect_timeout=args.connect_timeout,
                max_retries=args.max_retries, image_format=args.image_format, jpeg_quality=args.jpeg_quality,
                min_pixels=args.min_pixels, max_pixels=args.max_pixels, stall_timeout=args.stall_timeout,
                affinity=args.affinity, data_parallel_size=args.data_parallel_size)


def _urls(args: argparse.Namespace) -> list[str]:
    return args.base_urls or [os.environ.get("UNIFIEDREWARD_BASE_URL", DEFAULT_BASE_URL)]


def _client(args: argparse.Namespace) -> RewardClient:
    return RewardClient(_urls(args), **_client_options(args))


def _media(args: argparse.Namespace) -> list[str]:
    if args.image and args.video:
        raise BadInputError("give --image or --video, not both")
    return args.image or args.video


def cmd_score(args: argparse.Namespace, argv: Sequence[str]) -> int:
    options = dict(constraint=args.constraint, logprobs=_logprobs(args), debias=args.debias, decode=args.decode)
    if args.input is None:
        if not args.task:
            raise BadInputError("give --task (and media and fields), or --input items.jsonl")
        with _client(args) as client:
            result = client.score(args.task, _media(args), **options, **_fields(args))
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return 0 if result.ok else 1
    if args.output is None and args.resume:
        raise BadInputError("--resume needs --output (the file to continue)")
    source = Source(args.input, mapping=parse_mapping(args.map), default_task=args.task)
    sink = open_sink(args.output)
    progress = sys.stderr.isatty() if args.progress is None else args.progress

    async def job() -> JobOutcome:
        async with AsyncRewardClient(_urls(args), **_client_options(args)) as client:
            return await run_job(client, source, sink, shard=Shard.parse(args.shard), resume=args.resume,
                                 retry_failed=not args.resume_skip_failed, overwrite=args.overwrite,
                                 ordered=not args.unordered, concurrency=args.concurrency, grace_s=args.grace,
                                 progress=progress, deadline_s=args.deadline, **options)

    outcome = asyncio.run(job())
    print(job_summary(outcome, argv), file=sys.stderr)
    return outcome.exit_code


def cmd_group(args: argparse.Namespace) -> int:
    if not args.task:
        raise BadInputError("give --task, e.g. image_gen.pair_rank")
    with _client(args) as client:
        group = client.rank_group(args.task, _media(args), pairs=args.pairs, debias=args.debias,
                                  logprobs=_logprobs(args), concurrency=args.concurrency, decode=args.decode,
                                  **_fields(args))
    print(json.dumps(group.to_dict(), indent=2, ensure_ascii=False))
    return 0 if group.errors == 0 else 1


def cmd_request(args: argparse.Namespace) -> int:
    """The request body exactly as the client would send it (same encoding, prompt and constraint)."""
    if not args.task:
        raise BadInputError("give --task, e.g. image_gen.pair_rank")
    task = resolve_task(args.task)
    media = encode_media(task, _media(args), _encode_options(args))
    request = build_request(task, media, _fields(args), model=args.model, constraint=args.constraint,
                            logprobs=_logprobs(args), decode=args.decode)
    body = {**{k: v for k, v in request.items() if k != "extra_body"}, **request.get("extra_body", {})}
    print(json.dumps(body, ensure_ascii=False))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    try:
        if args.command == "score":
            return cmd_score(args, argv)
        return {"group": cmd_group, "request": cmd_request}[args.command](args)
    except BadInputError as exc:
        print(f"unifiedreward: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # piped into `head`: not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
