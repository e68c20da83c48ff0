"""The one validation layer for data read from files: recipes, target specs, hardware configs,
studies and the plain-data parts of run files.

Each schema is one of the project's frozen dataclasses, marked with :func:`file_data`; its
field names, types and defaults are the schema (adding a field is one line). Every number's
range is part of its type: a field annotated with one of the ranged types below (:data:`Seed`,
:data:`Count`, ...), or :func:`ranged`, is checked by pydantic when read from a file and by
:func:`check_ranges` (called from ``__post_init__``) when the dataclass is built in Python;
``__post_init__`` holds the checks that relate fields. pydantic validates the parsed file
against it as JSON in strict mode: no coercion ("128" is not an integer, 2.5 and true are not
an epoch count, a string is not a list), no unknown keys, no inf or NaN. The first error is
turned into one line that names the file and the field.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import operator
import typing
from typing import Annotated, Any, List, Optional, Sequence, Tuple, Type, TypeVar

from annotated_types import Interval
from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config

T = TypeVar("T")

# --- ranges ---------------------------------------------------------------------------------

FLOAT32_MAX = 3.4028234663852886e38  # torch trains in float32: larger settings overflow
SEED_MAX = 2**32 - 1  # numpy's seeding (np.random.seed, the legacy generator tonic draws from) takes [0, 2**32 - 1]
INT64_MAX = 2**63 - 1  # counts become numpy and torch int64


def ranged(kind: type, **bounds) -> Any:
    """``kind`` restricted to an interval: ``ranged(float, gt=0, le=1)`` is (0, 1]."""
    return Annotated[kind, Interval(**bounds)]


Seed = ranged(int, ge=0, le=SEED_MAX)
Count = ranged(int, ge=1, le=INT64_MAX)  # sizes, epochs, batch sizes: at least one
Size0 = ranged(int, ge=0, le=INT64_MAX)  # counts where 0 means "none" or "all" (documented per field)
Positive = ranged(float, gt=0, le=FLOAT32_MAX)  # rates, thresholds, lengths, learning rates
NonNegative = ranged(float, ge=0, le=FLOAT32_MAX)  # stds, decays, radii, noise rates
Fraction = ranged(float, ge=0, le=1)  # fractions and probabilities, [0, 1]

#: pydantic's interval error types -> the bound as a message writes it
BOUND_ERRORS = {"greater_than_equal": ">= {ge}", "greater_than": "> {gt}", "less_than_equal": "<= {le}", "less_than": "< {lt}"}
#: Interval's attributes: (the test a value inside passes, how a message writes the bound)
BOUNDS = {"ge": (operator.ge, ">= {}"), "gt": (operator.gt, "> {}"), "le": (operator.le, "<= {}"), "lt": (operator.lt, "< {}")}


def violated_bound(interval: Interval, value: Any) -> Optional[str]:
    """The bound of ``interval`` that ``value`` breaks ('>= 0'), or None when it lies inside.
    Tested as 'not inside' so that NaN breaks every bound."""
    for name, (inside, text) in BOUNDS.items():
        bound = getattr(interval, name)
        if bound is not None and not inside(value, bound):
            return text.format(bound)
    return None


@functools.lru_cache(maxsize=None)
def _field_intervals(cls: type) -> Tuple[Tuple[str, Interval, bool], ...]:
    """(field, interval, whether the field is a tuple of such numbers) of every ranged field."""
    hints = typing.get_type_hints(cls, include_extras=True)
    found: List[Tuple[str, Interval, bool]] = []
    for f in dataclasses.fields(cls):
        hint, each = hints[f.name], False
        args = typing.get_args(hint)
        if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
            hint, each = args[0], True
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(meta, Interval):
                found.append((f.name, meta, each))
    return tuple(found)


def check_ranges(obj: Any, section: str, error: Type[Exception] = ValueError) -> None:
    """Check every ranged field of the dataclass ``obj`` (for instances built in Python; files
    are checked by pydantic already): ``error("<section>.<field> must be >= 1, got 0")``."""
    for name, interval, each in _field_intervals(type(obj)):
        value = getattr(obj, name)
        for loc, v in (enumerate(value) if each else [(None, value)]):
            bound = violated_bound(interval, v)
            if bound:
                field = field_name(section, (name,) if loc is None else (name, loc))
                raise error(f"{field} must be {bound}, got {toml_literal(v)}")


# --- files ----------------------------------------------------------------------------------

FILE_DATA = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

#: pydantic error type -> what the field must be
EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "string_type": "a string",
    "tuple_type": "a list",
    "list_type": "a list",
    "dict_type": "a table",
    "dataclass_type": "a table",
}
UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden")
MISSING = ("missing", "missing_argument", "missing_keyword_argument")


#: Files sast-deploy wrote itself and reads back (compare.json, metrics): the fields a reader
#: needs are checked, others may come and go between versions, and NaN is a valid accuracy
#: of an empty split.
OUTPUT_DATA = ConfigDict(strict=True, extra="ignore", allow_inf_nan=True)


def file_data(cls: Type[T]) -> Type[T]:
    """Mark a dataclass as a file schema: strict types, no unknown keys, finite numbers."""
    return with_config(FILE_DATA)(cls)


def output_data(cls: Type[T]) -> Type[T]:
    """Mark a dataclass as the schema of a file sast-deploy writes (:data:`OUTPUT_DATA`)."""
    return with_config(OUTPUT_DATA)(cls)


@functools.lru_cache(maxsize=None)
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def validated(cls: Type[T], raw: Any, source: str, error: Type[Exception], prefix: str = "") -> T:
    """``raw`` (parsed TOML or JSON) as an instance of the dataclass ``cls``. Errors are
    ``error("<source>: <prefix.field> must be ..., got ...")``; ``source`` may be empty when
    the caller names the file itself."""
    try:
        text = json.dumps(raw)
    except (TypeError, ValueError) as exc:
        raise error(_located(source, f"{prefix or 'the file'} holds a value that is not plain data ({exc})")) from None
    try:
        return _adapter(cls).validate_json(text, strict=True)
    except ValidationError as exc:
        raise error(_located(source, describe(exc.errors()[0], cls, prefix))) from None


def describe(err: dict, cls: type, prefix: str = "") -> str:
    """One pydantic error as 'field must be ..., got ...'."""
    loc = tuple(err["loc"])
    field = field_name(prefix, loc)
    kind = err["type"]
    if kind in UNKNOWN:
        known = known_fields(cls, loc[:-1])
        return f"unknown key {field}" + (f"; known: {', '.join(known)}" if known else "")
    if kind in MISSING:
        return f"missing key '{field}'"
    if kind == "value_error":  # a range check of __post_init__: its message names the field
        return str(err["ctx"]["error"])
    if kind in EXPECTED:
        return f"{field} must be {EXPECTED[kind]}, got {toml_literal(err['input'])}"
    if kind == "json_invalid":  # pydantic's JSON parser stops at a nesting depth no schema here has
        return f"{field} is nested too deep ({err['msg']})"
    if kind in BOUND_ERRORS:
        return f"{field} must be {BOUND_ERRORS[kind].format(**err['ctx'])}, got {toml_literal(err['input'])}"
    return f"{field}: {err['msg']} (got {toml_literal(err.get('input'))})"


def toml_literal(value: Any, limit: int = 80) -> str:
    """A value as a TOML file would spell it (true, "128", inf), for error messages; cut to
    ``limit`` characters (a message stays one readable line)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # inf, -inf, nan
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def field_name(prefix: str, loc: Sequence) -> str:
    """('model', 'v_th_scale', 0) -> 'model.v_th_scale[0]'."""
    name = prefix
    for part in loc:
        name = f"{name}[{part}]" if isinstance(part, int) else (f"{name}.{part}" if name else str(part))
    return name or "the file"


def known_fields(cls: type, loc: Sequence) -> list:
    """Field names of the dataclass at ``loc`` inside ``cls`` (empty if there is none)."""
    node: Optional[type] = cls
    for part in loc:
        if node is None:
            return []
        if isinstance(part, int):
            args = typing.get_args(node)
            node = args[0] if args else None
        elif dataclasses.is_dataclass(node):
            node = typing.get_type_hints(node).get(part)
        else:
            return []
    return [f.name for f in dataclasses.fields(node)] if node is not None and dataclasses.is_dataclass(node) else []


def _located(source: str, message: str) -> str:
    return f"{source}: {message}" if source else message
