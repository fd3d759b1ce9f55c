"""One settings system for every command: ``--config FILE.yaml``, ``--print-config``, shared value types.

Why a small module of our own rather than jsonargparse (which installs here and imports in ~0.1 s):
the commands are plain argparse parsers, and other code adds options to them with plain
``add_argument`` lines. jsonargparse would have us rebuild every parser on its own parser class
(typed from signatures, subcommand settings nested per command, ``--print_config`` spelling) and
keep two idioms side by side. Here the parsers stay as they are: each option's own ``type``,
``choices``, ``nargs`` and action decide how a YAML value is read, so a new flag is settable from
YAML the moment it exists.

Precedence: defaults < the YAML file < flags given on the command line. Keys are option names with
``-`` or ``_``; an unknown key is an error naming the file and the key. ``null`` means the option's
default. Options that name files (:func:`path_arg`, :func:`source_arg`) are printed and saved with
absolute paths, so a saved config works from any folder.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import ClipimoError

# Not settings: help and the settings machinery itself, and the error display switch.
_NOT_SETTINGS = {"help", "version", "config", "print_config", "traceback"}
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def path_arg(value: str) -> str:
    """A file or folder (stored absolute in a printed or saved config). ``~`` is expanded here, for
    flags and YAML values alike, so the path written is the path recorded."""
    return os.path.expanduser(value)


def source_arg(value: str) -> str:
    """A name or a path (a model name or .json, a weights tag or file, a benchmark or task folder):
    stored absolute when it names an existing path; ``~`` expanded like :func:`path_arg`."""
    return os.path.expanduser(value) if value.startswith("~") else value


class OutPath:
    """An output path (stored absolute like :func:`path_arg`). ``suffixes``: what a file of ``what``
    must end in (none: a folder). :func:`clipimo.cli.paths.check_paths` checks every output of a
    command against its inputs before it runs."""

    def __init__(self, what: str, *suffixes: str) -> None:
        self.what, self.suffixes = what, suffixes
        self.__name__ = "output path"  # argparse names the type in its messages

    def __call__(self, value: str) -> str:
        return path_arg(value)


def out_file(what: str, *suffixes: str) -> OutPath:
    """An output file holding ``what``, whose name must end in one of ``suffixes``."""
    return OutPath(what, *suffixes)


def out_folder(what: str) -> OutPath:
    """An output folder holding ``what``."""
    return OutPath(what)


def is_path_kind(kind: Any) -> bool:
    return kind in (path_arg, source_arg) or isinstance(kind, OutPath)


def absolute(action: argparse.Action, value: Any) -> Any:
    """``value`` with the paths that ``action`` holds made absolute (``-``, stdout, kept)."""
    kind = getattr(action, "item", None) or action.type
    if value is None or not is_path_kind(kind):
        return value
    if isinstance(value, list):
        return [absolute(action, v) for v in value]
    text = str(value)
    if text == "-" or text.startswith("hf-hub:"):
        return text
    path = Path(text).expanduser()
    return os.path.abspath(path) if kind is not source_arg or path.exists() else text


def as_bool(value: Any, name: str) -> bool:
    """A YAML/flag boolean: true/false, yes/no, on/off, 1/0."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"{name}: expected true or false, got {value!r}")


def split_items(value: Any, item: Callable = str) -> list:
    """'a,b' or ['a', 'b,c'] -> each comma-separated item through ``item``."""
    values = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in values:
        if isinstance(v, (dict, list, tuple)):
            raise ValueError(f"expected plain values, got {v!r}")
        # a YAML scalar is read as its text, like the flag: 1.7 is no integer, whatever int() would make of it
        out += [item(p.strip()) for p in str(v).split(",") if p.strip()]
    return out


