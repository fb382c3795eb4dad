#!/usr/bin/env python3
"""The Python interop probe: unchanged programs of RocketMQ's Python client `rocketmq` 0.4.4
(PyPI; ctypes over the rocketmq-client-cpp library its wheel bundles) that the weir test
suite runs against weir, and scripts/test-rocketmq-reference against Apache RocketMQ.
Usage, output lines and exit codes are those of the Java and Go probes (interop/README.md):

    python probe.py <scenario> <namesrv> [key=value ...]

Scenarios: produce, batch, consume, broadcast, pull, orderly, retry, delay. Anything else
(the package has no transaction producer, no SQL92 selector, no lookups and no admin API)
prints UNSUPPORTED and exits 3.

What the package cannot tell (and the lines then say `-` or -1): a send's offsetMsgId and
queue (its SendResult has the producer's id and the queue offset only), a received
message's offsetMsgId (it has the commit log offset, not the store host), a property list
(properties are read by name: the probe asks for the ones RocketMQ and the probes set).
Bodies are read as C strings (up to a NUL byte; the probes' bodies have none).

The C++ client logs to $HOME/logs/rocketmq-cpp; the probe points HOME at a fresh temp dir
(removed at exit) unless PROBE_LOG_DIR names one to keep (then at INFO, else WARN).
"""

import os
import shutil
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ beside the sources
import probe_common  # noqa: E402
from probe_common import (  # noqa: E402
    STATUS_NAMES, Args, Recorder, Usage, await_members, clean, done, line, load_client, log,
    log_level,
    message, ms_since_start, producer, push_consumer, send_and_report, sent, shutdown_all,
    subscribe, uniq_key,
)

# The package, imported by load_client() once HOME points at the log dir.
rmq = None
ffi = None

# ---------------------------------------------------------------- scenarios

def produce(a, deadline):
    topic = a.str("topic", "InteropT")
    group = a.str("group", "interop_py_pg")
    count = a.int("count", 4)
    modes = a.str("modes", "sync,async,oneway,orderly").split(",")
    big = a.int("big", 6000)
    prefix = a.str("keyPrefix", "p")
    instance = a.instance("produce")
    a.check()
    for mode in modes:
        if mode not in ("sync", "async", "oneway", "orderly"):
            raise Usage("unknown mode " + mode)
    p = producer(a, group, instance)
    line("READY")
    seq, ok, bad = 0, 0, 0
    try:
        for mode in modes:
            if mode == "async":
                pending = threading.Semaphore(0)
                results = []
                keep = []  # messages stay alive until their callback ran
                for _ in range(count):
                    m, info = message(topic, mode, seq, prefix)
                    seq += 1
                    keep.append(m)

                    def on_ok(r, info=info, m=m):
                        results.append(("ok", r, info, m))
                        pending.release()

                    def on_err(e, info=info, m=m):
                        results.append(("err", e, info, m))
                        pending.release()
                    p.send_async(m, on_ok, on_err)
                for _ in range(count):
                    if not pending.acquire(timeout=max(0.0, deadline - time.time())):
                        done(False, "timeout: async sends not acknowledged")
                        return False
                for kind, r, info, m in results:
                    if kind == "ok":
                        sent("async", STATUS_NAMES.get(int(r.status), str(r.status)), r.msg_id, -1, r.offset, info)
                        ok, bad = (ok + 1, bad) if int(r.status) == 0 else (ok, bad + 1)
                    else:
                        log("async send failed: %s" % (r,))
                        sent("async", "EXCEPTION", uniq_key(m), -1, -1, info)
                        bad += 1
                continue
            for _ in range(count):
                m, info = message(topic, mode, seq, prefix, big if seq == 0 else 0)
                seq += 1
                if mode == "oneway":
                    try:
                        p.send_oneway(m)
                    except Exception as e:
                        log("oneway send failed: %r" % (e,))
                        sent("oneway", "EXCEPTION", uniq_key(m), -1, -1, info)
                        bad += 1
                        continue
                    sent("oneway", "NONE", uniq_key(m), -1, -1, info)
                    ok += 1
                    continue
                # Orderly: the package's hashing selector with arg = seq.
                if send_and_report(p, mode, m, info, seq - 1 if mode == "orderly" else None):
                    ok += 1
                else:
                    bad += 1
    finally:
        # One-way sends are written, not answered: give them a moment on the wire.
        time.sleep(0.3)
        shutdown_all(p)
    done(bad == 0, "sent=%d failed=%d" % (ok, bad))
    return bad == 0


