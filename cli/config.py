"""``hotswap.toml``: defaults for every command's options, below environment variables and flags.

Precedence, lowest first: the option's built-in default < the config file < ``HOTSWAP_*``
environment variables < flags. The file is the first of: ``--config PATH`` (or ``HOTSWAP_CONFIG``),
``<data dir>/hotswap.toml`` (the data directory named by ``--dir``, ``HOTSWAP_DIR`` or the default),
``./hotswap.toml``. Its top level holds the global options; a table per command holds that
command's defaults, nested like the commands themselves::

    dir = "hotswap-data"          # --dir, every command
    database = "postgresql+psycopg://localhost/test"
    json = false                  # --json, every command that has it
    kernels = "torch"             # HOTSWAP_KERNELS: auto, torch, triton
    debug = false

    [query]
    k = 20
    policy = "rrf"

    [migrate.start]
    wave_size = 500

Keys are option names with ``_`` or ``-``. Unknown keys, and ``yes`` (writing must be asked for on
the command line), are rejected with the list of valid ones. Click (vendored by Typer) applies the values
through its ``default_map``, which ranks exactly there: below environment variables and flags.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from typer.core import TyperGroup, TyperOption

CONFIG_FILE = "hotswap.toml"
GLOBAL_OPTIONS = {"dir": "directory", "database": "database", "json": "as_json"}
ROOT_ONLY = ("debug", "kernels")
NEVER_FROM_FILE = ("yes",)  # writes must be asked for on the command line


ARGV_KEY = "hotswap.argv"


class ConfigGroup(TyperGroup):
    """The root group, keeping its raw arguments: the config file's place depends on ``--dir``,
    which only the subcommand parses, and the root callback (which installs the file's defaults)
    runs before that."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta[ARGV_KEY] = list(args)
        return super().parse_args(ctx, args)


def _error(message: str, fix: str | None = None) -> Exception:
    # Imported on the error path only: kernels imports torch, and config is read on every command.
    from kernels.errors import InvalidInputError

    return InvalidInputError(message, fix=fix)


def find_config(explicit: Path | None, args: list[str], cwd: Path | None = None) -> Path | None:
    """The config file that applies, or None. ``args``: the command line after the global options."""
    if explicit is not None:
        if not explicit.is_file():
            raise _error(f"config file {explicit} does not exist")
        return explicit
    data_dir = Path(_dir_in(args) or os.environ.get("HOTSWAP_DIR") or "hotswap-data")
    cwd = cwd or Path.cwd()
    for candidate in (cwd / data_dir / CONFIG_FILE, cwd / CONFIG_FILE):
        if candidate.is_file():
            return candidate
    return None


def _dir_in(args: list[str]) -> str | None:
    """The value of ``--dir``/``-d`` on the command line, if any (the subcommand is not parsed yet)."""
    for i, arg in enumerate(args):
        if arg.startswith("--dir="):
            return arg.split("=", 1)[1]
        if arg in ("--dir", "-d") and i + 1 < len(args):
            return args[i + 1]
    return None


def read_config(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise _error(f"cannot parse {path}: {e}") from e


def default_map(
    group: TyperGroup, config: dict[str, Any], source: str, *, root: bool = True
) -> dict[str, Any]:
    """click ``default_map`` for ``group``'s commands: globals everywhere, tables per command."""
    known = set(GLOBAL_OPTIONS) | set(ROOT_ONLY if root else ()) | set(group.commands)
    unknown = [key for key in config if _key(key) not in known]
    if unknown:
        raise _error(
            f"{source}: unknown key(s) {unknown}", fix=f"valid here: {', '.join(sorted(known))}"
        )
    globals_ = {GLOBAL_OPTIONS[k]: v for k, v in config.items() if k in GLOBAL_OPTIONS}
    return {
        name: _command_map(command, globals_, config.get(name, {}), f"{source} [{name}]")
        for name, command in group.commands.items()
    }


def _command_map(command: Any, globals_: dict[str, Any], table: Any, source: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise _error(f"{source} must be a table, got {table!r}")
    if isinstance(command, TyperGroup):
        return default_map(command, {**_as_keys(globals_), **table}, source, root=False)
    names = {_key(_long_name(p)): p.name for p in command.params if isinstance(p, TyperOption)}
    own = {k: v for k, v in globals_.items() if k in names.values()}
    for key, value in table.items():
        name = names.get(_key(key))
        if name is None or _key(key) in NEVER_FROM_FILE:
            valid = sorted(k for k in names if k not in NEVER_FROM_FILE)
            raise _error(f"{source}: unknown key {key!r}", fix=f"valid: {', '.join(valid)}")
        own[name] = value
    return own


def _as_keys(globals_: dict[str, Any]) -> dict[str, Any]:
    """Param names back to file keys, to hand the globals down to a nested group."""
    return {file_key: globals_[p] for file_key, p in GLOBAL_OPTIONS.items() if p in globals_}


def _long_name(option: TyperOption) -> str:
    longs = [o for o in option.opts if o.startswith("--")]
    return (longs[0] if longs else option.opts[0]).lstrip("-")


def _key(key: str) -> str:
    return key.replace("-", "_")


def apply(ctx: Any, explicit: Path | None) -> dict[str, Any]:
    """Install the config file's defaults on ``ctx``; return its root table (debug, kernels)."""
    path = find_config(explicit, ctx.meta.get(ARGV_KEY, []))
    if path is None:
        return {}
    config = read_config(path)
    ctx.default_map = default_map(ctx.command, config, str(path))
    if "kernels" in config:
        os.environ.setdefault("HOTSWAP_KERNELS", str(config["kernels"]))  # the variable wins
    return config


def read_object_option(text: str | None, what: str) -> dict[str, Any]:
    """An option holding a JSON object, or a .json/.toml file of one; {} when not given.

    ``what`` names it in errors ("the encoder config"). An unreadable value is an InvalidInputError.
    """
    from kernels.errors import InvalidInputError

    if text is None:
        return {}
    path = Path(text)
    try:
        if path.suffix == ".toml" and path.is_file():
            return tomllib.loads(path.read_text(encoding="utf-8"))
        loaded = json.loads(path.read_text(encoding="utf-8") if path.is_file() else text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise InvalidInputError(f"cannot read {what} {text!r}: {e}") from e
    if not isinstance(loaded, dict):
        raise InvalidInputError(f"{what} must be an object, got {loaded!r}")
    return loaded
