// The SQL92 property filter (filters/sql92) in JavaScript: keeps the messages whose
// properties satisfy an expression, e.g.
// `(region = 'eu' AND amount > 500) OR priority IN ('high', 'urgent')`.
//
// Parameter `expr` (required, the only one). Same grammar and three-valued semantics as
// the Rust filter (its lib.rs documents them): comparisons `= <> < <= > >=`,
// `[NOT] BETWEEN x AND y`, `[NOT] IN ('a', ...)`, `IS [NOT] NULL`,
// `[NOT] CONTAINS|STARTSWITH|ENDSWITH 'x'`, `NOT`, `AND`, `OR`, parentheses, `TRUE`,
// `FALSE`; strings, numbers and booleans; `TAGS` falls back to the message's tag. A missing
// property makes a condition UNKNOWN, and only a TRUE expression keeps the message. One
// difference: numbers are IEEE doubles here, so integers beyond 2^53 compare rounded.

import { ParamError, exportFilter } from './weir-filter.js';

const KEYWORDS = new Set([
  'AND', 'OR', 'NOT', 'BETWEEN', 'IN', 'IS', 'NULL', 'TRUE', 'FALSE',
  'CONTAINS', 'STARTSWITH', 'ENDSWITH',
]);
const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

function lex(src) {
  const out = [];
  let i = 0;
  while (i < src.length) {
    const c = src[i];
    const col = i + 1;
    if (/\s/.test(c)) { i++; continue; }
    if (src.startsWith('--', i)) { while (i < src.length && src[i] !== '\n') i++; continue; }
    if (src.startsWith('/*', i)) {
      const end = src.indexOf('*/', i + 2);
      if (end < 0) throw bad('an end of comment */', 'the end', col, src);
      i = end + 2;
      continue;
    }
    if (c === "'") {
      let s = '';
      i++;
      for (;;) {
        if (i >= src.length) throw bad("a closing '", 'the end', col, src);
        if (src[i] === "'") {
          if (src[i + 1] === "'") { s += "'"; i += 2; continue; }
          i++;
          break;
        }
        s += src[i++];
      }
      out.push({ t: 'str', v: s, col });
      continue;
    }
    const num = /^-?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?[lL]?/.exec(src.slice(i));
    if (num && (c !== '-' || /[\d.]/.test(src[i + 1] ?? ''))) {
      const v = Number(num[0].replace(/[lL]$/, ''));
      if (!Number.isFinite(v)) throw bad('a number', num[0], col, src);
      out.push({ t: 'num', v, col, text: num[0] });
      i += num[0].length;
      continue;
    }
    const id = /^[A-Za-z_$][A-Za-z0-9_$.]*/.exec(src.slice(i));
    if (id) {
      const up = id[0].toUpperCase();
      out.push(KEYWORDS.has(up) ? { t: 'kw', v: up, col } : { t: 'id', v: id[0], col });
      i += id[0].length;
      continue;
    }
    const op = /^(<>|<=|>=|!=|=|<|>|\(|\)|,)/.exec(src.slice(i));
    if (op) {
      out.push({ t: 'op', v: op[0] === '!=' ? '<>' : op[0], col });
      i += op[0].length;
      continue;
    }
    throw bad('a value, a property or an operator', `'${c}'`, col, src);
  }
  out.push({ t: 'end', v: 'the end', col: src.length + 1 });
  return out;
}

function bad(expected, found, col, src) {
  return new ParamError(`expr: expected ${expected}, found ${found} at column ${col}: ${src}`);
}

function shown(tok) {
  return tok.t === 'end' ? 'the end' : tok.t === 'str' ? `'${tok.v}'` : `'${tok.text ?? tok.v}'`;
}

