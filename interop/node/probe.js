'use strict';
// Over ~600 lines on purpose: one self-contained file per client probe (as interop/go's
// main.go), run with `node probe.js` and nothing to build; each scenario is one function.
//
// The Node.js interop probe: ali-ons (RocketMQ's pure-JavaScript 4.x client, npm, pinned in
// package.json) as the weir test suite runs it against weir, and
// scripts/test-rocketmq-reference against Apache RocketMQ. Usage, output lines and exit
// codes are those of the Java and Go probes (interop/README.md):
//
//   node interop/node/probe.js <scenario> <namesrv> [key=value ...]
//
// Scenarios: produce, consume, broadcast, orderly, retry, delay, sql92. The client has no
// batch send, no one-way send, no transactions, no pull consumer, no message lookups and no
// topic creation: batch, tx, pull, view and admin (and produce's `oneway` mode) print
// UNSUPPORTED and exit 3.
//
// What ali-ons does differently from the Java client, and what the lines then hold:
// - It sets no UNIQ_KEY: the only id of a sent message is the broker's offsetMsgId (the
//   send response's msgId). SENT carries it as both msgId and offsetMsgId; RECV's msgId is
//   UNIQ_KEY when the producer set one (Java's and Go's do), else the offsetMsgId,
//   as the Java client's MessageClientExt.getMsgId() falls back.
// - It cannot send to a topic without a route (TOPIC_NOT_EXIST from the name server is an
//   error; it never falls back to TBW102): create the topic first.
// - Its "orderly" is a selector only: a message's sharding key (`__SHARDING_KEY`) picks the
//   queue (md5 of the key mod the queue count). Its consumer has no orderly mode (no queue
//   locks); it consumes one message at a time per queue (parallelConsumeLimit 1), in queue
//   order, which keeps an order's steps in order for one member.
// - A handler that throws is retried through CONSUMER_SEND_MSG_BACK with delay level 0 (the
//   broker's choice: 3 + reconsumeTimes) and the consumer's maxReconsumeTimes; if the broker
//   refuses it, the client sends the retry to %RETRY% itself (`retry` fails then).
//
// The client's logger: warnings and errors to stderr; PROBE_LOG=1 adds its info lines.
// Client intervals are shortened: route poll, heartbeat, rebalance and offset persistence
// every second.

const crypto = require('crypto');
const util = require('util');
const { Producer, Consumer, Message } = require('ali-ons');

const started = Date.now();

// ---------------------------------------------------------------- output

function line(...fields) {
  process.stdout.write(fields.join('\t') + '\n');
}

function log(msg) {
  process.stderr.write(new Date().toISOString() + ' ' + msg + '\n');
}

function clean(s) {
  if (s === null || s === undefined) {
    return '';
  }
  return String(s).replace(/[\t\n\r]/g, ' ');
}

function sha(b) {
  return crypto.createHash('sha256').update(b || Buffer.alloc(0)).digest('hex');
}

function done(ok, summary) {
  line('DONE', ok ? 'ok' : 'fail', clean(summary));
}

function ready() {
  line('READY');
  log(`READY ${Date.now() - started} ms after start`);
}

// An application message as the probe made it: the message, its body before the client
// compressed it, tag and key.
function sent(mode, r, app) {
  line('SENT', mode, r.sendStatus, clean(r.msgId), clean(r.msgId), String(r.messageQueue.queueId),
    String(r.queueOffset), clean(app.tag), clean(app.key), String(app.body.length), sha(app.body));
}

function sentNoResult(mode, status, app) {
  line('SENT', mode, status, '', '-', '-1', '-1', clean(app.tag), clean(app.key),
    String(app.body.length), sha(app.body));
}

const VOLATILE = new Set([ 'MIN_OFFSET', 'MAX_OFFSET', 'CONSUME_START_TIME' ]);

function esc(s) {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x25 || c === 0x3b || c === 0x3d || c < 0x20) {
      out += '%' + c.toString(16).toUpperCase().padStart(2, '0');
    } else {
      out += s[i];
    }
  }
  return out;
}

