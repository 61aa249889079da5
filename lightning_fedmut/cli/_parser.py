"""The jsonargparse parser shared by the subcommands, and one-line argument errors."""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # jsonargparse is imported by the commands that parse, not by `lightning-fedmut --help`
    from jsonargparse import ArgumentParser

#: Exit code of argument errors (argparse's convention).
ARGUMENT_ERROR = 2

_NONE_WORDS = {"None"}  # how `wandb agent` writes Python's None


class CLIError(Exception):
    """An error the command line reports as one line, then exits with ``code`` (2: bad arguments)."""

    def __init__(self, message: str, code: int = ARGUMENT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def plural(count: int, word: str) -> str:
    """``count`` and ``word``, with an ``s`` unless ``count`` is 1.

    Examples:
        >>> plural(1, "round"), plural(30, "round")
        ('1 round', '30 rounds')
    """
    return f"{count} {word}{'' if count == 1 else 's'}"


_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|obj|exc|ref|doc|py:\w+):`(~?)([^`<]*?)(?:\s*<[^>]*>)?`")
_LITERAL = re.compile(r"``([^`]*)``")
_INTERPRETED = re.compile(r"(?<![`\w])`([^`\n]+)`(?![`\w])")
_CLASS_REPR = re.compile(r"<class '(?:[\w.]*\.)?(\w+)'>")


def plain_text(text: str) -> str:
    """``text`` without reStructuredText markup: roles, double and single backticks, ``<class '...'>``.

    Examples:
        >>> plain_text("a :class:`~lightning_fedmut.sampling.UniformSampler`; ``None`` disables; `seed`")
        'a UniformSampler; None disables; seed'
        >>> plain_text("(type: <class 'lightning_fedmut.aggregators.base.Aggregator'>) :func:`make_clients`")
        '(type: Aggregator) make_clients'
    """
    text = _ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2), text)
    text = _LITERAL.sub(r"\1", text)
    text = _INTERPRETED.sub(r"\1", text)
    return _CLASS_REPR.sub(r"\1", text)


def tidy_help(parser: Any) -> None:
    """Plain help texts, and a title naming its flag for every group of ``parser`` (in place)."""
    for action in parser._actions:
        if isinstance(action.help, str):
            action.help = plain_text(action.help)
    for group in parser._action_groups:
        dests = [a.dest for a in group._group_actions if not a.dest.endswith(".help")]
        if not isinstance(group.title, str) or group.title.startswith("--"):
            continue
        key = getattr(group, "dest", None) or (dests[0] if dests and _CLASS_REPR.fullmatch(group.title) else None)
        if key is None:
            continue
        title = plain_text(group.title)
        group.title = f"--{key}: " + (f"a {title} subclass by class path" if _CLASS_REPR.fullmatch(group.title)
                                       else title)
        if isinstance(group.description, str):
            group.description = plain_text(group.description)


def not_required_with_default(parser: Any) -> None:
    """Show arguments that have a default as optional (a class's required argument given a default)."""
    for action in parser._actions:
        if action.required and action.default is not None and action.option_strings:
            action.required = False


def make_parser(prog: str, description: str) -> ArgumentParser:
    """A jsonargparse parser that raises on errors instead of printing usage and exiting, and whose help is
    plain text (no reStructuredText from docstrings, no ``<class '...'>``)."""
    from jsonargparse import ArgumentParser

    class Parser(ArgumentParser):
        def format_help(self) -> str:  # type: ignore[override]  # called without a formatter only
            tidy_help(self)
            return plain_text(super().format_help())

    return Parser(prog=prog, description=description, exit_on_error=False)


