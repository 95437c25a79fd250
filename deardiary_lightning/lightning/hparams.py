"""Hyperparameters to DearDiary parameters: flat ``/``-joined keys, non-empty text values.

DearDiary stores a parameter as a key and a non-empty text. Lightning hands loggers whatever the
user saved with ``save_hyperparameters``: nested dicts, ``argparse.Namespace``, dataclasses,
OmegaConf configs, tensors, enums, classes and functions. :func:`flatten_hparams` turns all of
that into ``{"optimizer/lr": "0.001", ...}`` without side effects:

=======================================  ====================================================
value                                    stored as
=======================================  ====================================================
mapping, ``Namespace``, dataclass,       one parameter per leaf, keys joined with ``/``
OmegaConf ``DictConfig``                 (``{"opt": {"lr": 0.1}}`` -> ``opt/lr``)
list or tuple holding mappings           one subtree per index (``callbacks/0/class_path``)
other list, tuple, set                   its items as text: ``[64, 32]``
``str``                                  the text; an empty text is stored as ``<empty>``
``bool``, ``int``, ``float``             ``true``/``false``, shortest exact number text
``None``                                 ``None``
enum member                              ``Class.MEMBER``
one-element tensor or array              its value, as a number
other tensor or array                    its values when small (<= 16), else shape and dtype
class, function, ``functools.partial``,  the qualified name (``torch.optim.adam.Adam``);
callable object (``nn.Module``, ...)     nothing is ever called
anything else                            ``str(value)``
=======================================  ====================================================

Leaves whose key names a secret (``password``, ``token``, ``secret``, ``api_key``, ...) are
stored as ``***``: a configuration dump never carries a credential into the tracker.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import re
from argparse import Namespace
from collections.abc import Iterator, Mapping, Sequence, Set
from typing import Any

from deardiary_lightning.wire import parameter_text

__all__ = [
    "EMPTY_TEXT",
    "MASK",
    "flatten_hparams",
    "is_secret_key",
    "parameter_value",
    "qualified_name",
]

#: What an empty text value is stored as (DearDiary refuses empty values).
EMPTY_TEXT = "<empty>"

#: What a secret value is stored as.
MASK = "***"

#: Tensors and arrays with at most this many elements are stored with their values.
_SMALL_ARRAY = 16

#: Nesting deeper than this is stored as text (guards against self-referencing objects).
_MAX_DEPTH = 32

_SECRET = re.compile(r"(pass(word|wd)?|token|secret|api[_-]?key|credential|auth)$", re.I)


def is_secret_key(key: str) -> bool:
    """Tell whether a key's last component names a credential.

    Args:
        key: A flat key such as ``trainer/logger/init_args/password``.

    Returns:
        ``True`` for names such as ``password``, ``token``, ``client_secret``, ``api_key``.
    """
    last = key.rsplit("/", 1)[-1].rsplit(".", 1)[-1]
    return bool(_SECRET.search(last))


def flatten_hparams(params: Any, separator: str = "/") -> dict[str, str]:
    """Flatten hyperparameters into DearDiary parameters.

    Args:
        params: A mapping, ``argparse.Namespace``, dataclass instance or OmegaConf config.
        separator: What joins nested keys.

    Returns:
        Flat keys to non-empty text, in the order the leaves were found.

    Raises:
        TypeError: ``params`` is not a container of named values.
    """
    root = _as_mapping(params)
    if root is None:
        msg = (
            f"hyperparameters must be a mapping, Namespace, dataclass or OmegaConf config, "
            f"not {type(params).__name__}"
        )
        raise TypeError(msg)

    flat: dict[str, str] = {}
    for key, value in _leaves(root, "", separator, 0):
        flat[key] = MASK if is_secret_key(key) else value
    return flat


def parameter_value(value: Any) -> str:
    """Turn one hyperparameter value into non-empty text (see the module table).

    Args:
        value: Any value; callables are named, never called.

    Returns:
        The text.
    """
    if value is None:
        return "None"
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, (bool, int, float)):
        return parameter_text("value", value)
    if isinstance(value, str):
        return value if value else EMPTY_TEXT
    if isinstance(value, (bytes, bytearray)):
        return repr(bytes(value)) if value else EMPTY_TEXT

    array_text = _array_text(value)
    if array_text is not None:
        return array_text
    if isinstance(value, (Sequence, Set)):
        items = sorted(value, key=repr) if isinstance(value, Set) else list(value)
        return "[" + ", ".join(_inline(item) for item in items) + "]"
    if _is_named_callable(value):
        return qualified_name(value)

    text = str(value)
    return text if text else EMPTY_TEXT


def qualified_name(obj: Any) -> str:
    """Name a class, function, partial or callable object without calling it.

    Args:
        obj: The callable.

    Returns:
        ``module.QualName`` (for a partial: ``functools.partial(module.name)``; for a callable
        instance: the name of its class).
    """
    if isinstance(obj, functools.partial):
        return f"functools.partial({qualified_name(obj.func)})"
    target = obj if (inspect.isclass(obj) or inspect.isroutine(obj)) else type(obj)
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    name = name or type(target).__name__
    return f"{module}.{name}" if module and module != "builtins" else str(name)


def _leaves(
    node: Mapping[Any, Any], prefix: str, separator: str, depth: int
) -> Iterator[tuple[str, str]]:
    """Yield the flat key and text of every leaf under a mapping."""
    for raw_key, value in node.items():
        name = str(raw_key) if str(raw_key) else EMPTY_TEXT
        key = f"{prefix}{separator}{name}" if prefix else name
        yield from _value_leaves(value, key, separator, depth + 1)


def _value_leaves(value: Any, key: str, separator: str, depth: int) -> Iterator[tuple[str, str]]:
    """Yield the leaves of one value: a subtree for containers, one text otherwise."""
    if depth > _MAX_DEPTH:
        yield key, _truncated_repr(value)
        return

    child = _as_mapping(value)
    if child is not None:
        if not child:
            yield key, "{}"
            return
        yield from _leaves(child, key, separator, depth)
        return

    if _is_omegaconf(value):
        value = _omegaconf_list(value)
    if isinstance(value, (list, tuple)) and any(_as_mapping(item) is not None for item in value):
        for index, item in enumerate(value):
            yield from _value_leaves(item, f"{key}{separator}{index}", separator, depth + 1)
        return

    yield key, parameter_value(value)


def _as_mapping(value: Any) -> Mapping[Any, Any] | None:
    """Return the named values of a container, or ``None`` for a leaf."""
    if isinstance(value, Mapping) and not _is_omegaconf(value):
        return value
    if isinstance(value, Namespace):
        return vars(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    if _is_omegaconf(value):
        return _omegaconf_container(value)
    return None


def _is_omegaconf(value: Any) -> bool:
    """Tell whether a value is an OmegaConf ``DictConfig`` or ``ListConfig``."""
    return type(value).__module__.startswith("omegaconf")


def _omegaconf_container(value: Any) -> Mapping[Any, Any] | None:
    """Resolve an OmegaConf config into plain containers (interpolations included)."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(value, DictConfig):
        return None
    try:
        container = OmegaConf.to_container(value, resolve=True)
    except Exception:
        container = OmegaConf.to_container(value, resolve=False)
    return container if isinstance(container, Mapping) else None