// The decoder leaves an empty name (after the last separator) and TAGS = null when a
// message has no tag: neither is a property.
function props(p) {
  return Object.keys(p || {})
    .filter(k => k !== '' && !VOLATILE.has(k) && p[k] !== null && p[k] !== undefined)
    .sort()
    .map(k => esc(k) + '=' + esc(String(p[k])))
    .join(';');
}

function msgIdOf(m) {
  return (m.properties && m.properties.UNIQ_KEY) || m.msgId;
}

function recv(tag, m) {
  line('RECV', clean(tag), clean(m.topic), String(m.queueId), String(m.queueOffset), clean(msgIdOf(m)),
    clean(m.msgId), clean(m.tags), clean(m.keys), props(m.properties), String(m.reconsumeTimes),
    String(m.body ? m.body.length : 0), sha(m.body), String(m.bornTimestamp), String(m.storeTimestamp),
    String(Date.now()));
}

// ---------------------------------------------------------------- args

class UsageError extends Error {}
class Timeout extends Error {}

class Args {
  constructor(namesrv, kvs) {
    this.namesrv = namesrv;
    this.map = new Map();
    this.used = new Set();
    for (const kv of kvs) {
      const eq = kv.indexOf('=');
      if (eq <= 0) {
        throw new UsageError(`expected key=value, got '${kv}'`);
      }
      this.map.set(kv.slice(0, eq), kv.slice(eq + 1));
    }
  }

  str(k, d) {
    this.used.add(k);
    return this.map.has(k) ? this.map.get(k) : d;
  }

  int(k, d) {
    const v = this.str(k, undefined);
    if (v === undefined) {
      return d;
    }
    if (!/^-?\d+$/.test(v.trim())) {
      throw new UsageError(`bad argument ${k}=${v}`);
    }
    return parseInt(v, 10);
  }

  bool(k, d) {
    const v = this.str(k, undefined);
    return v === undefined ? d : v.trim().toLowerCase() === 'true';
  }

  check() {
    for (const k of this.map.keys()) {
      if (!this.used.has(k)) {
        throw new UsageError(`unknown argument '${k}'`);
      }
    }
  }
}

// ---------------------------------------------------------------- clients

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

const verbose = !!process.env.PROBE_LOG;
const clientLogger = {
  debug() {},
  info(...a) {
    if (verbose) {
      log('ali-ons: ' + util.format(...a));
    }
  },
  warn(...a) {
    const text = util.format(...a);
    // Logged on every route change of a topic it sends to: not a problem.
    if (verbose || !text.includes('updateTopicPublishInfo() prev is not null')) {
      log('ali-ons warn: ' + text);
    }
  },
  error(...a) {
    log('ali-ons error: ' + util.format(...a));
  },
};

// The client's `error` events (a failed route poll, a send-back that failed, ...): logged,
// each distinct message once. A refused CONSUMER_SEND_MSG_BACK is counted: the client then
// falls back to sending the retry itself, which would hide the broker's part.
const seenErrors = new Map();
let sendBackFailures = 0;
function onClientError(err) {
  if (err && err.stack && err.stack.includes('consumerSendMessageBack')) {
    sendBackFailures++;
  }
  const text = String(err && err.message || err);
  const n = (seenErrors.get(text) || 0) + 1;
  seenErrors.set(text, n);
  if (n === 1 || verbose) {
    log(`client error event: ${text}`);
  }
}

function common(a, instance) {
  return {
    // The name server is given; the client asks this only for an Aliyun address server.
    httpclient: {
      async request() {
        throw new Error('no HTTP client: nameSrv is set');
      },
    },
    nameSrv: a.namesrv.split(';'),
    // Aliyun credentials: the client signs every request with them (extFields AccessKey,
    // Signature, OnsChannel), which a broker without ACL ignores.
    accessKeyId: 'weir-interop',
    accessKeySecret: 'weir-interop',
    instanceName: instance,
    logger: clientLogger,
    pollNameServerInteval: 1000,
    heartbeatBrokerInterval: 1000,
    rebalanceInterval: 1000,
    persistConsumerOffsetInterval: 1000,
  };
}