def normalize_argv(argv: Sequence[str], none_flags: Collection[str] = ()) -> list[str]:
    """Read a value ``None`` (how ``wandb agent`` writes Python's None) as YAML's ``null``, and ``none``
    too for the flags in ``none_flags``.

    Examples:
        >>> normalize_argv(["--mutation=None", "--loop.local_steps", "None", "--logger=none"])
        ['--mutation=null', '--loop.local_steps', 'null', '--logger=none']
        >>> normalize_argv(["--mutation", "none"], none_flags={"--mutation"})
        ['--mutation', 'null']
    """
    def is_none(flag: str, value: str) -> bool:
        return value in _NONE_WORDS or (flag in none_flags and value.lower() in ("none", "null"))

    out: list[str] = []
    for i, arg in enumerate(argv):
        previous = argv[i - 1] if i > 0 else ""
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            out.append(f"{key}=null" if is_none(key, value) else arg)
        elif previous.startswith("--") and "=" not in previous and is_none(previous, arg):
            out.append("null")
        else:
            out.append(arg)
    return out


def parse(parser: ArgumentParser, argv: Sequence[str], none_flags: Collection[str] = ()) -> Any:
    """Parse ``argv``; any argument error becomes a :class:`CLIError` with a one-line message."""
    from jsonargparse import ArgumentError

    try:
        return parser.parse_args(normalize_argv(argv, none_flags))
    except CLIError:
        raise
    except (ArgumentError, ValueError, TypeError) as err:  # jsonargparse's errors, or a type's own check
        raise CLIError(one_line_error(str(err), parser)) from None


def plain(value: Any) -> Any:
    """``value`` with jsonargparse's restricted numbers (``PositiveInt`` ...) as plain ``int``/``float``,
    so that loggers store numbers, not their string form.

    Examples:
        >>> from jsonargparse.typing import PositiveInt
        >>> type(plain({"n": [PositiveInt(3)]})["n"][0])
        <class 'int'>
    """
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value


_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "dict": "a mapping"}


def _expected(type_text: str) -> str:
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", type_text.strip())
    if literal:
        return "one of " + ", ".join(c.strip().strip("'\"") for c in literal.group(1).split(","))
    m = re.fullmatch(r"<class '([\w.]+)'>", type_text.strip())
    if m:
        name = m.group(1).rsplit(".", 1)[-1]
        return _TYPE_NAMES.get(name, f"a {name}")
    return type_text.strip()