def batch(a, deadline):
    topic = a.str("topic", "InteropBatchT")
    group = a.str("group", "interop_py_batch_pg")
    count = a.int("count", 10)
    prefix = a.str("keyPrefix", "b")
    instance = a.instance("batch")
    a.check()
    p = producer(a, group, instance)
    line("READY")
    try:
        msgs, infos = [], []
        for i in range(count):
            m, info = message(topic, "batch", i, prefix)
            msgs.append(m)
            infos.append(info)
        try:
            r = p.send_batch(msgs)
        except Exception as e:
            log("batch send failed: %r" % (e,))
            for info in infos:
                sent("batch", "EXCEPTION", "-", -1, -1, info)
            done(False, "batch send failed: %s" % (e,))
            return False
        # The C++ client answers a batch with the first queue offset and no id (it takes
        # the id from the batch's own UNIQ_KEY, which only its messages carry).
        status = STATUS_NAMES.get(int(r.status), str(r.status))
        ids = [i for i in r.msg_id.split(",") if i]
        for i, info in enumerate(infos):
            sent("batch", status, ids[i] if i < len(ids) else "-", -1, r.offset + i, info)
        good = int(r.status) == 0
        done(good, "status=%s firstOffset=%d" % (status, r.offset))
        return good
    finally:
        shutdown_all(p)


def consume(a, deadline, broadcasting=False):
    topic = a.str("topic", "InteropT")
    group = a.str("group", "interop_py_bc_cg" if broadcasting else "interop_py_cg")
    expr = a.str("expr", "*")
    expect = a.int("expect", 0)
    members = a.int("members", 1)
    settle = a.int("settle", 1000)
    grace = a.int("grace", 1500)
    allow_dup = a.bool("allowDup", False)
    instance = a.instance("broadcast" if broadcasting else "consume")
    a.check()
    rec = Recorder(instance)
    c = push_consumer(a, group, instance, broadcasting=broadcasting)

    def handler(m):
        rec.record(m)
        return True
    subscribe(c, topic, expr, handler)
    c.start()
    try:
        if not await_members(a, topic, group, members, settle, deadline):
            done(False, "timeout: the group never had %d members" % members)
            return False
        line("READY")
        log("READY %d ms after start" % ms_since_start())
        want = max(expect, 1)
        got = rec.await_(lambda d, t: d >= want, grace, deadline)
        distinct, total, _ = rec.snapshot()
    finally:
        shutdown_all(c)
    dup = total - distinct
    good = got and (allow_dup or dup == 0) and (expect == 0 or distinct == expect)
    note = "" if got else " (timeout waiting for %d)" % want
    done(good, "received=%d deliveries=%d duplicates=%d%s" % (distinct, total, dup, note))
    return good


def pull(a, deadline):
    """PullConsumer: every queue of the topic from offset 0 (the package keeps offsets in
    the process), until `expect` distinct messages, polling again while short."""
    topic = a.str("topic", "InteropT")
    group = a.str("group", "interop_py_pull_cg")
    expr = a.str("expr", "*")
    expect = a.int("expect", 0)
    grace = a.int("grace", 1500)
    instance = a.instance("pull")
    a.check()
    rec = Recorder(instance)
    c = rmq.PullConsumer(group)
    c.offset_table = {}
    c.set_namesrv_addr(a.namesrv)
    rmq.dll.SetPullConsumerLogLevel(c._handle, log_level())
    c.start()
    line("READY")
    want = max(expect, 1)
    try:
        while True:
            for m in c.pull(topic, expr):
                rec.record(m)
            d, t, last = rec.snapshot()
            if d >= want and time.time() - last >= grace / 1000.0:
                break
            if time.time() > deadline:
                break
            time.sleep(0.1)
        distinct, total, _ = rec.snapshot()
    finally:
        shutdown_all(c)
    good = distinct >= want and total == distinct and (expect == 0 or distinct == expect)
    done(good, "received=%d deliveries=%d duplicates=%d" % (distinct, total, total - distinct))
    return good


