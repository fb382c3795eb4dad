// weir's JavaScript filter SDK: the shape of the Rust SDK's `Filter` trait
// (`init(params)`, `keep(message)`) over the contract `wit/filter.wit`, for filters built
// into components with componentize-js (see README.md).
//
// Invariants: a Message reads its attributes in place from the batch's bytes, decoding
// only what is asked (the tag and a looked-up property's value), and stops at anything
// malformed rather than misread it (the encoding is documented in wit/filter.wit); an
// exception in `keep` fails the batch (logged at error level), never a silent verdict.

import { log as hostLog } from 'weir:filter/host@0.1.0';

const utf8 = new TextDecoder('utf-8', { fatal: true });
const encoder = new TextEncoder();

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error'];

/** Writes a line to the broker's log ('trace', 'debug', 'info', 'warn' or 'error'). */
export function log(level, text) {
  hostLog(LEVELS.includes(level) ? level : 'info', String(text));
}

/** The `init` error that rejects an upload: its text names the parameter and why. */
export class ParamError extends Error {
  constructor(message) {
    super(message);
    // componentize-js returns a thrown value's `payload` as the `err` of a result.
    this.payload = { tag: 'bad-params', val: message };
  }
}

/** A batch that cannot be decided: the pull fails and is retried from the same offset. */
export class FilterFailed extends Error {
  constructor(message) {
    super(message);
    this.payload = { tag: 'failed', val: message };
  }
}

/** The upload's parameters, in the order given; every error names the parameter. */
export class Params {
  constructor(pairs) {
    this.pairs = pairs.map(([k, v]) => [k, v]);
  }
  /** The first value of `name`, or undefined. */
  get(name) {
    const p = this.pairs.find(([k]) => k === name);
    return p === undefined ? undefined : p[1];
  }
  getAll(name) {
    return this.pairs.filter(([k]) => k === name).map(([, v]) => v);
  }
  require(name) {
    const v = this.get(name);
    if (v === undefined) throw new ParamError(`missing parameter "${name}"`);
    return v;
  }
  /** A number parameter, or `fallback` when absent. */
  number(name, fallback) {
    const v = this.get(name);
    if (v === undefined) return fallback;
    const n = Number(v.trim());
    if (v.trim() === '' || !Number.isFinite(n)) {
      throw new ParamError(`parameter "${name}": expected a number, got "${v}"`);
    }
    return n;
  }
  /** `true` for true/yes/1/on (or present with no value), `false` for false/no/0/off. */
  flag(name) {
    const v = this.get(name);
    if (v === undefined) return false;
    const t = v.trim().toLowerCase();
    if (['', 'true', 'yes', '1', 'on'].includes(t)) return true;
    if (['false', 'no', '0', 'off'].includes(t)) return false;
    throw new ParamError(`parameter "${name}": expected true or false, got "${v}"`);
  }
  /** Refuses any parameter not in `names`: a typo is an error, not a default. */
  allowOnly(names) {
    const bad = this.pairs.find(([k]) => !names.includes(k));
    if (bad !== undefined) {
      throw new ParamError(
        `unknown parameter "${bad[0]}" (expected ${names.map((n) => `"${n}"`).join(', ') || 'none'})`,
      );
    }
  }
}

function u16(b, at) {
  return b[at] | (b[at + 1] << 8);
}
function u32(b, at) {
  return (b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (b[at + 3] << 24)) >>> 0;
}
function text(b, from, to) {
  try {
    return utf8.decode(b.subarray(from, to));
  } catch {
    return undefined;
  }
}
function sameBytes(b, from, len, name) {
  if (len !== name.length) return false;
  for (let i = 0; i < len; i++) if (b[from + i] !== name[i]) return false;
  return true;
}

/** Encoded property names, so a lookup compares bytes and decodes only the value found. */
const nameCache = new Map();
function nameBytes(name) {
  let b = nameCache.get(name);
  if (b === undefined) {
    b = encoder.encode(name);
    if (nameCache.size < 1024) nameCache.set(name, b);
  }
  return b;
}

/** One message, with accessors over the broker's encoding (wit/filter.wit). */
export class Message {
  /** `null` when the attributes are not in the documented encoding. */
  static decode(m, attributes) {
    const b = attributes;
    const start = m.attributesAt;
    const end = start + m.attributesLen;
    if (end > b.length) return null;
    let at = start;
    if (at + 2 > end) return null;
    const tagLen = u16(b, at);
    const tagAt = at + 2;
    at = tagAt + tagLen;
    if (at + 4 > end) return null;
    const keysAt = at + 4;
    at = keysAt + u32(b, at);
    if (at + 4 > end) return null;
    const propsAt = at + 4;
    at = propsAt + u32(b, at);
    if (at !== end) return null;
    return new Message(m, b, tagAt, tagLen, keysAt, propsAt, end);
  }