class ListAction(argparse.Action):
    """A comma-separated list option (``--shots 1,2,4``). With ``extend`` it is repeatable too
    (``--dataset a,b --dataset c``: the first use replaces the default, later ones add); without,
    a later use replaces an earlier one, like any other flag. ``item`` parses each element,
    ``allowed`` limits them (and ``all`` alone stands for every allowed value)."""

    def __init__(self, option_strings: list[str], dest: str, item: Callable = str,
                 allowed: tuple | None = None, extend: bool = False, **kwargs: Any) -> None:
        self.item, self.allowed, self.extend = item, allowed, extend
        super().__init__(option_strings, dest, **kwargs)

    def parse(self, value: Any) -> list:
        try:
            items = split_items(value, self.item)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
            raise ValueError(f"invalid value {value!r} ({err})") from None
        if self.allowed and items == ["all"]:
            return list(self.allowed)
        bad = [v for v in items if self.allowed and v not in self.allowed]
        if bad:
            raise ValueError(f"invalid choice(s) {', '.join(map(str, bad))} (choose from {', '.join(self.allowed)})")
        return items

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        try:
            items = self.parse(values)
        except ValueError as err:
            raise argparse.ArgumentError(self, str(err)) from None
        current = getattr(namespace, self.dest, None)
        fresh = not self.extend or current is None or current is self.default
        setattr(namespace, self.dest, items if fresh else [*current, *items])


def add_list_argument(parser: argparse.ArgumentParser | Any, *flags: str, item: Callable = str,
                      choices: tuple | None = None, default: Any = None, extend: bool = False,
                      **kwargs: Any) -> argparse.Action:
    """A :class:`ListAction` option; ``default`` (a sequence) becomes a list."""
    return parser.add_argument(*flags, action=ListAction, item=item, allowed=choices, extend=extend,
                               default=None if default is None else list(default), **kwargs)


class HelpFormatter(argparse.HelpFormatter):
    """The one help formatter: an option's default is appended as ``(default: X)`` unless its help
    already says what the default is or it has none; descriptions with line breaks are kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default == argparse.SUPPRESS or default == []:
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--print-config`` (every command gets them from ``clipimo.cli.app``)."""
    parser.add_argument("--config", metavar="FILE.yaml", type=path_arg, default=None,
                        help="YAML file of settings: keys are the option names (with - or _); flags given "
                             "on the command line override it")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective settings as YAML (paths absolute) and exit")


def prepare(parser: argparse.ArgumentParser) -> None:
    """Let a command's required options and positionals come from ``--config`` too: argparse no
    longer demands them; :func:`apply` checks them once the YAML file is merged. Call once, after
    every option is added."""
    parser.usage = parser.format_usage().split(" ", 1)[1].strip().replace("%", "%%")  # as it reads while required
    required = []
    for action in parser._actions:
        if action.option_strings and action.required:
            action.required = False
            required.append(action)
        elif not action.option_strings and action.nargs in (None, "+"):
            action.nargs = "?" if action.nargs is None else "*"
            required.append(action)
    groups = []
    for group in parser._mutually_exclusive_groups:
        groups.append((group, group.required))
        group.required = False
    parser.clipimo_required = required
    parser.clipimo_groups = groups


def settings_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The actions whose values are a command's settings (one per destination)."""
    seen: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.dest not in _NOT_SETTINGS and action.dest != argparse.SUPPRESS and action.dest not in seen:
            if not isinstance(action, argparse._SubParsersAction):
                seen[action.dest] = action
    return list(seen.values())


