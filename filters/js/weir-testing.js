// Runs a JavaScript filter natively under Node, the way the broker would, for unit tests:
// the shape of the Rust SDK's `testing::run`. Import it statically, then the filter (and
// the SDK, if the test needs it) dynamically, so that they load after its module hook:
//
//   import { run } from './weir-testing.js';
//   const { filter } = await import('./filter.js');
//   run(filter, { region: 'eu' }, [{ properties: { region: 'eu' } }, { tags: 'TagA' }]);
//
// Why a module hook: the SDK imports the broker's `weir:filter/host@0.1.0` (its `log`),
// which only exists inside the component; here it resolves to a stand-in that records the
// lines in `logged`. Invariant: messages reach the filter encoded exactly as the broker
// encodes attributes (wit/filter.wit), through the SDK's same `filter` export.

import { register } from 'node:module';

const HOST = 'weir:filter/host@0.1.0';
const STAND_IN =
  'data:text/javascript,' +
  encodeURIComponent('export function log(level, text) { globalThis.__weirLogged?.push([level, text]); }');
const HOOK =
  'data:text/javascript,' +
  encodeURIComponent(
    `export async function resolve(specifier, context, next) {
       if (specifier === ${JSON.stringify(HOST)}) return { url: ${JSON.stringify(STAND_IN)}, shortCircuit: true };
       return next(specifier, context);
     }`,
  );
register(HOOK, import.meta.url);

/** The lines the filter logged during the last `run`, as [level, text] pairs. */
export const logged = [];
globalThis.__weirLogged = logged;

const encoder = new TextEncoder();

function put(out, bytes, width) {
  const len = bytes.length;
  out.push(len & 0xff, (len >>> 8) & 0xff);
  if (width === 4) out.push((len >>> 16) & 0xff, (len >>> 24) & 0xff);
  for (const b of bytes) out.push(b);
}

function pairs(props) {
  if (props === undefined) return [];
  return Array.isArray(props) ? props : Object.entries(props);
}

/** The attribute bytes the broker would send for a test message (wit/filter.wit). */
export function attributes(msg) {
  const out = [];
  put(out, encoder.encode(msg.tags ?? ''), 2);
  const keys = [];
  for (const k of msg.keys ?? []) put(keys, encoder.encode(k), 2);
  put(out, keys, 4);
  const props = [];
  for (const [k, v] of pairs(msg.properties)) {
    put(props, encoder.encode(k), 2);
    put(props, encoder.encode(v), 4);
  }
  put(out, props, 4);
  return out;
}

/**
 * Initialises `filter` (a module's `filter` export, from `exportFilter`) with `params`
 * (an object or [name, value] pairs) and runs one batch of `messages`: plain objects with
 * optional `tags`, `keys`, `properties` (object or pairs), `body` (string or Uint8Array),
 * `queueOffset`, `bornTimestamp`, `storeTimestamp` (numbers or BigInts),
 * `reconsumeCount`. Returns the verdicts, one boolean per message. Throws what the filter
 * throws: a `ParamError` from `init`, a `FilterFailed` from the batch.
 */
export function run(filter, params, messages, ctx = { topic: 'T', queueId: 0, consumerGroup: 'G' }) {
  logged.length = 0;
  const needs = filter.init(pairs(params).map(([k, v]) => [String(k), String(v)]));
  const bytes = [];
  const batch = messages.map((msg, i) => {
    const attrs = attributes(msg);
    const at = bytes.length;
    for (const b of attrs) bytes.push(b);
    let body;
    if (needs.body) {
      const raw = msg.body ?? new Uint8Array();
      body = typeof raw === 'string' ? encoder.encode(raw) : raw;
    }
    return {
      queueOffset: BigInt(msg.queueOffset ?? i),
      bornTimestamp: BigInt(msg.bornTimestamp ?? 0),
      storeTimestamp: BigInt(msg.storeTimestamp ?? 0),
      reconsumeCount: msg.reconsumeCount ?? 0,
      attributesAt: at,
      attributesLen: attrs.length,
      body,
    };
  });
  return filter.filter(ctx, Uint8Array.from(bytes), batch);
}