def one_line_error(message: str, parser: ArgumentParser | None = None) -> str:
    """Condense a (multi-line, nested) jsonargparse error into one line naming the flag, the expected
    and the received value.

    Examples:
        >>> one_line_error('Parser key "loop.rounds":\\n  Expected a <class \\'int\\'>. Got value: abc')
        "--loop.rounds: expected an integer, got 'abc'"
        >>> one_line_error('Parser key "loop.workers":\\n  Does not validate against any of the Union subtypes\\n'
        ...                "  Subtypes: [<class 'int'>, <class 'NoneType'>]\\n  Given value: abc")
        "--loop.workers: expected an integer or null, got 'abc'"
    """
    text = message.strip()
    m = re.match(r"unrecognized arguments: (.*)", text)
    if m:
        return _unrecognized(m.group(1), parser)
    keys: list[str] = []
    for key in re.findall(r'Parser key "([^"]+)"', text):
        if not keys or not key.startswith(keys[0] + "."):
            keys.append(key)
    if not keys:
        m = re.search(r'Key "([^"]+)" is required', text)
        if m:
            return f"--{m.group(1)} is required: pass it on the command line or in the --config file"
        return " ".join(text.split())
    flag = "--" + ".".join(keys)
    lines = [ln.strip(" -") for ln in text.splitlines() if ln.strip(" -")]
    given = re.search(r"Given value: (.*)", text)
    for ln in lines:
        m = re.search(r"Expected a (.+?)\. Got value: (.*)", ln)
        if m and "NoneType" not in m.group(1):
            return f"{flag}: expected {_expected(m.group(1))}, got {m.group(2).strip()!r}"
    union = re.search(r"Subtypes: \[(.*)\]", text)
    if union and given and "Does not validate against any of the Union subtypes" in text:
        kinds = re.findall(r"<class '([\w.]+)'>", union.group(1))
        simple = [k for k in kinds if k in _TYPE_NAMES or k == "NoneType"]
        if kinds and len(simple) == len(kinds):  # int | None ...: no class to build, so say the plain types
            names = [_TYPE_NAMES[k] for k in kinds if k != "NoneType"] + (["null"] if "NoneType" in kinds else [])
            return f"{flag}: expected {' or '.join(names)}, got {given.group(1).strip()!r}"
    for ln in lines:
        m = re.search(r"Not of type \w+: (?:(.*) )?does not conform to restriction v([<>=!]+)(.*)", ln)
        if m:
            value = m.group(1) or (given.group(1) if given else "?")
            return f"{flag}: expected a value {m.group(2)} {m.group(3).strip()}, got {value.strip()!r}"
    for ln in lines:
        m = re.search(r"Import path (?:(\S+) )?does not correspond to a subclass of (\w+)", ln)
        if m:
            path = m.group(1) or (given.group(1).strip() if given else "?")
            return f"{flag}: expected the class path of a {m.group(2)} subclass, got {path!r}, which is not one"
    for i, ln in enumerate(lines):
        m = re.search(r"Problem with given class_path '([^']+)':?$", ln)
        option = re.search(r"Option '([^']+)' is not accepted", lines[i + 1]) if m and i + 1 < len(lines) else None
        if option:
            assert m is not None  # option is only searched for when m matched
            return _unknown_option(flag, m.group(1), option.group(1))
        if m and i + 1 < len(lines) and not lines[i + 1].startswith("Parser key"):
            return f"{flag}: cannot use class {m.group(1)!r}: {lines[i + 1]}"
    for ln in lines:
        m = re.search(r"Expected a typing\.Literal\[(.*)\]", ln)
        if m and given:
            choices = ", ".join(c.strip().strip("'\"") for c in m.group(1).split(","))
            subtypes = re.search(r"Subtypes: \[(.*)\]", text)
            classes = re.findall(r"<class '[\w.]+\.(\w+)'>", subtypes.group(1)) if subtypes else []
            alternative = f", or the class path of a {classes[0]}" if classes else ""
            return f"{flag}: expected one of {choices}{alternative}, got {given.group(1).strip()!r}"
    for ln in lines:
        m = re.search(r"File does not exist: (.*)", ln)
        if m:
            return f"{flag}: file not found: {m.group(1).strip()}"
    for ln in lines:
        m = re.search(r"Expected a dot import path string: (.*)", ln)
        if m:
            return f"{flag}: expected a class path (package.module.Class) or null, got {m.group(1).strip()!r}"
    rest = [ln for ln in lines if not ln.startswith(("Parser key", "Does not validate", "Subtypes:", "Errors:",
                                                     "Given value", "Expected a path but"))]
    return f"{flag}: " + " ".join(" ".join(rest).split())


def _unknown_option(flag: str, class_path: str, option: str) -> str:
    """``--mutation.radus``: name the class's options, and the one meant."""
    import importlib
    import inspect

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        names = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    except (ImportError, AttributeError, TypeError, ValueError):
        return f"{flag}.{option}: {name} has no argument {option!r}"
    close = difflib.get_close_matches(option, names, n=1, cutoff=0.6)
    hint = f" (did you mean {flag}.{close[0]}?)" if close else ""
    return f"{flag}.{option}: {name} has no argument {option!r}{hint}; it takes {', '.join(names) or 'none'}"


def _unrecognized(args: str, parser: ArgumentParser | None) -> str:
    first = args.split()[0] if args.split() else args
    message = f"unrecognized arguments: {args}"
    if parser is not None and first.startswith("--"):
        options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
        given = first.split("=", 1)[0]
        close = difflib.get_close_matches(given, options, n=1, cutoff=0.6)
        head, dot, rest = given.partition(".")
        if dot and not close:  # --mutatoin.radius: the group is misspelled, not the option
            close = [f"{c}.{rest}" for c in difflib.get_close_matches(head, options, n=1, cutoff=0.6)]
        elif dot and close and "." not in close[0]:
            close = [f"{close[0]}.{rest}"]
        if close:
            message += f" (did you mean {close[0]}?)"
    return message
