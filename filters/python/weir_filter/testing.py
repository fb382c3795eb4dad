"""Runs a Python filter natively, the way the broker would, for unit tests: the shape of
the Rust SDK's ``testing::run``.

    from weir_filter.testing import run       # before importing the filter
    import filter as f
    run(f.Filter, {"region": "eu"}, [{"properties": {"region": "eu"}}, {"tags": "TagA"}])

Why stand-ins: the SDK's glue imports ``wit_world`` and ``componentize_py_types``, which
componentize-py generates only inside a component. Importing this module installs small
stand-ins for them (unless the real ones are there), so ``export_filter`` and ``log`` work
in plain Python; log lines are recorded in ``logged``. Invariant: messages reach the
filter encoded exactly as the broker encodes attributes (wit/filter.wit), through the
SDK's same ``Filter`` glue.
"""

import enum
import struct
import sys
import types as _modules
from dataclasses import dataclass

from weir_filter import FilterFailed, ParamError

__all__ = ["run", "attributes", "logged"]

logged = []
"""The lines the filter logged during the last ``run``, as (level, text) pairs."""


def _install_stand_ins():
    try:
        import wit_world  # noqa: F401  (inside a component: the real bindings)

        return
    except ImportError:
        pass

    @dataclass
    class Err(Exception):
        value: object

    @dataclass
    class FilterError_BadParams:  # noqa: N801  (the name componentize-py generates)
        value: str

    @dataclass
    class FilterError_Failed:  # noqa: N801
        value: str

    class Level(enum.Enum):
        TRACE = 0
        DEBUG = 1
        INFO = 2
        WARN = 3
        ERROR = 4

    class Needs(enum.IntFlag):
        BODY = 1

    def log(level, text):
        logged.append((level.name.lower(), text))

    cpt = _modules.ModuleType("componentize_py_types")
    cpt.Err = Err
    world = _modules.ModuleType("wit_world")
    imports = _modules.ModuleType("wit_world.imports")
    exports = _modules.ModuleType("wit_world.exports")
    exports.Filter = object
    wtypes = _modules.SimpleNamespace(
        FilterError_BadParams=FilterError_BadParams,
        FilterError_Failed=FilterError_Failed,
        Level=Level,
        Needs=Needs,
    )
    imports.types = wtypes
    imports.host = _modules.SimpleNamespace(log=log)
    world.imports, world.exports = imports, exports
    sys.modules.update(
        {
            "componentize_py_types": cpt,
            "wit_world": world,
            "wit_world.imports": imports,
            "wit_world.exports": exports,
        }
    )


_install_stand_ins()


def _put(out, data, width):
    out += struct.pack("<H" if width == 2 else "<I", len(data))
    out += data


def attributes(msg):
    """The attribute bytes the broker would send for a test message (wit/filter.wit)."""
    out = bytearray()
    _put(out, msg.get("tags", "").encode(), 2)
    keys = bytearray()
    for k in msg.get("keys", ()):
        _put(keys, k.encode(), 2)
    _put(out, keys, 4)
    props = bytearray()
    for k, v in _pairs(msg.get("properties")):
        _put(props, k.encode(), 2)
        _put(props, v.encode(), 4)
    _put(out, props, 4)
    return bytes(out)


def _pairs(props):
    if props is None:
        return []
    return list(props.items()) if isinstance(props, dict) else list(props)


@dataclass
class _Msg:
    queue_offset: int
    born_timestamp: int
    store_timestamp: int
    reconsume_count: int
    attributes_at: int
    attributes_len: int
    body: object


@dataclass
class _Ctx:
    topic: str = "T"
    queue_id: int = 0
    consumer_group: str = "G"


def run(filter_glue, params, messages):
    """Initialises ``filter_glue`` (the class ``export_filter`` returned, the module's
    ``Filter``) with ``params`` (a dict or (name, value) pairs) and runs one batch of
    ``messages``: dicts with optional ``tags``, ``keys``, ``properties`` (dict or pairs),
    ``body`` (str or bytes), ``queue_offset``, ``born_timestamp``, ``store_timestamp``,
    ``reconsume_count``. Returns the verdicts, one bool per message. Raises ``ParamError``
    when ``init`` rejects the parameters, ``FilterFailed`` when the batch fails.
    """
    from componentize_py_types import Err

    logged.clear()
    glue = filter_glue()
    try:
        needs = glue.init([(str(k), str(v)) for k, v in _pairs(params)])
        data = bytearray()
        batch = []
        for i, m in enumerate(messages):
            attrs = attributes(m)
            body = None
            if needs:
                body = m.get("body", b"")
                body = body.encode() if isinstance(body, str) else bytes(body)
            batch.append(
                _Msg(
                    m.get("queue_offset", i),
                    m.get("born_timestamp", 0),
                    m.get("store_timestamp", 0),
                    m.get("reconsume_count", 0),
                    len(data),
                    len(attrs),
                    body,
                )
            )
            data += attrs
        return glue.filter(_Ctx(), bytes(data), batch)
    except Err as e:
        error = e.value
        if type(error).__name__ == "FilterError_BadParams":
            raise ParamError(error.value) from None
        raise FilterFailed(error.value) from None
