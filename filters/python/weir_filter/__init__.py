"""weir's Python filter SDK: the shape of the Rust SDK's ``Filter`` trait (``init(params)``,
``keep(message)``) over the contract ``wit/filter.wit``, for filters built into components
with componentize-py (see README.md).

Invariants: a ``Message`` reads its attributes in place from the batch's bytes, decoding
only what is asked (the tag, a looked-up property's value), and stops at anything
malformed rather than misread it (the encoding is documented in wit/filter.wit); an
exception in ``keep`` fails the batch (logged at error level), never a silent verdict.

The ``wit_world`` bindings exist only inside a component (componentize-py generates
them), so they are imported where they are used: ``Params`` and ``Message`` also work in
plain Python, for tests.
"""

import struct
import traceback

__all__ = ["ParamError", "FilterFailed", "Params", "Message", "log", "export_filter"]

_LEVELS = ("trace", "debug", "info", "warn", "error")


def log(level, text):
    """Writes a line to the broker's log ('trace', 'debug', 'info', 'warn' or 'error')."""
    from wit_world.imports import host, types

    name = level if level in _LEVELS else "info"
    host.log(getattr(types.Level, name.upper()), str(text))


class ParamError(Exception):
    """The ``init`` error that rejects an upload: its text names the parameter and why."""


class FilterFailed(Exception):
    """A batch that cannot be decided: the pull fails and is retried from the same offset."""


class Params:
    """The upload's parameters, in the order given; every error names the parameter."""

    def __init__(self, pairs):
        self.pairs = [(k, v) for k, v in pairs]

    def get(self, name, default=None):
        """The first value of ``name``, or ``default``."""
        for k, v in self.pairs:
            if k == name:
                return v
        return default

    def get_all(self, name):
        return [v for k, v in self.pairs if k == name]

    def require(self, name):
        v = self.get(name)
        if v is None:
            raise ParamError(f'missing parameter "{name}"')
        return v

    def number(self, name, default=None):
        v = self.get(name)
        if v is None:
            return default
        try:
            n = float(v.strip())
        except ValueError:
            n = None
        if n is None or n != n or n in (float("inf"), float("-inf")):
            raise ParamError(f'parameter "{name}": expected a number, got "{v}"')
        return n

    def flag(self, name):
        """True for true/yes/1/on (or present with no value), False for false/no/0/off."""
        v = self.get(name)
        if v is None:
            return False
        t = v.strip().lower()
        if t in ("", "true", "yes", "1", "on"):
            return True
        if t in ("false", "no", "0", "off"):
            return False
        raise ParamError(f'parameter "{name}": expected true or false, got "{v}"')

    def allow_only(self, names):
        """Refuses any parameter not in ``names``: a typo is an error, not a default."""
        for k, _ in self.pairs:
            if k not in names:
                expected = ", ".join(f'"{n}"' for n in names) or "none"
                raise ParamError(f'unknown parameter "{k}" (expected {expected})')


_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def _text(b, start, end):
    try:
        return b[start:end].decode("utf-8")
    except UnicodeDecodeError:
        return None