def _omegaconf_list(value: Any) -> Any:
    """Resolve an OmegaConf ``ListConfig`` into a plain list (other values pass through)."""
    from omegaconf import ListConfig, OmegaConf

    if not isinstance(value, ListConfig):
        return value
    try:
        return OmegaConf.to_container(value, resolve=True)
    except Exception:
        return OmegaConf.to_container(value, resolve=False)


def _array_text(value: Any) -> str | None:
    """Describe a tensor or array: its value, its values, or its shape and dtype."""
    shape = getattr(value, "shape", None)
    if shape is None or not hasattr(value, "dtype") or isinstance(value, type):
        return None
    try:
        size = 1
        for dim in shape:
            size *= int(dim)
        if size == 1 and hasattr(value, "item"):
            return parameter_value(value.item())
        if size <= _SMALL_ARRAY and hasattr(value, "tolist"):
            return parameter_value(value.tolist())
    except (TypeError, ValueError, RuntimeError):
        pass
    kind = type(value).__name__
    dims = ", ".join(str(int(d)) for d in shape)
    return f"{kind}(shape=[{dims}], dtype={value.dtype})"


def _is_named_callable(value: Any) -> bool:
    """Tell whether a value is best stored by its name: classes, functions, callables."""
    return inspect.isclass(value) or inspect.isroutine(value) or callable(value)


def _inline(item: Any) -> str:
    """Write one element of a list as it reads inside brackets."""
    if isinstance(item, str):
        return repr(item)
    return parameter_value(item)


def _truncated_repr(value: Any) -> str:
    """Describe a value that is nested too deep to flatten."""
    text = repr(value)
    return text[:200] + "..." if len(text) > 200 else text