def orderly(a, deadline):
    """The topic must exist (the package cannot create one): a MessageListenerOrderly-style
    consumer (the C++ client locks its queues on the broker), READY once the group is
    registered and settled, then orders x steps sent step-major with send_orderly(arg=order)
    (queue = order % queues), key o<order>s<step>, properties order and step. OK if each
    order's steps arrive 1..steps on one queue, once each."""
    topic = a.str("topic", "InteropOrderT")
    group = a.str("group", "interop_py_order_cg")
    orders = a.int("orders", 10)
    steps = a.int("steps", 3)
    settle = a.int("settle", 1000)
    grace = a.int("grace", 1000)
    instance = a.instance("orderly")
    a.check()
    p = producer(a, group + "_pg", instance)
    rec = Recorder(instance)
    c = push_consumer(a, group, instance, orderly=True)

    def handler(m):
        rec.record(m)
        return True
    subscribe(c, topic, "*", handler, orderly=True)
    c.start()
    bad = 0
    try:
        if not await_members(a, topic, group, 1, settle, deadline):
            done(False, "timeout: the consumer never registered")
            return False
        line("READY")
        for s in range(1, steps + 1):
            for o in range(orders):
                m = rmq.Message(topic)
                m.set_tags("TagA")
                m.set_keys("o%ds%d" % (o, s))
                m.set_property("order", str(o))
                m.set_property("step", str(s))
                body = ("order %d step %d" % (o, s)).encode()
                m.set_body(body)
                info = {"tags": "TagA", "keys": "o%ds%d" % (o, s), "body": body}
                if not send_and_report(p, "orderly", m, info, o):
                    bad += 1
        total = orders * steps
        got = rec.await_(lambda d, t: d >= total, grace, deadline)
        entries = rec.entries()
    finally:
        shutdown_all(c, p)
    seen, queue_of, same_queue = {}, {}, True
    for e in entries:
        o = int(e["order"])
        seen.setdefault(o, []).append(int(e["step"]))
        q = queue_of.setdefault(o, e["queue"])
        if q != e["queue"]:
            same_queue = False
    out_of_order = 0
    for o in range(orders):
        if seen.get(o, []) != list(range(1, steps + 1)):
            out_of_order += 1
            log("order %d got steps %s" % (o, seen.get(o, [])))
    distinct, total_seen, _ = rec.snapshot()
    good = got and bad == 0 and out_of_order == 0 and same_queue and total_seen == distinct
    done(good, "received=%d/%d duplicates=%d badOrders=%d sameQueuePerOrder=%s sendFailures=%d" % (
        distinct, orders * steps, total_seen - distinct, out_of_order, str(same_queue).lower(), bad))
    return good


def retry(a, deadline):
    """Sends `count` (keys r0..), then consumes; the listener returns RECONSUME_LATER for keys
    r0..r<fail-1> every time. The C++ client sends them back with delay level 0 (the
    broker's 3 + reconsumeTimes) and no maximum of its own (0.4.4 has no setter), so the
    broker's default applies: `max`=16 redeliveries, then %DLQ%<group>. OK if a failing key
    arrives max+1 times with reconsumeTimes 0..max and every other key once (that it then
    sits in the dead-letter topic is for the caller to check: the package cannot query).

    The C++ client hands the listener a pulled batch one message at a time and stops at the
    first RECONSUME_LATER, sending the rest of the batch back unseen: two failing keys
    redelivered together through the one retry queue can skip each other's deliveries. So
    `fail` is 1 by default, and `count` should not exceed the topic's queues."""
    topic = a.str("topic", "InteropRetryT")
    group = a.str("group", "interop_py_retry_cg")
    count = a.int("count", 4)
    fail = a.int("fail", 1)
    max_times = a.int("max", 16)
    settle = a.int("settle", 1000)
    grace = a.int("grace", 2000)
    instance = a.instance("retry")
    a.check()
    p = producer(a, group + "_pg", instance)
    rec = Recorder(instance)
    c = push_consumer(a, group, instance)

    def failing(key):
        return key.startswith("r") and key[1:].isdigit() and int(key[1:]) < fail

    def handler(m):
        rec.record(m)
        return not failing(clean(m.keys))
    subscribe(c, topic, "*", handler)
    bad = 0
    try:
        # The sends first: they create the topic, and a new group reads a young queue
        # from its start (the C++ consumer would wait 30 s for a route it lacks at start).
        for i in range(count):
            m, info = message(topic, "retry", i, "r")
            if not send_and_report(p, "sync", m, info):
                bad += 1
        c.start()
        if not await_members(a, topic, group, 1, settle, deadline):
            done(False, "timeout: the consumer never registered")
            return False
        line("READY")
        want = count + fail * max_times
        got = rec.await_(lambda d, t: t >= want, grace, deadline)
        entries = rec.entries()
    finally:
        shutdown_all(c, p)
    times = {}
    for e in entries:
        times.setdefault(e["keys"], []).append(e["reconsume"])
    wrong = 0
    for i in range(count):
        key = "r%d" % i
        want_times = list(range(max_times + 1)) if failing(key) else [0]
        if times.get(key, []) != want_times:
            wrong += 1
            log("key %s reconsumeTimes %s, want %s" % (key, times.get(key, []), want_times))
    total = len(entries)
    good = got and bad == 0 and wrong == 0 and total == count + fail * max_times
    done(good, "deliveries=%d/%d wrongKeys=%d sendFailures=%d" % (total, count + fail * max_times, wrong, bad))
    return good


DELAY_LEVELS = [0, 1000, 5000, 10000, 30000, 60000, 120000, 180000, 240000, 300000, 360000, 420000,
                480000, 540000, 600000, 1200000, 1800000, 3600000, 7200000]