// Every producer and consumer also starts the client's process-wide inner producer (the
// one a consumer sends retries with when CONSUMER_SEND_MSG_BACK fails); made first here so
// that its error events are logged like the others.
async function innerProducer(a, instance) {
  const inner = await Producer.getDefaultProducer(common(a, instance));
  if (!inner.listeners('error').includes(onClientError)) {
    inner.on('error', onClientError);
  }
}

async function producer(a, group, instance) {
  await innerProducer(a, instance);
  const p = new Producer(Object.assign(common(a, instance), {
    producerGroup: group,
    sendMsgTimeout: 5000,
    retryTimesWhenSendFailed: 2,
  }));
  p.on('error', onClientError);
  await p.ready();
  return p;
}

async function pushConsumer(a, group, instance, opts) {
  await innerProducer(a, instance);
  const c = new Consumer(Object.assign(common(a, instance), {
    consumerGroup: group,
    consumeFromWhere: 'CONSUME_FROM_FIRST_OFFSET',
  }, opts || {}));
  c.on('error', onClientError);
  return c;
}

// Closing waits for the client's sockets; bounded, the process exits right after anyway.
async function closeAll(...clients) {
  for (const c of clients) {
    if (c) {
      await Promise.race([ c.close().catch(e => log('close: ' + e.message)), sleep(3000) ]);
    }
  }
}

/**
 * Waits until the consumer's rebalance has settled for `topic`: the group has at least
 * `members` members and the queues it pulls are exactly the share its allocation strategy
 * gives it (all queues when broadcasting). Reads the client's own tables.
 */
async function awaitAssigned(c, topic, members, deadline) {
  const client = c._mqClient;
  const group = c.consumerGroup;
  for (;;) {
    const held = new Set();
    for (const v of c._processQueueTable.values()) {
      if (v.messageQueue.topic === topic) {
        held.add(v.messageQueue.key);
      }
    }
    const all = c._topicSubscribeInfoTable.get(topic);
    let seen = 0;
    if (all && all.length) {
      let expected = null;
      if (c.options.isBroadcast) {
        seen = 1;
        expected = all.map(mq => mq.key);
      } else {
        let cids = null;
        try {
          cids = await client.findConsumerIdList(topic, group);
        } catch (e) {
          // not yet known to the broker
        }
        seen = cids ? cids.length : 0;
        if (cids && cids.includes(client.clientId)) {
          const mqAll = [ ...all ].sort(compareMq);
          expected = c.allocateMessageQueueStrategy.allocate(group, client.clientId, mqAll, [ ...cids ].sort())
            .map(mq => mq.key);
        }
      }
      if (expected && seen >= members && expected.length === held.size && expected.every(k => held.has(k))) {
        const ids = [ ...c._processQueueTable.values() ]
          .filter(v => v.messageQueue.topic === topic)
          .map(v => v.messageQueue.queueId)
          .sort((x, y) => x - y);
        log(`assigned ${topic} queues [${ids}] of ${all.length}, members ${seen}, ${Date.now() - started} ms after start`);
        return;
      }
    }
    if (Date.now() > deadline) {
      throw new Timeout(`rebalance of ${topic} did not settle (held ${held.size} queues, members ${seen}, want >= ${members})`);
    }
    await sleep(50);
  }
}

function compareMq(x, y) {
  if (x.topic !== y.topic) {
    return x.topic > y.topic ? 1 : -1;
  }
  if (x.brokerName !== y.brokerName) {
    return x.brokerName > y.brokerName ? 1 : -1;
  }
  return x.queueId - y.queueId;
}

/**
 * A probe message: tag TagA/TagB alternating, key `<prefix><seq>`, properties color (red
 * for even seq, blue for odd) and n = seq; the body padded to `bigBytes` when > 0 (the
 * client zlib-compresses bodies of 4 KiB and more).
 */