/** Parses into a tree of closures `(msg) => true | false | null` (null: UNKNOWN). */
function parse(src) {
  const toks = lex(src);
  let at = 0;
  const peek = () => toks[at];
  const isKw = (k) => peek().t === 'kw' && peek().v === k;
  const isOp = (o) => peek().t === 'op' && peek().v === o;
  const expect = (what, ok) => {
    const tok = peek();
    if (!ok(tok)) throw bad(what, shown(tok), tok.col, src);
    at++;
    return tok;
  };

  function or() {
    let left = and();
    while (isKw('OR')) {
      at++;
      const l = left, r = and();
      left = (m) => {
        const a = l(m);
        if (a === true) return true;
        const b = r(m);
        return b === true ? true : a === false && b === false ? false : null;
      };
    }
    return left;
  }
  function and() {
    let left = not();
    while (isKw('AND')) {
      at++;
      const l = left, r = not();
      left = (m) => {
        const a = l(m);
        if (a === false) return false;
        const b = r(m);
        return b === false ? false : a === true && b === true ? true : null;
      };
    }
    return left;
  }
  function not() {
    if (isKw('NOT')) {
      at++;
      const inner = not();
      return (m) => {
        const v = inner(m);
        return v === null ? null : !v;
      };
    }
    return primary();
  }
  function primary() {
    if (isOp('(')) {
      at++;
      const inner = or();
      expect("')'", (t) => t.t === 'op' && t.v === ')');
      return inner;
    }
    const left = value();
    const tok = peek();
    if (tok.t === 'op' && ['=', '<>', '<', '<=', '>', '>='].includes(tok.v)) {
      at++;
      const right = value(tok.v);
      const ordered = tok.v !== '=' && tok.v !== '<>';
      if (ordered && (left.kind === 'str' || left.kind === 'bool')) {
        throw bad('a number or a property before ' + `'${tok.v}'`, shown(left.tok), left.tok.col, src);
      }
      if (ordered && (right.kind === 'str' || right.kind === 'bool')) {
        throw bad(`a number or a property after '${tok.v}'`, shown(right.tok), right.tok.col, src);
      }
      return comparison(tok.v, left, right);
    }
    if (left.kind === 'bool' && !(tok.t === 'kw' && ['NOT', 'BETWEEN', 'IN', 'IS'].includes(tok.v))) {
      return () => left.v;
    }
    let negate = false;
    if (isKw('NOT')) { at++; negate = true; }
    const kw = peek();
    if (kw.t === 'kw' && kw.v === 'BETWEEN') {
      at++;
      const lo = value('BETWEEN'), _ = expect('AND', (t) => t.t === 'kw' && t.v === 'AND'), hi = value('AND');
      for (const v of [left, lo, hi]) {
        if (v.kind === 'str' || v.kind === 'bool') throw bad('a number or a property in BETWEEN', shown(v.tok), v.tok.col, src);
      }
      if (lo.kind === 'num' && hi.kind === 'num' && lo.v > hi.v) {
        throw bad('BETWEEN bounds in order (low AND high)', shown(lo.tok), lo.tok.col, src);
      }
      const ge = comparison('>=', left, lo), le = comparison('<=', left, hi);
      const both = (m) => {
        const a = ge(m);
        if (a === false) return false;
        const b = le(m);
        return b === false ? false : a === true && b === true ? true : null;
      };
      return negate ? negated(both) : both;
    }
    if (left.kind !== 'prop') {
      throw bad("a comparison after a value", shown(kw), kw.col, src);
    }
    const prop = left.v;
    if (kw.t === 'kw' && kw.v === 'IN') {
      at++;
      expect("'(' after IN", (t) => t.t === 'op' && t.v === '(');
      const list = new Set();
      do {
        list.add(expect('a string in the IN list', (t) => t.t === 'str').v);
      } while (isOp(',') && ++at);
      expect("')' or ','", (t) => t.t === 'op' && t.v === ')');
      const test = (m) => {
        const v = lookup(m, prop);
        return v === undefined ? null : list.has(v);
      };
      return negate ? negated(test) : test;
    }
    if (kw.t === 'kw' && ['CONTAINS', 'STARTSWITH', 'ENDSWITH'].includes(kw.v)) {
      at++;
      const s = expect(`a string after ${kw.v}`, (t) => t.t === 'str').v;
      const f = kw.v === 'CONTAINS' ? (v) => v.includes(s)
        : kw.v === 'STARTSWITH' ? (v) => v.startsWith(s) : (v) => v.endsWith(s);
      const test = (m) => {
        const v = lookup(m, prop);
        return v === undefined ? null : f(v);
      };
      return negate ? negated(test) : test;
    }
    if (!negate && kw.t === 'kw' && kw.v === 'IS') {
      at++;
      let isNot = false;
      if (isKw('NOT')) { at++; isNot = true; }
      expect('NULL', (t) => t.t === 'kw' && t.v === 'NULL');
      return (m) => (lookup(m, prop) === undefined) !== isNot;
    }
    throw bad(
      negate ? 'BETWEEN, IN, CONTAINS, STARTSWITH or ENDSWITH after NOT'
        : "a comparison after a property (write a = TRUE, or a IS NOT NULL)",
      shown(kw), kw.col, src,
    );
  }
  function value(after) {
    const tok = peek();
    at++;
    if (tok.t === 'id') return { kind: 'prop', v: tok.v, tok };
    if (tok.t === 'str') return { kind: 'str', v: tok.v, tok };
    if (tok.t === 'num') return { kind: 'num', v: tok.v, tok };
    if (tok.t === 'kw' && (tok.v === 'TRUE' || tok.v === 'FALSE')) return { kind: 'bool', v: tok.v === 'TRUE', tok };
    at--;
    throw bad(after ? `a value after '${after}'` : 'a value or a property', shown(tok), tok.col, src);
  }

  const tree = or();
  const rest = peek();
  if (rest.t !== 'end') throw bad('AND, OR or the end', shown(rest), rest.col, src);
  return tree;
}

