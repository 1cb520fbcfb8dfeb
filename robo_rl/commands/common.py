"""What every `robo-rl` command shares: exit codes, the one-line error, key=value option parsing."""

from __future__ import annotations

import logging
import sys
from typing import Any, Optional, Sequence, get_type_hints

log = logging.getLogger("robo_rl")

# exit codes: 1 training failed (NaN/Inf, out of memory, a run file not written), 2 bad configuration or input,
# 128+signal interrupted
EXIT_FAILED, EXIT_USAGE = 1, 2
EXIT_SIGINT, EXIT_SIGTERM = 128 + 2, 128 + 15  # what an interrupted run exits with (128 + the signal)


def error(message: str, code: int) -> int:
    print(f"robo-rl: error: {message}", file=sys.stderr)
    return code


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


# keys whose value is a directory: a sweep job's is named by its swept values (``runs/sweep/algo=sac,seed=1``)
PATH_KEYS = ("resume", "run_dir")


def quote_paths(args: Sequence[str]) -> list[str]:
    """``resume=`` / ``run_dir=`` values holding ``=`` or characters beyond ASCII (``runs/ünï``) quoted for Hydra,
    whose grammar reads either unquoted as a syntax error (``seed=1`` inside a value): the ``resume=<job dir>`` that robo-rl prints for a sweep job then works when
    pasted. A value with a comma is quoted only if it names an existing directory (otherwise the comma may be
    a sweep, ``-m run_dir=a,b``); quoted values are left alone. A path holding ``'`` (the job of a sweep over
    quoted values, ``runs/sweep/env.kwargs.x='a b'``) is quoted with ``"``."""
    from pathlib import Path

    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        quote = '"' if "'" in value else "'"
        if (eq and key.lstrip("+~") in PATH_KEYS and ("=" in value or not value.isascii())
                and value[:1] not in ("'", '"') and quote not in value and ("," not in value or Path(value).is_dir())):
            arg = f"{key}={quote}{value}{quote}"
        out.append(arg)
    return out


def unquoted(value: str) -> str:
    """A command-line value without the quotes Hydra takes off (``'runs/sweep/seed=1'``)."""
    value = value.strip()
    return value[1:-1] if len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0] else value


def parse_options(args: Sequence[str], schema: type, command: str) -> Any:
    """key=value arguments checked against a dataclass: unknown keys and wrong types fail with the key named."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    from robo_rl.config import boolean_keys, boolean_problem, integer_keys, integral_literals

    args = integral_literals(args, integer_keys(schema))  # episodes=1e2
    problem = boolean_problem(args, boolean_keys(schema))  # deterministic=2
    if problem is not None:
        raise ValueError(f"{problem} (see robo-rl {command} --help)")
    bad = [a for a in args if "=" not in a]
    if bad:
        raise ValueError(f"expected key=value arguments, got {' '.join(bad)} (see robo-rl {command} --help)")
    try:
        given = OmegaConf.from_dotlist(list(args))
        structured = OmegaConf.structured(schema)
        hints = get_type_hints(schema)
        for key in structured.keys():  # a blank path (an unset shell variable), as typed on the command line
            if hints.get(key) not in (str, Optional[str]):
                continue
            typed = [a.partition("=")[2].strip() for a in args if a.partition("=")[0] == key][-1:]
            if OmegaConf.is_missing(structured, key) and typed in ([""], ["null"]):  # "Incompatible value 'None' ..."
                said = f"{key}=null" if typed == ["null"] else f"{key}= is blank (an unset shell variable?)"
                raise ValueError(f"{said}: {key}=<dir> is required (see robo-rl {command} --help)")
            if typed == [""]:  # demos_out= was taken as not given: no file, and no word of it
                raise ValueError(f"{key}= is blank (an unset shell variable?): give a value, or leave {key}= out "
                                 f"(see robo-rl {command} --help)")
        for key, node in structured.items_ex(resolve=False):
            if isinstance(node, DictConfig) and key in given and not isinstance(given[key], DictConfig):
                # sim2sim=bogus was "Merge error: str is not a subclass of Sim2SimOptions", naming no key
                raise ValueError(f"{key}={given[key]}: {key} is a group of keys, set one at a time: "
                                 f"{', '.join(f'{key}.{k}=...' for k in node.keys())} (see robo-rl {command} --help)")
        opts = OmegaConf.merge(OmegaConf.structured(schema), given)
        for key in opts.keys():
            if OmegaConf.is_missing(opts, key):
                raise ValueError(f"{key}=<dir> is required (see robo-rl {command} --help)")
        return opts
    except (ConfigKeyError, ConfigAttributeError) as exc:
        full_key = str(exc.full_key or exc.key or "")
        raise ValueError(unknown_key(full_key, OmegaConf.structured(schema), command)) from None
    except OmegaConfBaseException as exc:
        key = f"{exc.full_key}: " if getattr(exc, "full_key", None) else ""  # steps=abc names steps
        raise ValueError(f"{key}{str(exc).splitlines()[0]} (see robo-rl {command} --help)") from None


def unknown_key(full_key: str, root: Any, command: str) -> str:
    """The message for an unknown dotted key: the closest keys next to it in ``root`` (a DictConfig:
    "did you mean ...?"), or all of them when none is close; just the key if ``root`` is None."""
    import difflib

    from omegaconf import DictConfig, OmegaConf

    parent, _, name = full_key.rpartition(".")
    node = OmegaConf.select(root, parent) if parent and root is not None else root
    hint = ""
    if isinstance(node, DictConfig):
        keys = [str(k) for k in node.keys()]
        close = difflib.get_close_matches(name, keys, n=3, cutoff=0.6)
        prefix = f"{parent}." if parent else ""
        hint = f"; did you mean {' or '.join(prefix + c for c in close)}?" if close else f"; the keys there are {', '.join(keys)}"
    see = f"robo-rl {command} --help"
    group = full_key.split(".", 1)[0]
    chosen = OmegaConf.select(root, f"{group}.name") if isinstance(root, DictConfig) and group in ("algo", "policy") else None
    if command == "train" and chosen is not None:  # the help shows the default learner's keys: point at this one's
        see = f"robo-rl train {group}={chosen} --help"
    return f"unknown key {full_key!r}{hint} (see {see})"