function message(topic, mode, seq, prefix, bigBytes) {
  const tag = seq % 2 === 0 ? 'TagA' : 'TagB';
  let body = `weir-interop ${mode} #${seq}\n`;
  if (bigBytes > 0) {
    while (body.length < bigBytes) {
      body += `the quick brown fox jumps over the lazy dog ${body.length}\n`;
    }
    body = body.slice(0, bigBytes);
  }
  const buf = Buffer.from(body, 'utf8');
  const m = new Message(topic, tag, buf);
  m.keys = [ prefix + seq ];
  m.properties.color = seq % 2 === 0 ? 'red' : 'blue';
  m.properties.n = String(seq);
  return { msg: m, body: buf, tag, key: prefix + seq };
}

/** Sends one application message; prints SENT; true if SEND_OK. */
async function sendOne(p, mode, app) {
  try {
    const r = await p.send(app.msg);
    sent(mode, r, app);
    return r.sendStatus === 'SEND_OK' ? r : null;
  } catch (e) {
    log(`${mode} send of ${app.key} failed: ${e.message}`);
    sentNoResult(mode, 'EXCEPTION', app);
    return null;
  }
}

/** What a consumer received: prints RECV, counts deliveries per message id. */
class Recorder {
  constructor(tag) {
    this.tag = tag;
    this.counts = new Map();
    this.all = [];
    this.deliveries = 0;
    this.last = 0;
  }

  record(m) {
    recv(this.tag, m);
    this.all.push(m);
    const id = msgIdOf(m);
    this.counts.set(id, (this.counts.get(id) || 0) + 1);
    if (++this.deliveries === 1) {
      log(`first message ${Date.now() - started} ms after start, ${Date.now() - m.bornTimestamp} ms after it was born`);
    }
    this.last = Date.now();
  }

  get distinct() {
    return this.counts.size;
  }

  get duplicates() {
    return this.deliveries - this.counts.size;
  }

  /** Until `enough()` and nothing new for `grace` ms; false at `deadline`. */
  async await(enough, grace, deadline) {
    for (;;) {
      const now = Date.now();
      if (enough() && this.last !== 0 && now - this.last >= grace) {
        return true;
      }
      if (now > deadline) {
        return false;
      }
      await sleep(20);
    }
  }
}

function unsupported(feature, why) {
  line('UNSUPPORTED', clean(feature), clean(why));
  done(false, `unsupported: ${feature}`);
  return 3;
}

// ---------------------------------------------------------------- scenarios

// produce topic= group= count= modes=sync,async big= keyPrefix= delayLevel= instance=
async function produce(a, deadline) {
  const topic = a.str('topic', 'InteropT');
  const group = a.str('group', 'interop_node_pg');
  const count = a.int('count', 4);
  const modes = a.str('modes', 'sync,async').split(',');
  const big = a.int('big', 6000);
  const prefix = a.str('keyPrefix', 'n');
  const delayLevel = a.int('delayLevel', 0);
  const instance = a.str('instance', `produce-${process.pid}`);
  a.check();
  for (const mode of modes) {
    if (mode === 'oneway') {
      return unsupported('oneway', 'ali-ons has no one-way send (its send always waits for the result)');
    }
    if (mode !== 'sync' && mode !== 'async') {
      throw new UsageError(`unknown mode ${mode}`);
    }
  }
  const p = await producer(a, group, instance);
  ready();
  let seq = 0;
  let ok = 0;
  let bad = 0;
  for (const mode of modes) {
    const apps = [];
    for (let i = 0; i < count; i++, seq++) {
      const app = message(topic, mode, seq, prefix, seq === 0 ? big : 0);
      if (delayLevel > 0) {
        app.msg.delayTimeLevel = delayLevel;
      }
      apps.push(app);
    }
    let results;
    if (mode === 'sync') {
      // One at a time, each awaited.
      results = [];
      for (const app of apps) {
        results.push(await sendOne(p, mode, app));
      }
    } else {
      // All in flight at once on the client's one connection, awaited together.
      const all = Promise.all(apps.map(app => sendOne(p, mode, app)));
      const timer = sleep(Math.max(0, deadline - Date.now())).then(() => 'timeout');
      results = await Promise.race([ all, timer ]);
      if (results === 'timeout') {
        done(false, 'timeout: async sends not acknowledged');
        return 1;
      }
    }
    for (const r of results) {
      if (r) {
        ok++;
      } else {
        bad++;
      }
    }
  }
  await closeAll(p);
  done(bad === 0, `sent=${ok} failed=${bad}`);
  return bad === 0 ? 0 : 1;
}

