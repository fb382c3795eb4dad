"""The SQL92 property filter (filters/sql92) in Python: keeps the messages whose properties
satisfy an expression, e.g. ``(region = 'eu' AND amount > 500) OR priority IN ('high',
'urgent')``.

Parameter ``expr`` (required, the only one). Same grammar and three-valued semantics as
the Rust filter (its lib.rs documents them): comparisons ``= <> < <= > >=``,
``[NOT] BETWEEN x AND y``, ``[NOT] IN ('a', ...)``, ``IS [NOT] NULL``,
``[NOT] CONTAINS|STARTSWITH|ENDSWITH 'x'``, ``NOT``, ``AND``, ``OR``, parentheses,
``TRUE``, ``FALSE``; strings, numbers and booleans; ``TAGS`` falls back to the message's
tag. A missing property makes a condition UNKNOWN (``None``), and only a TRUE expression
keeps the message. Numbers compare as Python floats (integers beyond 2**53 rounded).
"""

import operator
import re

from weir_filter import ParamError, export_filter

_KEYWORDS = {
    "AND", "OR", "NOT", "BETWEEN", "IN", "IS", "NULL", "TRUE", "FALSE",
    "CONTAINS", "STARTSWITH", "ENDSWITH",
}
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z")
_NUM_TOKEN = re.compile(r"-?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?[lL]?")
_ID = re.compile(r"[A-Za-z_$][A-Za-z0-9_$.]*")
_OP = re.compile(r"<>|<=|>=|!=|=|<|>|\(|\)|,")
_CMP = {
    "=": operator.eq, "<>": operator.ne, "<": operator.lt,
    "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}


class _Tok:
    __slots__ = ("t", "v", "col", "text")

    def __init__(self, t, v, col, text=None):
        self.t, self.v, self.col, self.text = t, v, col, text

    def shown(self):
        if self.t == "end":
            return "the end"
        return f"'{self.text if self.text is not None else self.v}'"


def _bad(expected, found, col, src):
    return ParamError(f"expr: expected {expected}, found {found} at column {col}: {src}")


def _lex(src):
    out, i, n = [], 0, len(src)
    while i < n:
        c, col = src[i], i + 1
        if c.isspace():
            i += 1
        elif src.startswith("--", i):
            while i < n and src[i] != "\n":
                i += 1
        elif src.startswith("/*", i):
            end = src.find("*/", i + 2)
            if end < 0:
                raise _bad("an end of comment */", "the end", col, src)
            i = end + 2
        elif c == "'":
            s, i = [], i + 1
            while True:
                if i >= n:
                    raise _bad("a closing '", "the end", col, src)
                if src[i] == "'":
                    if src.startswith("''", i):
                        s.append("'")
                        i += 2
                        continue
                    i += 1
                    break
                s.append(src[i])
                i += 1
            out.append(_Tok("str", "".join(s), col, "".join(s)))
        else:
            num = _NUM_TOKEN.match(src, i)
            if num and (c != "-" or (i + 1 < n and (src[i + 1].isdigit() or src[i + 1] == "."))):
                text = num.group(0)
                v = float(text.rstrip("lL"))
                if v != v or v in (float("inf"), float("-inf")):
                    raise _bad("a number", text, col, src)
                out.append(_Tok("num", v, col, text))
                i = num.end()
                continue
            ident = _ID.match(src, i)
            if ident:
                word = ident.group(0)
                up = word.upper()
                out.append(_Tok("kw", up, col) if up in _KEYWORDS else _Tok("id", word, col))
                i = ident.end()
                continue
            op = _OP.match(src, i)
            if op:
                v = op.group(0)
                out.append(_Tok("op", "<>" if v == "!=" else v, col))
                i = op.end()
                continue
            raise _bad("a value, a property or an operator", f"'{c}'", col, src)
    out.append(_Tok("end", "the end", n + 1))
    return out


def _lookup(m, name):
    """A property's value; ``TAGS`` falls back to the message's tag."""
    v = m.property(name)
    if v is not None or name != "TAGS":
        return v
    return m.tags or None


def _as_number(s):
    t = s.strip()
    return float(t) if _NUMBER.match(t) else None


def _as_bool(s):
    t = s.lower()
    return True if t == "true" else False if t == "false" else None


def _and(a_f, b_f):
    def f(m):
        a = a_f(m)
        if a is False:
            return False
        b = b_f(m)
        if b is False:
            return False
        return True if (a is True and b is True) else None
    return f


def _or(a_f, b_f):
    def f(m):
        a = a_f(m)
        if a is True:
            return True
        b = b_f(m)
        if b is True:
            return True
        return False if (a is False and b is False) else None
    return f


def _not(inner):
    def f(m):
        v = inner(m)
        return None if v is None else not v
    return f


def _comparison(op, left, right):
    """``left op right``; each side is (kind, value) with kind prop, str, num or bool."""
    test = _CMP[op]
    ordered = op not in ("=", "<>")
    if ordered or "num" in (left[0], right[0]):
        as_ = "num"
    elif "bool" in (left[0], right[0]):
        as_ = "bool"
    else:
        as_ = "str"

    def side(v):
        kind, val = v
        if kind != "prop":
            c = val if (as_ == "str" or kind == as_) else None
            return lambda m: c
        if as_ == "num":
            def f(m):
                s = _lookup(m, val)
                return None if s is None else _as_number(s)
        elif as_ == "bool":
            def f(m):
                s = _lookup(m, val)
                return None if s is None else _as_bool(s)
        else:
            def f(m):
                return _lookup(m, val)
        return f

    l_f, r_f = side(left), side(right)

    def f(m):
        a = l_f(m)
        if a is None:
            return None
        b = r_f(m)
        return None if b is None else test(a, b)
    return f


class _Parser:
    def __init__(self, src):
        self.src, self.toks, self.at = src, _lex(src), 0

    def peek(self):
        return self.toks[self.at]

    def is_kw(self, k):
        t = self.peek()
        return t.t == "kw" and t.v == k

    def is_op(self, o):
        t = self.peek()
        return t.t == "op" and t.v == o

    def expect(self, what, ok):
        t = self.peek()
        if not ok(t):
            raise _bad(what, t.shown(), t.col, self.src)
        self.at += 1
        return t

    def parse(self):
        tree = self.or_()
        rest = self.peek()
        if rest.t != "end":
            raise _bad("AND, OR or the end", rest.shown(), rest.col, self.src)
        return tree

    def or_(self):
        left = self.and_()
        while self.is_kw("OR"):
            self.at += 1
            left = _or(left, self.and_())
        return left

    def and_(self):
        left = self.not_()
        while self.is_kw("AND"):
            self.at += 1
            left = _and(left, self.not_())
        return left

    def not_(self):
        if self.is_kw("NOT"):
            self.at += 1
            return _not(self.not_())
        return self.primary()

    def value(self, after=None):
        t = self.peek()
        self.at += 1
        if t.t == "id":
            return ("prop", t.v, t)
        if t.t == "str":
            return ("str", t.v, t)
        if t.t == "num":
            return ("num", t.v, t)
        if t.t == "kw" and t.v in ("TRUE", "FALSE"):
            return ("bool", t.v == "TRUE", t)
        self.at -= 1
        what = f"a value after '{after}'" if after else "a value or a property"
        raise _bad(what, t.shown(), t.col, self.src)

    def primary(self):
        src = self.src
        if self.is_op("("):
            self.at += 1
            inner = self.or_()
            self.expect("')'", lambda t: t.t == "op" and t.v == ")")
            return inner
        left = self.value()
        t = self.peek()
        if t.t == "op" and t.v in _CMP:
            self.at += 1
            right = self.value(t.v)
            if t.v not in ("=", "<>"):
                if left[0] in ("str", "bool"):
                    raise _bad(f"a number or a property before '{t.v}'", left[2].shown(), left[2].col, src)
                if right[0] in ("str", "bool"):
                    raise _bad(f"a number or a property after '{t.v}'", right[2].shown(), right[2].col, src)
            return _comparison(t.v, left[:2], right[:2])
        if left[0] == "bool" and not (t.t == "kw" and t.v in ("NOT", "BETWEEN", "IN", "IS")):
            const = left[1]
            return lambda m: const
        negate = False
        if self.is_kw("NOT"):
            self.at += 1
            negate = True
        kw = self.peek()
        if kw.t == "kw" and kw.v == "BETWEEN":
            self.at += 1
            lo = self.value("BETWEEN")
            self.expect("AND", lambda t: t.t == "kw" and t.v == "AND")
            hi = self.value("AND")
            for v in (left, lo, hi):
                if v[0] in ("str", "bool"):
                    raise _bad("a number or a property in BETWEEN", v[2].shown(), v[2].col, src)
            if lo[0] == "num" and hi[0] == "num" and lo[1] > hi[1]:
                raise _bad("BETWEEN bounds in order (low AND high)", lo[2].shown(), lo[2].col, src)
            both = _and(_comparison(">=", left[:2], lo[:2]), _comparison("<=", left[:2], hi[:2]))
            return _not(both) if negate else both
        if left[0] != "prop":
            raise _bad("a comparison after a value", kw.shown(), kw.col, src)
        prop = left[1]
        if kw.t == "kw" and kw.v == "IN":
            self.at += 1
            self.expect("'(' after IN", lambda t: t.t == "op" and t.v == "(")
            items = {self.expect("a string in the IN list", lambda t: t.t == "str").v}
            while self.is_op(","):
                self.at += 1
                items.add(self.expect("a string in the IN list", lambda t: t.t == "str").v)
            self.expect("')' or ','", lambda t: t.t == "op" and t.v == ")")
            frozen = frozenset(items)

            def test(m):
                v = _lookup(m, prop)
                return None if v is None else v in frozen
            return _not(test) if negate else test
        if kw.t == "kw" and kw.v in ("CONTAINS", "STARTSWITH", "ENDSWITH"):
            self.at += 1
            s = self.expect(f"a string after {kw.v}", lambda t: t.t == "str").v
            check = {
                "CONTAINS": lambda v: s in v,
                "STARTSWITH": lambda v: v.startswith(s),
                "ENDSWITH": lambda v: v.endswith(s),
            }[kw.v]

            def test(m):
                v = _lookup(m, prop)
                return None if v is None else check(v)
            return _not(test) if negate else test
        if not negate and kw.t == "kw" and kw.v == "IS":
            self.at += 1
            is_not = False
            if self.is_kw("NOT"):
                self.at += 1
                is_not = True
            self.expect("NULL", lambda t: t.t == "kw" and t.v == "NULL")
            return lambda m: (_lookup(m, prop) is None) != is_not
        what = (
            "BETWEEN, IN, CONTAINS, STARTSWITH or ENDSWITH after NOT"
            if negate
            else "a comparison after a property (write a = TRUE, or a IS NOT NULL)"
        )
        raise _bad(what, kw.shown(), kw.col, src)


def parse(src):
    """The expression as a function ``(message) -> True | False | None``."""
    return _Parser(src).parse()


class Sql92:
    needs_body = False

    @classmethod
    def init(cls, params):
        params.allow_only(["expr"])
        return cls(parse(params.require("expr")))

    def __init__(self, tree):
        self.tree = tree

    def keep(self, msg):
        return self.tree(msg) is True


Filter = export_filter(Sql92)
