// The JSON body field filter (filters/json-field) in JavaScript: keeps the messages whose
// body is a JSON document with a field, at a dotted path, that satisfies a condition,
// e.g. `path=order.customer.tier op=in value=gold,platinum`.
//
// Parameters (as the Rust filter's lib.rs documents them):
// - `path` (required): dot-separated keys from the root; a segment of digits also indexes
//   arrays (`items.0.sku`).
// - `op` (default `eq`, any case): `eq`, `ne`, `in`, `gt`, `ge`, `lt`, `le`, `exists`.
// - `value` (required except for `exists`): JSON when it parses as JSON, else a string;
//   for `in` a JSON array or a comma-separated list of such values.
// Equality is JSON equality (numbers by value; a string never equals a number); `gt`,
// `ge`, `lt`, `le` compare two numbers, or two strings by code point. A missing field, or
// a body that is not UTF-8 JSON, keeps nothing, for every op including `ne`.

import { ParamError, exportFilter } from './weir-filter.js';

function parseValue(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function parseList(text) {
  try {
    const v = JSON.parse(text);
    return Array.isArray(v) ? v : [v];
  } catch {
    return text.split(',').map((item) => parseValue(item.trim()));
  }
}

function jsonEq(a, b) {
  if (a === b) return true;
  if (a === null || b === null || typeof a !== 'object' || typeof b !== 'object') return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) return a.length === b.length && a.every((x, i) => jsonEq(x, b[i]));
  const ka = Object.keys(a), kb = Object.keys(b);
  return ka.length === kb.length && ka.every((k) => Object.hasOwn(b, k) && jsonEq(a[k], b[k]));
}

/** Code-point order of two strings (JS compares UTF-16 units, which differs past U+FFFF). */
function codePointOrder(a, b) {
  const x = Array.from(a), y = Array.from(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0) - y[i].codePointAt(0);
    if (d !== 0) return Math.sign(d);
  }
  return Math.sign(x.length - y.length);
}

function order(a, b) {
  if (typeof a === 'number' && typeof b === 'number') return Math.sign(a - b);
  if (typeof a === 'string' && typeof b === 'string') return codePointOrder(a, b);
  return null;
}

class JsonField {
  static needsBody = true;

  static init(params) {
    params.allowOnly(['path', 'op', 'value']);
    const path = params.require('path');
    if (path === '') throw new ParamError('parameter "path": is empty');
    const segments = path.split('.');
    if (segments.some((s) => s === '')) {
      throw new ParamError(`parameter "path": empty segment in "${path}" (segments are separated by single dots)`);
    }
    const opName = (params.get('op') ?? 'eq').trim().toLowerCase();
    const raw = params.get('value');
    const need = () => {
      if (raw === undefined) throw new ParamError(`missing parameter "value" (op=${opName} needs one)`);
      return raw;
    };
    let test;
    switch (opName) {
      case 'eq': { const v = parseValue(need()); test = (f) => jsonEq(f, v); break; }
      case 'ne': { const v = parseValue(need()); test = (f) => !jsonEq(f, v); break; }
      case 'in': { const list = parseList(need()); test = (f) => list.some((v) => jsonEq(f, v)); break; }
      case 'gt': case 'ge': case 'lt': case 'le': {
        const v = parseValue(need());
        if (typeof v !== 'number' && typeof v !== 'string') {
          throw new ParamError(`parameter "value": op=${opName} compares numbers or strings, got ${JSON.stringify(v)}`);
        }
        const ok = { gt: (o) => o > 0, ge: (o) => o >= 0, lt: (o) => o < 0, le: (o) => o <= 0 }[opName];
        test = (f) => {
          const o = order(f, v);
          return o !== null && ok(o);
        };
        break;
      }
      case 'exists':
        if (raw !== undefined) throw new ParamError('parameter "value": op=exists takes no value');
        test = () => true;
        break;
      default:
        throw new ParamError(`parameter "op": expected eq, ne, in, gt, ge, lt, le or exists, got "${opName}"`);
    }
    return new JsonField(segments, test);
  }

  constructor(segments, test) {
    this.segments = segments;
    this.test = test;
  }

  keep(msg) {
    const text = msg.bodyText();
    if (text === undefined) return false;
    let doc;
    try {
      doc = JSON.parse(text);
    } catch {
      return false;
    }
    let at = doc;
    for (const key of this.segments) {
      if (Array.isArray(at)) {
        if (!/^\d+$/.test(key) || Number(key) >= at.length) return false;
        at = at[Number(key)];
      } else if (at !== null && typeof at === 'object' && Object.hasOwn(at, key)) {
        at = at[key];
      } else {
        return false;
      }
    }
    return this.test(at);
  }
}

export const filter = exportFilter(JsonField);