const FROM = {
  first: 'CONSUME_FROM_FIRST_OFFSET',
  last: 'CONSUME_FROM_LAST_OFFSET',
  timestamp: 'CONSUME_FROM_TIMESTAMP',
};

// consume / broadcast topic= group= expr= expect= members= grace= allowDup= from= instance=
async function consume(a, deadline, broadcast) {
  const topic = a.str('topic', 'InteropT');
  const group = a.str('group', broadcast ? 'interop_node_bc_cg' : 'interop_node_cg');
  const expr = a.str('expr', '*');
  const expect = a.int('expect', 0);
  const members = a.int('members', 1);
  const grace = a.int('grace', 1500);
  const allowDup = a.bool('allowDup', false);
  const from = a.str('from', 'first');
  if (!(from in FROM)) {
    throw new UsageError(`from must be one of ${Object.keys(FROM).join(', ')}`);
  }
  const instance = a.str('instance', `${broadcast ? 'broadcast' : 'consume'}-${process.pid}`);
  a.check();
  const rec = new Recorder(instance);
  // A new group starts where `from` says: the first offset, the queue's max offset
  // (GET_MAX_OFFSET; ali-ons' default) or the offset of 30 minutes ago
  // (SEARCH_OFFSET_BY_TIMESTAMP; ali-ons' default time).
  const c = await pushConsumer(a, group, instance, { isBroadcast: broadcast, consumeFromWhere: FROM[from] });
  c.subscribe(topic, expr, async msg => {
    rec.record(msg);
  });
  await c.ready();
  try {
    await awaitAssigned(c, topic, members, deadline);
    ready();
    const want = Math.max(1, expect);
    const got = await rec.await(() => rec.distinct >= want, grace, deadline);
    const pass = got && (allowDup || rec.duplicates === 0) && (expect === 0 || rec.distinct === expect);
    done(pass, `received=${rec.distinct} deliveries=${rec.deliveries} duplicates=${rec.duplicates}` +
      (got ? '' : ` (timeout waiting for ${want})`));
    return pass ? 0 : 1;
  } finally {
    await closeAll(c);
  }
}

/**
 * A sharding key per order. ali-ons 3.12.0 picks a key's queue as the md5 of the key (first
 * 4 bytes, big-endian) mod the number of write queues, then looks for that queue with
 * `if (queueId && mq.queueId !== queueId) continue`: a key whose queue is 0 is treated as
 * no key at all and its messages go round-robin over every queue (on any broker). The
 * probe works around that client bug with keys that hash to a queue other than 0
 * (`order-<o>`, else `order-<o>-<salt>`), as an application would have to.
 */
async function shardingKeys(p, topic, orders) {
  const info = await p.tryToFindTopicPublishInfo(topic);
  const ids = new Set(((info && info.messageQueueList) || []).map(mq => mq.queueId));
  const n = ids.size;
  if (n === 0) {
    throw new Error(`no route for topic ${topic} (ali-ons cannot create topics: create it first)`);
  }
  const queueIndex = key => crypto.createHash('md5').update(key).digest().readUInt32BE() % n;
  const keys = [];
  for (let o = 0; o < orders; o++) {
    let key = `order-${o}`;
    for (let salt = 1; n > 1 && queueIndex(key) === 0; salt++) {
      key = `order-${o}-${salt}`;
    }
    keys.push(key);
  }
  return keys;
}