class Message:
    """One message, with accessors over the broker's encoding (wit/filter.wit)."""

    __slots__ = ("_m", "_b", "_tag_at", "_tag_len", "_keys_at", "_props_at", "_end")

    @staticmethod
    def decode(m, attributes):
        """``None`` when the attributes are not in the documented encoding."""
        b = attributes
        start = m.attributes_at
        end = start + m.attributes_len
        if end > len(b) or start + 2 > end:
            return None
        (tag_len,) = _U16.unpack_from(b, start)
        tag_at = start + 2
        at = tag_at + tag_len
        if at + 4 > end:
            return None
        keys_at = at + 4
        at = keys_at + _U32.unpack_from(b, at)[0]
        if at + 4 > end:
            return None
        props_at = at + 4
        at = props_at + _U32.unpack_from(b, at)[0]
        if at != end:
            return None
        msg = Message.__new__(Message)
        msg._m, msg._b, msg._end = m, b, end
        msg._tag_at, msg._tag_len = tag_at, tag_len
        msg._keys_at, msg._props_at = keys_at, props_at
        return msg

    @property
    def queue_offset(self):
        return self._m.queue_offset

    @property
    def born_timestamp(self):
        """Milliseconds since the Unix epoch, as the producer set it."""
        return self._m.born_timestamp

    @property
    def store_timestamp(self):
        """Milliseconds since the Unix epoch, when the broker stored the message."""
        return self._m.store_timestamp

    @property
    def reconsume_count(self):
        return self._m.reconsume_count

    @property
    def tags(self):
        """The tag; '' when the message has none."""
        return _text(self._b, self._tag_at, self._tag_at + self._tag_len) or ""

    def keys(self):
        """The keys, in order."""
        out, b, end, at = [], self._b, self._props_at - 4, self._keys_at
        while at + 2 <= end:
            (n,) = _U16.unpack_from(b, at)
            if at + 2 + n > end:
                break
            k = _text(b, at + 2, at + 2 + n)
            if k is None:
                break
            out.append(k)
            at += 2 + n
        return out

    def _scan(self):
        """Yields (name_at, name_len, value_at, value_len) per property."""
        b, end, at = self._b, self._end, self._props_at
        while at + 2 <= end:
            (name_len,) = _U16.unpack_from(b, at)
            name_at = at + 2
            if name_at + name_len + 4 > end:
                return
            (value_len,) = _U32.unpack_from(b, name_at + name_len)
            value_at = name_at + name_len + 4
            if value_at + value_len > end:
                return
            yield name_at, name_len, value_at, value_len
            at = value_at + value_len

    def properties(self):
        """The properties as (name, value) pairs, in order."""
        out = []
        for na, nl, va, vl in self._scan():
            k, v = _text(self._b, na, na + nl), _text(self._b, va, va + vl)
            if k is None or v is None:
                break
            out.append((k, v))
        return out

    @property
    def body(self):
        """The body bytes when the filter asked for bodies, else None."""
        return self._m.body

    def body_text(self):
        """The body as UTF-8 text; None when absent or not UTF-8."""
        body = self._m.body
        if body is None:
            return None
        try:
            return bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            return None

    # Last in the class body: defined earlier, this name would shadow the builtin
    # `property` that decorates the accessors above.
    def property(self, name):
        """The value of the first property called ``name``, or None."""
        want = name.encode("utf-8")
        n = len(want)
        b = self._b
        for na, nl, va, vl in self._scan():
            if nl == n and b[na : na + nl] == want:
                return _text(b, va, va + vl)
        return None


def export_filter(filter_class):
    """The ``weir:filter/filter`` interface for a filter class; bind it to ``Filter``:

        class RegionIs:
            needs_body = False            # True only if ``keep`` reads bodies
            @classmethod
            def init(cls, params):
                params.allow_only(["region"])
                return cls(params.require("region"))
            def __init__(self, region):
                self.region = region
            def keep(self, msg):
                return msg.property("region") == self.region
            # def begin_batch(self, ctx): ...   # optional: ctx.topic, .queue_id, .consumer_group

        Filter = export_filter(RegionIs)

    ``init`` raises ``ParamError`` to reject the parameters (and so the upload).
    """
    from componentize_py_types import Err
    from wit_world import exports
    from wit_world.imports import host, types  # noqa: F401

    # `host` is imported here, while componentize-py pre-initialises the module, for
    # `log`: with --stub-wasi there is no file system at run time, so a module first
    # imported then (as `log`'s import would be) traps the filter.

    class Filter(exports.Filter):
        instance = None

        def init(self, params):
            try:
                Filter.instance = filter_class.init(Params(params))
            except ParamError as e:
                raise Err(types.FilterError_BadParams(str(e)))
            except Exception as e:  # a bug in init: the upload is refused, saying what
                raise Err(types.FilterError_BadParams(f"init: {e!r}"))
            if getattr(filter_class, "needs_body", False):
                return types.Needs.BODY
            return types.Needs(0)

        def filter(self, ctx, attributes, messages):
            instance = Filter.instance
            if instance is None:
                raise Err(types.FilterError_Failed("filter called before init"))
            try:
                begin = getattr(instance, "begin_batch", None)
                if begin is not None:
                    begin(ctx)
                keep = instance.keep
                verdicts = []
                for m in messages:
                    msg = Message.decode(m, attributes)
                    if msg is None:
                        # As the Rust SDK: the broker only sends valid attributes.
                        raise FilterFailed(
                            f"message at queue offset {m.queue_offset} has malformed attributes"
                        )
                    verdicts.append(keep(msg) is True)
                return verdicts
            except FilterFailed as e:
                raise Err(types.FilterError_Failed(str(e)))
            except Exception:
                why = "exception in keep: " + traceback.format_exc(limit=8)
                log("error", why)
                raise Err(types.FilterError_Failed(why))

    return Filter