  constructor(m, b, tagAt, tagLen, keysAt, propsAt, end) {
    this.m = m;
    this.b = b;
    this.tagAt = tagAt;
    this.tagLen = tagLen;
    this.keysAt = keysAt;
    this.propsAt = propsAt;
    this.end = end;
  }

  /** The position in its queue (a BigInt). */
  get queueOffset() {
    return this.m.queueOffset;
  }
  /** Milliseconds since the Unix epoch, as the producer set it (a BigInt). */
  get bornTimestamp() {
    return this.m.bornTimestamp;
  }
  /** Milliseconds since the Unix epoch, when the broker stored it (a BigInt). */
  get storeTimestamp() {
    return this.m.storeTimestamp;
  }
  get reconsumeCount() {
    return this.m.reconsumeCount;
  }
  /** The tag; '' when the message has none. */
  get tags() {
    return text(this.b, this.tagAt, this.tagAt + this.tagLen) ?? '';
  }
  /** The keys, in order. */
  keys() {
    const out = [];
    const b = this.b;
    const end = this.propsAt - 4;
    let at = this.keysAt;
    while (at + 2 <= end) {
      const len = u16(b, at);
      if (at + 2 + len > end) break;
      const k = text(b, at + 2, at + 2 + len);
      if (k === undefined) break;
      out.push(k);
      at += 2 + len;
    }
    return out;
  }
  /** The properties as [name, value] pairs, in order. */
  properties() {
    const out = [];
    this.scan((nameAt, nameLen, valueAt, valueLen) => {
      const k = text(this.b, nameAt, nameAt + nameLen);
      const v = text(this.b, valueAt, valueAt + valueLen);
      if (k === undefined || v === undefined) return true;
      out.push([k, v]);
      return false;
    });
    return out;
  }
  /** The value of the first property called `name`, or undefined. */
  property(name) {
    const want = nameBytes(name);
    let found;
    this.scan((nameAt, nameLen, valueAt, valueLen) => {
      if (!sameBytes(this.b, nameAt, nameLen, want)) return false;
      found = text(this.b, valueAt, valueAt + valueLen);
      return true;
    });
    return found;
  }
  /** Calls `each(nameAt, nameLen, valueAt, valueLen)` per property until it returns true. */
  scan(each) {
    const b = this.b;
    const end = this.end;
    let at = this.propsAt;
    while (at + 2 <= end) {
      const nameLen = u16(b, at);
      const nameAt = at + 2;
      if (nameAt + nameLen + 4 > end) return;
      const valueLen = u32(b, nameAt + nameLen);
      const valueAt = nameAt + nameLen + 4;
      if (valueAt + valueLen > end) return;
      if (each(nameAt, nameLen, valueAt, valueLen)) return;
      at = valueAt + valueLen;
    }
  }
  /** The body bytes (a Uint8Array) when the filter asked for bodies, else undefined. */
  get body() {
    return this.m.body ?? undefined;
  }
  /** The body as UTF-8 text; undefined when absent or not UTF-8. */
  bodyText() {
    const body = this.body;
    return body === undefined ? undefined : text(body, 0, body.length);
  }
}

/**
 * The `weir:filter/filter` interface for a filter class: export its result as `filter`.
 *
 *   class RegionIs {
 *     static needsBody = false;              // true only if `keep` reads bodies
 *     static init(params) { params.allowOnly(['region']); return new RegionIs(params.require('region')); }
 *     constructor(region) { this.region = region; }
 *     keep(msg) { return msg.property('region') === this.region; }
 *     // beginBatch(ctx) { ... }             // optional: { topic, queueId, consumerGroup }
 *   }
 *   export const filter = exportFilter(RegionIs);
 *
 * `init` throws ParamError to reject the parameters (and so the upload).
 */
export function exportFilter(FilterClass) {
  let instance = null;
  return {
    init(pairs) {
      try {
        instance = FilterClass.init(new Params(pairs));
      } catch (e) {
        throw e instanceof ParamError || e instanceof FilterFailed
          ? e
          : new ParamError(`init: ${e}`);
      }
      return { body: FilterClass.needsBody === true };
    },
    filter(ctx, attributes, messages) {
      if (instance === null) throw new FilterFailed('filter called before init');
      try {
        if (typeof instance.beginBatch === 'function') instance.beginBatch(ctx);
        const verdicts = new Array(messages.length);
        for (let i = 0; i < messages.length; i++) {
          const msg = Message.decode(messages[i], attributes);
          if (msg === null) {
            // As the Rust SDK: the broker only sends valid attributes; never guess.
            throw new FilterFailed(
              `message at queue offset ${messages[i].queueOffset} has malformed attributes`,
            );
          }
          verdicts[i] = instance.keep(msg) === true;
        }
        return verdicts;
      } catch (e) {
        if (e instanceof FilterFailed) throw e;
        const why = `exception in keep: ${e && e.stack ? `${e}\n${e.stack}` : e}`;
        log('error', why);
        throw new FilterFailed(why);
      }
    },
  };
}
