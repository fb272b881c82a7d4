"""The files rrdist reads back from a run or sweep folder, and the one rule for reading them.

Each such file is a `Kept`: its name in the folder, a parser from its bytes to what it holds (which
raises ValueError saying what is wrong: not UTF-8, not JSON or YAML, a key missing, a value of the
wrong type or shape), and what the user can do when it is damaged. `read` gives the content (None
when the file is absent) or a one-line DataError naming the file and the fix; a command `check`s
every file it will read before it writes anything, so that a damaged file stops it at once and
nothing in the folder changes.

The shapes are written as data (`shaped`): a type or tuple of types; `[shape]`, a list of such;
`{key: shape}`, a mapping holding at least these keys (a key ending in "?" may be missing);
`Each(key_shape, value_shape)`, a mapping of any keys; `OneOf(...)`, one of these values. What a
file must agree with beside it (the checkpoint folders a snapshot names) is checked by `agrees`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from rrdist.errors import DataError, RrdistError, first_line

Number = (int, float)  # bool is refused where a number is wanted (see `shaped`)


@dataclass(frozen=True)
class Each:
    key: Any
    value: Any


class OneOf(tuple):
    def __new__(cls, *values):
        return super().__new__(cls, values)


def shaped(value: Any, shape: Any, where: str = "the content") -> Any:
    """`value` if it has `shape` (see the module's doc); else ValueError naming where it differs."""
    if isinstance(shape, OneOf):
        if value not in shape:
            raise ValueError(f"{where} is {value!r}, not one of {', '.join(map(repr, shape))}")
    elif isinstance(shape, Each):
        if not isinstance(value, dict):
            raise ValueError(f"{where} is not a mapping")
        for k, v in value.items():
            shaped(k, shape.key, f"a key of {where}")
            shaped(v, shape.value, f"{where}[{k!r}]")
    elif isinstance(shape, dict):
        if not isinstance(value, dict):
            raise ValueError(f"{where} is not a mapping")
        for key, inner in shape.items():
            name = key.rstrip("?")
            if name not in value:
                if key.endswith("?"):
                    continue
                raise ValueError(f"{where} lacks '{name}'")
            shaped(value[name], inner, f"'{name}'" if where == "the content" else f"{where}.{name}")
    elif isinstance(shape, list):
        if not isinstance(value, list):
            raise ValueError(f"{where} is not a list")
        for i, item in enumerate(value):
            shaped(item, shape[0], f"{where}[{i}]")
    else:
        kinds = shape if isinstance(shape, tuple) else (shape,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(k.__name__ if k is not type(None) else "null" for k in kinds)
            raise ValueError(f"{where} is {type(value).__name__} {_short(value)}, not {names}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def text_of(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"byte {e.start} is not UTF-8 text") from None


def json_of(data: bytes, shape: Any = dict) -> Any:
    try:
        value = json.loads(text_of(data))
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e.msg} at line {e.lineno}") from None
    return shaped(value, shape)


def yaml_of(data: bytes, shape: Any = dict) -> Any:
    import yaml

    try:
        value = yaml.safe_load(text_of(data))
    except yaml.YAMLError as e:
        raise ValueError(f"not YAML: {first_line(e, 80)}") from None
    return shaped(value, shape)


@dataclass(frozen=True)
class Kept:
    """A file a command reads back: NAME in the folder, PARSE (bytes -> content, ValueError when
    damaged), and FIX, what to do about a damaged one."""

    name: str
    parse: Callable[[bytes], Any]
    fix: str
    agrees: Callable[[Any, Any], None] | None = None  # (content, folder): ValueError where they disagree


def parse(kept: Kept, data: bytes, where: object) -> Any:
    """KEPT's content from DATA (the file in the folder WHERE); a damaged one is a one-line DataError."""
    try:
        content = kept.parse(data)
        if kept.agrees is not None:
            kept.agrees(content, where)
        return content
    except (ValueError, TypeError, KeyError, RrdistError) as e:
        raise DataError(f"{where}/{kept.name} is damaged ({first_line(e, 160)}): {kept.fix}") from None


def read(folder, kept: Kept) -> Any | None:
    """KEPT's content in FOLDER (a rrdist.storage.RunFolder); None when the file is not there."""
    data = folder.read_bytes(kept.name)
    return None if data is None else parse(kept, data, folder)


def check(folder, *kept: Kept) -> None:
    """Every one of these files that FOLDER holds is readable (else the one-line DataError)."""
    for k in kept:
        read(folder, k)