function negated(f) {
  return (m) => {
    const v = f(m);
    return v === null ? null : !v;
  };
}

/** A property's value; `TAGS` falls back to the message's tag. */
function lookup(m, name) {
  const v = m.property(name);
  if (v !== undefined || name !== 'TAGS') return v;
  const tag = m.tags;
  return tag === '' ? undefined : tag;
}

function asNumber(v) {
  const t = v.trim();
  return NUMBER.test(t) ? Number(t) : null;
}
function asBool(v) {
  const t = v.toLowerCase();
  return t === 'true' ? true : t === 'false' ? false : null;
}

/** `left op right`, where each side is a property, a string, a number or a boolean. */
function comparison(op, left, right) {
  const test = {
    '=': (a, b) => a === b,
    '<>': (a, b) => a !== b,
    '<': (a, b) => a < b,
    '<=': (a, b) => a <= b,
    '>': (a, b) => a > b,
    '>=': (a, b) => a >= b,
  }[op];
  const ordered = op !== '=' && op !== '<>';
  // What both sides are compared as: numbers when ordered or either side is a number,
  // booleans when either is a boolean, else strings.
  const as = ordered || left.kind === 'num' || right.kind === 'num' ? 'num'
    : left.kind === 'bool' || right.kind === 'bool' ? 'bool' : 'str';
  const side = (v) => {
    if (v.kind !== 'prop') {
      const c = as === 'num' ? (v.kind === 'num' ? v.v : null)
        : as === 'bool' ? (v.kind === 'bool' ? v.v : null) : v.v;
      return () => c;
    }
    const name = v.v;
    if (as === 'num') return (m) => { const s = lookup(m, name); return s === undefined ? null : asNumber(s); };
    if (as === 'bool') return (m) => { const s = lookup(m, name); return s === undefined ? null : asBool(s); };
    return (m) => lookup(m, name) ?? null;
  };
  const l = side(left), r = side(right);
  return (m) => {
    const a = l(m);
    if (a === null) return null;
    const b = r(m);
    return b === null ? null : test(a, b);
  };
}

class Sql92 {
  static init(params) {
    params.allowOnly(['expr']);
    return new Sql92(parse(params.require('expr')));
  }
  constructor(tree) {
    this.tree = tree;
  }
  keep(msg) {
    return this.tree(msg) === true;
  }
}

export const filter = exportFilter(Sql92);