// orderly topic= group= orders= steps= grace= instance=
async function orderly(a, deadline) {
  const topic = a.str('topic', 'InteropOrderT');
  const group = a.str('group', 'interop_node_order_cg');
  const orders = a.int('orders', 10);
  const steps = a.int('steps', 3);
  const grace = a.int('grace', 1000);
  const instance = a.str('instance', `orderly-${process.pid}`);
  a.check();
  const p = await producer(a, group + '_pg', instance);
  const rec = new Recorder(instance);
  const c = await pushConsumer(a, group, instance);
  c.subscribe(topic, '*', async msg => {
    rec.record(msg);
  });
  await c.ready();
  try {
    await awaitAssigned(c, topic, 1, deadline);
    ready();
    const keys = await shardingKeys(p, topic, orders);
    let bad = 0;
    for (let s = 1; s <= steps; s++) {
      for (let o = 0; o < orders; o++) {
        const key = `o${o}s${s}`;
        const body = Buffer.from(`order ${o} step ${s}`);
        const m = new Message(topic, 'TagA', body);
        m.keys = [ key ];
        m.properties.order = String(o);
        m.properties.step = String(s);
        // The client's selector: the sharding key's md5 picks the queue.
        m.shardingKey = keys[o];
        if (!await sendOne(p, 'orderly', { msg: m, body, tag: 'TagA', key })) {
          bad++;
        }
      }
    }
    const total = orders * steps;
    const got = await rec.await(() => rec.distinct >= total, grace, deadline);
    const seen = new Map();
    const queueOf = new Map();
    let sameQueue = true;
    for (const m of rec.all) {
      const o = Number(m.properties.order);
      if (!seen.has(o)) {
        seen.set(o, []);
      }
      seen.get(o).push(Number(m.properties.step));
      if (queueOf.has(o) && queueOf.get(o) !== m.queueId) {
        sameQueue = false;
      }
      queueOf.set(o, m.queueId);
    }
    const want = Array.from({ length: steps }, (_, i) => i + 1).join(',');
    let outOfOrder = 0;
    for (let o = 0; o < orders; o++) {
      const l = (seen.get(o) || []).join(',');
      if (l !== want) {
        outOfOrder++;
        log(`order ${o} got steps [${l}]`);
      }
    }
    const pass = got && bad === 0 && outOfOrder === 0 && sameQueue && rec.duplicates === 0;
    done(pass, `received=${rec.distinct}/${total} duplicates=${rec.duplicates} badOrders=${outOfOrder}` +
      ` sameQueuePerOrder=${sameQueue} sendFailures=${bad}`);
    return pass ? 0 : 1;
  } finally {
    await closeAll(c, p);
  }
}

// retry topic= group= count= fail= max= grace= instance=
async function retry(a, deadline) {
  const topic = a.str('topic', 'InteropRetryT');
  const group = a.str('group', 'interop_node_retry_cg');
  const count = a.int('count', 4);
  const fail = a.int('fail', 2);
  const max = a.int('max', 1);
  const grace = a.int('grace', 2000);
  const instance = a.str('instance', `retry-${process.pid}`);
  a.check();
  const failing = key => /^r\d+$/.test(key || '') && Number(key.slice(1)) < fail;
  const p = await producer(a, group + '_pg', instance);
  let bad = 0;
  for (let i = 0; i < count; i++) {
    if (!await sendOne(p, 'sync', message(topic, 'retry', i, 'r', 0))) {
      bad++;
    }
  }
  const rec = new Recorder(instance);
  const c = await pushConsumer(a, group, instance, { maxReconsumeTimes: max });
  c.subscribe(topic, '*', async msg => {
    rec.record(msg);
    if (failing(msg.keys)) {
      throw new Error(`probe: ${msg.keys} fails (reconsumeTimes ${msg.reconsumeTimes})`);
    }
  });
  await c.ready();
  try {
    await awaitAssigned(c, topic, 1, deadline);
    ready();
    const want = count + fail * max;
    const got = await rec.await(() => rec.deliveries >= want, grace, deadline);
    const times = new Map();
    for (const m of rec.all) {
      if (!times.has(m.keys)) {
        times.set(m.keys, []);
      }
      times.get(m.keys).push(m.reconsumeTimes);
    }
    let wrong = 0;
    for (let i = 0; i < count; i++) {
      const key = 'r' + i;
      const wantTimes = Array.from({ length: failing(key) ? max + 1 : 1 }, (_, t) => t).join(',');
      const l = (times.get(key) || []).join(',');
      if (l !== wantTimes) {
        wrong++;
        log(`key ${key} reconsumeTimes [${l}], want [${wantTimes}]`);
      }
    }
    const pass = got && bad === 0 && wrong === 0 && rec.deliveries === want && sendBackFailures === 0;
    done(pass, `deliveries=${rec.deliveries}/${want} wrongKeys=${wrong} sendFailures=${bad}` +
      ` sendBackFailures=${sendBackFailures}`);
    return pass ? 0 : 1;
  } finally {
    await closeAll(c, p);
  }
}

