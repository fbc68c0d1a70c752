"""The shape of every console script: `soraplan-<job> [<command>] [--config C] [options] [key=value ...]`.

A script with several commands takes the command first (`soraplan-vae train ...`); a script that
runs one job has none (`soraplan-caption --config ...`).

A command declares its config dataclass; `--config` names a YAML file and every `key.path=value`
argument overrides one key, in any position. Bad settings and bad usage print one line and exit
2, never a traceback. The `--local_rank` that the `deepspeed` launcher adds is accepted anywhere
(the rank is read from the environment).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soraplan.core.config import ConfigError, load_config
from soraplan.core.ray_session import RayStartError

EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3  # the job could not get what it runs on (e.g. a local Ray did not start)


# What a user can fix without reading code: printed as one line, exit 2.
USER_ERRORS = (ConfigError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ImportError)


@dataclass
class Command:
    """One subcommand. `run(cfg, args)` gets the loaded config (None without `config`) and
    returns what to print: a mapping or list as JSON, anything else as text, None for nothing."""

    name: str
    help: str
    run: Callable[[Any, argparse.Namespace], Any]
    config: type | None = None
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    # Options that set config keys: argparse dest -> key path, e.g. {"address": "ray.address"}.
    option_keys: dict[str, str] = field(default_factory=dict)


def _add_command_arguments(p: argparse.ArgumentParser, command: Command) -> None:
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    if command.config is not None:
        p.add_argument("--config", help="YAML config file; KEY=VALUE arguments override its keys")
    if command.arguments is not None:
        command.arguments(p)


def _parser(prog: str, description: str, commands: Sequence[Command] | Command) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if isinstance(commands, Command):
        _add_command_arguments(parser, commands)
        return parser
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        _add_command_arguments(p, command)
    return parser


def parse(prog: str, description: str, commands: Sequence[Command] | Command,
          argv: Sequence[str]) -> tuple[Command, argparse.Namespace, list[str]]:
    """(command, parsed options, key=value overrides); argparse exits 2 on bad usage."""
    parser = _parser(prog, description, commands)
    args, extra = parser.parse_known_args(list(argv))
    if isinstance(commands, Command):
        command = commands
    else:
        command = next(c for c in commands if c.name == args.command)
    bad = [e for e in extra if e.startswith("-") or "=" not in e]
    if bad or (extra and command.config is None):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    overrides = [f"{key}={json.dumps(getattr(args, dest))}" for dest, key in command.option_keys.items()
                 if getattr(args, dest, None) is not None]
    # Options first, so a KEY=VALUE on the command line can still refine what an option set.
    return command, args, [*overrides, *extra]


def run_command(prog: str, description: str, commands: Sequence[Command] | Command,
                argv: Sequence[str] | None = None) -> int:
    """Parse, load the config, run the command, print its result; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command, args, overrides = parse(prog, description, commands, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = None
        if command.config is not None:
            cfg = load_config(command.config, args.config, overrides)
        result = command.run(cfg, args)
    except (*USER_ERRORS, RayStartError) as exc:
        where = prog if isinstance(commands, Command) else f"{prog} {command.name}"
        print(f"{where}: {one_line(exc)}", file=sys.stderr)
        return EXIT_ENVIRONMENT if isinstance(exc, RayStartError) else EXIT_USAGE
    if isinstance(result, (dict, list)):
        print(json.dumps(result, indent=2, default=str))
    elif isinstance(result, (str, Path)):
        print(result)
    return 0


def one_line(exc: BaseException) -> str:
    """The error's message on one line (a multi-line message is joined)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def console_main(prog: str, description: str,
                 commands: Sequence[Command] | Command) -> Callable[..., None]:
    """A console-script entry point (`main`) for the given commands, or for one job."""

    def main(argv: Sequence[str] | None = None) -> None:
        code = run_command(prog, description, commands, argv)
        if code:
            raise SystemExit(code)

    return main