def _fixed(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Constants a command sets for itself (``train dino``: method dino): accepted in a config when equal."""
    return {k: v for k, v in parser._defaults.items() if isinstance(v, str)}


def _keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """YAML key (``_`` spelling) -> action: each destination and each long option name (hidden
    aliases too)."""
    keys = {a.dest: a for a in settings_actions(parser)}
    for action in parser._actions:
        if action.dest not in keys:
            continue
        for flag in action.option_strings:
            if flag.startswith("--") and not flag.startswith("--no-"):
                keys.setdefault(flag[2:].replace("-", "_"), action)
    return keys


def _is_bool(action: argparse.Action) -> bool:
    return isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                               argparse.BooleanOptionalAction)) or (
        isinstance(action, argparse._StoreConstAction) and isinstance(action.const, bool))


def coerce(action: argparse.Action, value: Any) -> Any:
    """A YAML value read as the option would read it from the command line."""
    name = action.dest
    if isinstance(action, ListAction):
        return action.parse(value)
    if _is_bool(action):
        return as_bool(value, name)
    if isinstance(action, argparse._CountAction):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"expected a count (0, 1, 2, ...), got {value!r}")
        return value
    convert = action.type or str
    listed = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if listed:
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if isinstance(action.nargs, int) and len(values) != action.nargs:
            raise ValueError(f"expected {action.nargs} values, got {len(values)}")
        out = [convert(str(v)) for v in values]
    else:
        if isinstance(value, (list, tuple, dict)):
            raise ValueError(f"expected one value, got {value!r}")
        out = [convert(str(value))]
    bad = [v for v in out if action.choices is not None and v not in action.choices]
    if bad:
        raise ValueError(f"invalid choice {bad[0]!r} (choose from {', '.join(map(str, action.choices))})")
    return out if listed else out[0]


def _explicit(root: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations given on the command line: parse again with every default suppressed."""
    saved = []
    for parser in all_parsers(root):
        for action in parser._actions:
            saved.append((action, action.default))
            action.default = argparse.SUPPRESS
    try:
        return set(vars(root.parse_args(argv)))
    finally:
        for action, default in saved:
            action.default = default


def all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every sub-command parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from all_parsers(child)


def read_config(path: str, parser: argparse.ArgumentParser, command: str) -> dict[str, Any]:
    """The YAML file's settings for ``parser`` as destination -> value (coerced; ``null`` keys left out)."""
    from ..utils import fileio

    keys, fixed = _keys(parser), _fixed(parser)
    values: dict[str, Any] = {}
    for key, value in fileio.read_yaml_mapping(path).items():
        name = str(key).replace("-", "_")
        if name in fixed:
            if value != fixed[name]:
                raise ClipimoError(f"config file {path}: {key} is {value!r}, but this command is `clipimo {command}`")
            continue
        if name not in keys:
            close = difflib.get_close_matches(name, sorted(keys), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else f"; known keys: {', '.join(sorted(keys))}"
            raise ClipimoError(f"config file {path}: unknown key {key!r} for `clipimo {command}`{hint}")
        action = keys[name]
        if action.dest in values:
            raise ClipimoError(f"config file {path}: {key!r} sets {action.dest!r} a second time")
        if value is None:
            continue
        try:
            values[action.dest] = coerce(action, value)
        except (TypeError, ValueError, argparse.ArgumentTypeError, ClipimoError) as err:
            raise ClipimoError(f"config file {path}: {key}: {err}") from None
    return values


def apply(args: argparse.Namespace, root: argparse.ArgumentParser, argv: list[str]) -> None:
    """Merge ``--config`` into ``args`` under the flags given, then check what the command requires."""
    parser = args.command_parser
    if args.config:
        given = _explicit(root, argv)
        loaded = read_config(args.config, parser, parser.prog.split(" ", 1)[1])
        for group, _ in parser.clipimo_groups:  # a flag of an exclusive group overrides the YAML's other members
            members = {a.dest for a in group._group_actions}
            if members & given:
                loaded = {k: v for k, v in loaded.items() if k not in members}
            elif len(members & set(loaded)) > 1:
                raise ClipimoError(f"config file {args.config}: {', '.join(sorted(members & set(loaded)))} "
                                   "exclude each other")
        for dest, value in loaded.items():
            if dest not in given:
                setattr(args, dest, value)
    missing = [_name(a) for a in parser.clipimo_required if getattr(args, a.dest, None) in (None, [])]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)} (as flags or in --config)")
    for group, required in parser.clipimo_groups:
        if required and all(getattr(args, a.dest, None) in (None, False, []) for a in group._group_actions):
            shown = [_name(a) for a in group._group_actions if a.help != argparse.SUPPRESS]
            parser.error(f"one of the arguments {' '.join(shown)} is required")


def _name(action: argparse.Action) -> str:
    return action.option_strings[-1] if action.option_strings else (action.metavar or action.dest)


def effective_config(args: argparse.Namespace) -> dict[str, Any]:
    """Every setting of the command as it will run (paths absolute): what ``--print-config`` prints."""
    parser = args.command_parser
    view = getattr(args, "config_view", None)
    if view is not None:
        return view(args)
    out: dict[str, Any] = dict(_fixed(parser))
    for action in settings_actions(parser):
        value = getattr(args, action.dest, None)
        if isinstance(value, tuple):
            value = list(value)
        out[action.dest] = absolute(action, value)
    return out


def config_yaml(settings: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(settings, sort_keys=False, allow_unicode=True)


def print_config(args: argparse.Namespace) -> int:
    sys.stdout.write(config_yaml(effective_config(args)))
    return 0