const LEVELS = [ 0, 1000, 5000, 10000, 30000, 60000, 120000, 180000, 240000, 300000, 360000, 420000,
  480000, 540000, 600000, 1200000, 1800000, 3600000, 7200000 ];

// delay topic= group= count= level= minDelay= grace= instance=
async function delay(a, deadline) {
  const topic = a.str('topic', 'InteropDelayT');
  const group = a.str('group', 'interop_node_delay_cg');
  const count = a.int('count', 2);
  const level = a.int('level', 1);
  if (level < 1 || level >= LEVELS.length) {
    throw new UsageError(`level must be 1..${LEVELS.length - 1}`);
  }
  const minDelay = a.int('minDelay', LEVELS[level] - 100);
  const grace = a.int('grace', 1000);
  const instance = a.str('instance', `delay-${process.pid}`);
  a.check();
  const p = await producer(a, group + '_pg', instance);
  const rec = new Recorder(instance);
  const recvAt = new Map();
  const sentAt = new Map();
  let bad = 0;
  // An undelayed warm-up message first, so the consumer is settled before the delayed
  // sends and the measured delay is the broker's.
  if (!await sendOne(p, 'sync', message(topic, 'delay-warmup', 0, 'dw', 0))) {
    bad++;
  }
  const c = await pushConsumer(a, group, instance);
  c.subscribe(topic, '*', async msg => {
    if (!recvAt.has(msg.keys)) {
      recvAt.set(msg.keys, Date.now());
    }
    rec.record(msg);
  });
  await c.ready();
  try {
    await awaitAssigned(c, topic, 1, deadline);
    ready();
    for (let i = 0; i < count; i++) {
      const app = message(topic, 'delay', i, 'd', 0);
      app.msg.delayTimeLevel = level;
      const t0 = Date.now();
      if (await sendOne(p, 'delay', app)) {
        sentAt.set(app.key, t0);
      } else {
        bad++;
      }
    }
    const got = await rec.await(() => rec.distinct >= count + 1, grace, deadline);
    let early = 0;
    let minSeen = Infinity;
    for (const [ key, t0 ] of sentAt) {
      const r = recvAt.get(key);
      if (r === undefined) {
        continue;
      }
      minSeen = Math.min(minSeen, r - t0);
      if (r - t0 < minDelay) {
        early++;
      }
    }
    const pass = got && bad === 0 && early === 0 && rec.duplicates === 0;
    done(pass, `received=${rec.distinct}/${count + 1} early=${early} minDelayMs=${minSeen === Infinity ? -1 : minSeen}` +
      ` wantMs>=${minDelay}`);
    return pass ? 0 : 1;
  } finally {
    await closeAll(c, p);
  }
}

