"""The JSON body field filter (filters/json-field) in Python: keeps the messages whose body
is a JSON document with a field, at a dotted path, that satisfies a condition, e.g.
``path=order.customer.tier op=in value=gold,platinum``.

Parameters (as the Rust filter's lib.rs documents them):

- ``path`` (required): dot-separated keys from the root; a segment of digits also
  indexes arrays (``items.0.sku``).
- ``op`` (default ``eq``, any case): ``eq``, ``ne``, ``in``, ``gt``, ``ge``, ``lt``,
  ``le``, ``exists``.
- ``value`` (required except for ``exists``): JSON when it parses as JSON, else a
  string; for ``in`` a JSON array or a comma-separated list of such values.

Equality is JSON equality (numbers by value, ``1 == 1.0``; a string never equals a
number; ``true`` is not ``1``); ``gt``, ``ge``, ``lt``, ``le`` compare two numbers, or two
strings by code point. A missing field, or a body that is not UTF-8 JSON, keeps nothing,
for every op including ``ne``.
"""

import json

from weir_filter import ParamError, export_filter


def _parse_value(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parse_list(text):
    try:
        v = json.loads(text)
    except ValueError:
        return [_parse_value(item.strip()) for item in text.split(",")]
    return v if isinstance(v, list) else [v]


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _json_eq(a, b):
    if _is_number(a) and _is_number(b):
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_json_eq(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_json_eq(a[k], b[k]) for k in a)
    return a == b


def _order(a, b):
    if _is_number(a) and _is_number(b):
        return (a > b) - (a < b)
    if isinstance(a, str) and isinstance(b, str):
        # Python compares str by code point.
        return (a > b) - (a < b)
    return None


class JsonField:
    needs_body = True

    @classmethod
    def init(cls, params):
        params.allow_only(["path", "op", "value"])
        path = params.require("path")
        if path == "":
            raise ParamError('parameter "path": is empty')
        segments = path.split(".")
        if "" in segments:
            raise ParamError(
                f'parameter "path": empty segment in "{path}" (segments are separated by single dots)'
            )
        op = (params.get("op") or "eq").strip().lower()
        raw = params.get("value")

        def need():
            if raw is None:
                raise ParamError(f'missing parameter "value" (op={op} needs one)')
            return raw

        if op == "eq":
            v = _parse_value(need())
            test = lambda f: _json_eq(f, v)  # noqa: E731
        elif op == "ne":
            v = _parse_value(need())
            test = lambda f: not _json_eq(f, v)  # noqa: E731
        elif op == "in":
            items = _parse_list(need())
            test = lambda f: any(_json_eq(f, v) for v in items)  # noqa: E731
        elif op in ("gt", "ge", "lt", "le"):
            v = _parse_value(need())
            if not (_is_number(v) or isinstance(v, str)):
                raise ParamError(
                    f'parameter "value": op={op} compares numbers or strings, got {json.dumps(v)}'
                )
            ok = {"gt": lambda o: o > 0, "ge": lambda o: o >= 0,
                  "lt": lambda o: o < 0, "le": lambda o: o <= 0}[op]

            def test(f):
                o = _order(f, v)
                return o is not None and ok(o)
        elif op == "exists":
            if raw is not None:
                raise ParamError('parameter "value": op=exists takes no value')
            test = lambda f: True  # noqa: E731
        else:
            raise ParamError(
                f'parameter "op": expected eq, ne, in, gt, ge, lt, le or exists, got "{op}"'
            )
        return cls(segments, test)

    def __init__(self, segments, test):
        self.segments = segments
        self.test = test

    def keep(self, msg):
        text = msg.body_text()
        if text is None:
            return False
        try:
            doc = json.loads(text)
        except ValueError:
            return False
        at = doc
        for key in self.segments:
            if isinstance(at, list):
                if not key.isdigit() or int(key) >= len(at):
                    return False
                at = at[int(key)]
            elif isinstance(at, dict) and key in at:
                at = at[key]
            else:
                return False
        return self.test(at)


Filter = export_filter(JsonField)
