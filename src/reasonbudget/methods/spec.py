"""Method specs: a method name with settings of its config, as the CLI, the harness and the server take them.

    budget-guidance                          defaults
    budget-guidance:hard_cap=true,strength=2 config fields set from text (bool, int, float, str; "none")
    parallel-tempering:temperatures=1.0 2.0  a tuple[X, ...] field: items split on spaces or ';'

A Literal field accepts exactly one of its values; a union tries its arms in order (`int | str`).

In a comma-separated list of methods, a part with "=" and no ":" continues the previous method's settings:
"plain,budget-guidance:hard_cap=true,strength=2,tale" is three methods.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def split_method_list(text: str) -> list[str]:
    specs: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "=" in part and ":" not in part and specs:
            specs[-1] += "," + part
        else:
            specs.append(part)
    return specs


def _name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def _coerce_union(text: str, args: tuple[Any, ...], where: str) -> Any:
    if type(None) in args and text.lower() == "none":
        return None
    arms = [a for a in args if a is not type(None)]
    if len(arms) == 1:  # `X | None`: X's own error says more than "expected X or none"
        return _coerce(text, arms[0], where)
    for arm in arms:  # in order, so `int | str` reads "7" as 7 and "abc" as "abc"
        try:
            return _coerce(text, arm, where)
        except ValueError:
            pass
    names = [_name(a) for a in arms] + (["none"] if type(None) in args else [])
    raise ValueError(f"{where}={text!r}: expected {' or '.join(names)}")


def _coerce_literal(text: str, values: tuple[Any, ...], where: str) -> Any:
    for value in values:
        try:
            if _coerce(text, type(value), where) == value:
                return value
        except ValueError:
            pass
    raise ValueError(f"{where}={text!r}: accepted are {', '.join(map(str, values))}")


def _coerce_tuple(text: str, item: Any, where: str) -> tuple[Any, ...]:
    # Items are split on spaces or ';' because ',' already separates the settings of a spec.
    try:
        return tuple(_coerce(t, item, where) for t in text.replace(";", " ").split())
    except ValueError:
        raise ValueError(f"{where}={text!r}: expected {_name(item)} values separated by spaces or ';'") from None


def _coerce(text: str, annotation: Any, where: str) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(text, args, where)
    if origin is typing.Literal:
        return _coerce_literal(text, args, where)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _coerce_tuple(text, args[0], where)
    if annotation is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"{where}={text!r}: accepted are true or false")
    if annotation in (int, float, str):
        try:
            return annotation(text)
        except ValueError:
            raise ValueError(f"{where}={text!r}: expected {annotation.__name__}") from None
    raise ValueError(f"{where} cannot be set from a method spec")


def parse_method_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """'budget-guidance:hard_cap=true' -> ('budget-guidance', {'hard_cap': True}); unknown method or field,
    or a value of the wrong type: ValueError naming what is accepted."""
    from reasonbudget.methods.base import METHODS, DraftSettings

    name, _, rest = spec.strip().partition(":")
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    config_type = METHODS[name].config_type
    hints = typing.get_type_hints(config_type)
    fields = [f.name for f in dataclasses.fields(config_type) if f.name != "sampling"]
    shared = {f.name for f in dataclasses.fields(DraftSettings)}  # inherited: listed after the method's own
    settable = [f for f in fields if f not in shared] + [f for f in fields if f in shared]
    options: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = (s.strip() for s in part.partition("="))
        if not eq or not key or not value:
            raise ValueError(f"method setting {part!r} in {spec!r} is not key=value")
        if key not in settable:
            raise ValueError(f"{name} has no setting {key!r}; accepted: {', '.join(settable)}")
        options[key] = _coerce(value, hints[key], f"{name}:{key}")
    return name, options


def method_class(spec: str):
    from reasonbudget.methods.base import METHODS

    return METHODS[parse_method_spec(spec)[0]]
