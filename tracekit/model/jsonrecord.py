"""A frozen dataclass that is a JSON object with typed keys, and back again exactly (pure).

``meta.json`` is read by every tracekit since the first recording, and raw directories of
any age must still export. So reading one and writing it again must give the same keys,
in the same order, with the same values, whatever this tracekit knows: a
:class:`JsonRecord` keeps the keys it was read with (:attr:`JsonRecord.keys`) and the
values of keys it has no field for (:attr:`JsonRecord.extra`). Each field says how its
key is read and written (:func:`key`, with a :class:`Codec`); adding a key is one field.

Values are checked, never coerced (an ``int`` read where a ``float`` is declared stays an
``int``): coercing would change what is written back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tracekit.errors import TraceFileError

__all__ = [
    "BOOL",
    "FLOAT",
    "INT",
    "INT_MAP",
    "JSON",
    "STR",
    "STRS",
    "STR_MAP",
    "Codec",
    "JsonRecord",
    "key",
    "tuples",
]

T = TypeVar("T")
R = TypeVar("R", bound="JsonRecord")


@dataclass(frozen=True)
class Codec(Generic[T]):
    """How one key's JSON value becomes a field's value and back. ``decode`` raises
    ValueError (or TypeError) naming what is wrong; it never sees null."""

    what: str
    decode: Callable[[Any], T]
    encode: Callable[[T], Any]


def _check(what: str, ok: Callable[[Any], bool]) -> Codec[Any]:
    def decode(v: Any) -> Any:
        if not ok(v):
            raise ValueError(f"should be {what}, got {v!r}")
        return v

    return Codec(what, decode, lambda v: v)


def _is_int(v: Any) -> bool:
    return v.__class__ is int  # bool is an int subclass: refused on purpose


STR: Codec[Any] = _check("a string", lambda v: isinstance(v, str))
INT: Codec[Any] = _check("an integer", _is_int)
FLOAT: Codec[Any] = _check("a number", lambda v: _is_int(v) or v.__class__ is float)
BOOL: Codec[Any] = _check("true or false", lambda v: v is True or v is False)
#: Any JSON value, kept as read (for what nothing here reads).
JSON: Codec[Any] = Codec("JSON", lambda v: v, lambda v: v)
STRS: Codec[tuple[str, ...]] = Codec(
    "a list of strings",
    lambda v: tuple(STR.decode(x) for x in _list(v)),
    list,
)


def _list(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise ValueError(f"should be a list, got {v!r}")
    return v


def _mapping(values: Codec[Any]) -> Codec[Mapping[str, Any]]:
    def decode(v: Any) -> Mapping[str, Any]:
        if not isinstance(v, dict):
            raise ValueError(f"should be an object, got {v!r}")
        return {str(k): values.decode(x) for k, x in v.items()}

    return Codec(f"an object of {values.what}", decode, dict)


STR_MAP = _mapping(STR)
INT_MAP = _mapping(INT)


def tuples(*items: Codec[Any]) -> Codec[tuple[tuple[Any, ...], ...]]:
    """A list of fixed-length lists (``[["probe", "why"], ...]``) as tuples; a null item
    stays None (the plugin's unreadable value in ``plugin_disagreements``)."""

    def one(v: Any) -> tuple[Any, ...]:
        xs = _list(v)
        if len(xs) != len(items):
            raise ValueError(f"should have {len(items)} items, got {v!r}")
        return tuple(None if x is None else c.decode(x) for c, x in zip(items, xs, strict=True))

    return Codec(
        f"a list of {len(items)}-item lists",
        lambda v: tuple(one(x) for x in _list(v)),
        lambda v: [list(t) for t in v],
    )


def key(
    codec: Codec[Any],
    default: Any = None,
    *,
    factory: Callable[[], Any] | None = None,
    omit_none: bool = False,
) -> Any:
    """A field read from and written to the JSON key of its name; a missing key gives
    ``default`` (or ``factory()``), and null is read only where the default is None.
    ``omit_none``: a value not known (None) leaves the key out instead of writing null."""
    meta = {"codec": codec, "omit_none": omit_none}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


@dataclass(frozen=True, kw_only=True)
class JsonRecord:
    """Base of a typed JSON object. Subclasses declare their keys as fields with
    :func:`key`, in the order a new object writes them."""

    #: The keys it was read with, in their order (None: built here, so every field is
    #: written, in declaration order).
    keys: tuple[str, ...] | None = field(default=None, repr=False)
    #: Values of keys this tracekit has no field for, kept to be written back.
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def _fields(cls) -> dict[str, dataclasses.Field[Any]]:
        return {f.name: f for f in dataclasses.fields(cls) if "codec" in f.metadata}

    @classmethod
    def from_json(cls: type[R], data: Any, where: str) -> R:
        """Read ``data`` (a JSON object); a key of the wrong type is a TraceFileError
        naming it, a missing key takes its default, an unknown one is kept."""
        if not isinstance(data, dict):
            raise TraceFileError(f"{where} is not an object")
        fields = cls._fields()
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for name, v in data.items():
            f = fields.get(name)
            if f is None:
                extra[name] = v
            elif v is None and _default(f) is None:
                values[name] = None
            else:
                try:
                    if v is None:
                        raise ValueError("should not be null")
                    values[name] = f.metadata["codec"].decode(v)
                except KeyError as exc:
                    raise TraceFileError(f"{where}: {name!r} lacks {exc}") from None
                except (ValueError, TypeError) as exc:
                    raise TraceFileError(f"{where}: {name!r} {exc}") from None
        return cls(keys=tuple(data), extra=extra, **values)

    def to_json(self) -> dict[str, Any]:
        """The JSON object: the keys it was read with, in their order, then any field
        set since (or, when built here, every field in order)."""
        fields = self._fields()
        if self.keys is None:
            names = [n for n in fields if not self._left_out(fields[n])]
        else:
            names = list(self.keys) + [
                n for n in fields if n not in self.keys and self._changed(fields[n])
            ]
        out: dict[str, Any] = {}
        for name in names:
            f = fields.get(name)
            if f is None:
                out[name] = self.extra[name]
                continue
            v = getattr(self, name)
            out[name] = None if v is None else f.metadata["codec"].encode(v)
        return out

    def _left_out(self, f: dataclasses.Field[Any]) -> bool:
        return bool(f.metadata["omit_none"]) and getattr(self, f.name) is None

    def _changed(self, f: dataclasses.Field[Any]) -> bool:
        return bool(getattr(self, f.name) != _default(f))