def delay(a, deadline):
    topic = a.str("topic", "InteropDelayT")
    group = a.str("group", "interop_py_delay_cg")
    count = a.int("count", 2)
    level = a.int("level", 1)
    if level < 1 or level >= len(DELAY_LEVELS):
        raise Usage("level must be 1..%d" % (len(DELAY_LEVELS) - 1))
    min_delay = a.int("minDelay", DELAY_LEVELS[level] - 100)
    settle = a.int("settle", 1000)
    grace = a.int("grace", 1000)
    instance = a.instance("delay")
    a.check()
    p = producer(a, group + "_pg", instance)
    rec = Recorder(instance)
    recv_at = {}
    c = push_consumer(a, group, instance)

    def handler(m):
        recv_at.setdefault(clean(m.keys), time.time())
        rec.record(m)
        return True
    subscribe(c, topic, "*", handler)
    bad = 0
    sent_at = {}
    try:
        # An undelayed warm-up creates the topic, so the consumer can settle before the
        # delayed sends and the measured delay is the broker's.
        w, winfo = message(topic, "delay-warmup", 0, "dw")
        if not send_and_report(p, "sync", w, winfo):
            bad += 1
        c.start()
        if not await_members(a, topic, group, 1, settle, deadline):
            done(False, "timeout: the consumer never registered")
            return False
        line("READY")
        for i in range(count):
            m, info = message(topic, "delay", i, "d")
            m.set_delay_time_level(level)
            sent_at[info["keys"]] = time.time()
            if not send_and_report(p, "delay", m, info):
                bad += 1
        # The warm-up may be skipped by a new group starting at the queues' end.
        got = rec.await_(lambda d, t: all(k in recv_at for k in sent_at), grace, deadline)
    finally:
        shutdown_all(c, p)
    early, min_seen = 0, None
    for k, t0 in sent_at.items():
        if k not in recv_at:
            continue
        d = int((recv_at[k] - t0) * 1000)
        min_seen = d if min_seen is None else min(min_seen, d)
        if d < min_delay:
            early += 1
    distinct, total, _ = rec.snapshot()
    good = got and bad == 0 and early == 0 and total == distinct
    done(good, "received=%d delayed=%d/%d early=%d minDelayMs=%d wantMs>=%d" % (
        distinct, sum(1 for k in sent_at if k in recv_at), count, early,
        -1 if min_seen is None else min_seen, min_delay))
    return good


SCENARIOS = {
    "produce": produce,
    "batch": batch,
    "consume": consume,
    "broadcast": lambda a, d: consume(a, d, broadcasting=True),
    "pull": pull,
    "orderly": orderly,
    "retry": retry,
    "delay": delay,
}

UNSUPPORTED = {
    "tx": "rocketmq 0.4.4 has no transaction producer",
    "sql92": "rocketmq 0.4.4 subscribes by tag expression only (no SQL92 selector)",
    "view": "rocketmq 0.4.4 has no message lookups",
    "admin": "rocketmq 0.4.4 has no admin API (no topic creation)",
}


def main():
    if len(sys.argv) < 3:
        sys.stderr.write("usage: probe.py <%s> <namesrv> [key=value ...]\n" % "|".join(SCENARIOS))
        return 2
    scenario, namesrv = sys.argv[1], sys.argv[2]
    rc = 2
    tmp_home = None
    try:
        a = Args(namesrv, sys.argv[3:])
        timeout = a.int("timeout", 60000)
        deadline = time.time() + timeout / 1000.0

        def watchdog():
            time.sleep(timeout / 1000.0 + 15)
            done(False, "watchdog: scenario still running")
            os._exit(1)
        threading.Thread(target=watchdog, daemon=True).start()
        if scenario not in SCENARIOS:
            why = UNSUPPORTED.get(scenario, "not implemented in the Python probe")
            line("UNSUPPORTED", clean(scenario), why + " (%s are)" % ", ".join(SCENARIOS))
            done(False, "unsupported scenario " + scenario)
            return 3
        global rmq, ffi
        _, tmp_home = load_client()
        rmq, ffi = probe_common.rmq, probe_common.ffi
        ok = SCENARIOS[scenario](a, deadline)
        log("%s finished %d ms after start" % (scenario, ms_since_start()))
        rc = 0 if ok else 1
    except Usage as e:
        log("error: %s" % e)
        done(False, str(e))
        rc = 2
    except Exception as e:
        log("error: %r" % (e,))
        done(False, repr(e))
        rc = 2
    finally:
        if tmp_home:
            shutil.rmtree(tmp_home, ignore_errors=True)
    return rc


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The package's objects shut their clients down again in __del__ at interpreter exit,
    # after the library's own threads are gone; leave without running them.
    os._exit(code)