// sql92 topic= group= count= sql= expectKeys= grace= instance=
async function sql92(a, deadline) {
  const DEFAULT_SQL = "color = 'red' AND n > 3";
  const topic = a.str('topic', 'InteropSqlT');
  const group = a.str('group', 'interop_node_sql_cg');
  const count = a.int('count', 8);
  const sql = a.str('sql', DEFAULT_SQL);
  const ek = a.str('expectKeys', '');
  let expectKeys;
  if (ek) {
    expectKeys = ek.split(',');
  } else if (sql === DEFAULT_SQL) {
    expectKeys = [];
    for (let i = 0; i < count; i++) {
      if (i % 2 === 0 && i > 3) {
        expectKeys.push('s' + i);
      }
    }
  } else {
    throw new UsageError('expectKeys is required with a custom sql');
  }
  const grace = a.int('grace', 1500);
  const instance = a.str('instance', `sql92-${process.pid}`);
  a.check();
  const p = await producer(a, group + '_pg', instance);
  let bad = 0;
  for (let i = 0; i < count; i++) {
    if (!await sendOne(p, 'sync', message(topic, 'sql92', i, 's', 0))) {
      bad++;
    }
  }
  const rec = new Recorder(instance);
  const c = await pushConsumer(a, group, instance);
  // The client's SQL92 subscription: an expression object instead of a tag string.
  c.subscribe(topic, { expressionType: 'SQL92', subString: sql }, async msg => {
    rec.record(msg);
  });
  await c.ready();
  try {
    await awaitAssigned(c, topic, 1, deadline);
    ready();
    const got = await rec.await(() => rec.distinct >= expectKeys.length, grace, deadline);
    const keys = rec.all.map(m => m.keys).sort();
    const want = [ ...expectKeys ].sort();
    const pass = got && bad === 0 && keys.join(',') === want.join(',');
    done(pass, `received=[${keys}] want=[${want}] sendFailures=${bad}`);
    return pass ? 0 : 1;
  } finally {
    await closeAll(c, p);
  }
}

const SCENARIOS = {
  produce: (a, d) => produce(a, d),
  consume: (a, d) => consume(a, d, false),
  broadcast: (a, d) => consume(a, d, true),
  orderly,
  retry,
  delay,
  sql92,
};

const MISSING = {
  batch: 'ali-ons has no batch send (SEND_BATCH_MESSAGE)',
  tx: 'ali-ons has no transactional producer (no END_TRANSACTION, no check-back)',
  pull: 'ali-ons has only a push consumer',
  view: 'ali-ons has no message lookups (viewMessage and queryMessage are commented out)',
  admin: 'ali-ons cannot create topics (createTopic is commented out)',
};

async function main(argv) {
  const scenario = argv[0];
  if (argv.length < 2 || !(scenario in SCENARIOS || scenario in MISSING)) {
    process.stderr.write('usage: node probe.js <scenario> <namesrv host:port[;host:port]> [key=value ...]\n' +
      `scenarios: ${Object.keys(SCENARIOS).join(' ')}\n`);
    return 2;
  }
  if (scenario in MISSING) {
    return unsupported(scenario, MISSING[scenario]);
  }
  const a = new Args(argv[1], argv.slice(2));
  const timeout = a.int('timeout', 60000);
  const deadline = Date.now() + timeout;
  // A hung client call must not keep the probe alive.
  setTimeout(() => {
    done(false, `watchdog: scenario still running after ${timeout + 15000} ms`);
    process.exit(1);
  }, timeout + 15000).unref();
  const rc = await SCENARIOS[scenario](a, deadline);
  log(`${scenario} finished ${Date.now() - started} ms after start`);
  return rc;
}

main(process.argv.slice(2)).then(rc => {
  process.exit(rc);
}, err => {
  if (err instanceof UsageError) {
    log(`bad argument: ${err.message}`);
    done(false, `bad argument: ${err.message}`);
    process.exit(2);
  } else if (err instanceof Timeout) {
    log(`timeout: ${err.message}`);
    done(false, `timeout: ${err.message}`);
    process.exit(1);
  } else {
    log(err && err.stack || String(err));
    done(false, `exception: ${err && err.message || err}`);
    process.exit(2);
  }
});
