"""Shared parts of the Python interop probe (probe.py): the output lines, arguments, the
package's clients set up as the probes use them, a recorder of received messages, and two
raw remoting calls for READY. See probe.py and interop/README.md."""
import ctypes
import hashlib
import json
import os
import socket
import struct
import sys
import tempfile
import threading
import time

STARTED = time.time()
_out_lock = threading.Lock()


# ---------------------------------------------------------------- output

def line(*fields):
    with _out_lock:
        sys.stdout.write("\t".join(fields) + "\n")
        sys.stdout.flush()


def log(msg):
    sys.stderr.write("%s %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def clean(s):
    if s is None:
        return ""
    if isinstance(s, bytes):
        s = s.decode("utf-8", "replace")
    return s.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def sha(b):
    return hashlib.sha256(b).hexdigest()


def ms_since_start():
    return int((time.time() - STARTED) * 1000)


_done_once = threading.Lock()


def done(ok, summary):
    if _done_once.acquire(blocking=False):
        line("DONE", "ok" if ok else "fail", clean(summary))


def esc(s):
    out = []
    for c in s:
        if c in "%;=" or ord(c) < 0x20:
            out.append("%%%02X" % ord(c))
        else:
            out.append(c)
    return "".join(out)


class Usage(Exception):
    pass


# ---------------------------------------------------------------- args

class Args:
    def __init__(self, namesrv, pairs):
        self.namesrv = namesrv
        self.m = {}
        self.used = set()
        for kv in pairs:
            k, sep, v = kv.partition("=")
            if not sep or not k:
                raise Usage("expected key=value, got " + kv)
            self.m[k] = v

    def str(self, k, d):
        self.used.add(k)
        return self.m.get(k, d)

    def int(self, k, d):
        v = self.str(k, None)
        if v is None or v == "":
            return d
        try:
            return int(v)
        except ValueError:
            raise Usage("bad argument %s=%s" % (k, v))

    def bool(self, k, d):
        v = self.str(k, None)
        if v is None or v == "":
            return d
        if v not in ("true", "false"):
            raise Usage("bad argument %s=%s (true or false)" % (k, v))
        return v == "true"

    def check(self):
        unknown = sorted(set(self.m) - self.used)
        if unknown:
            raise Usage("unknown argument '%s'" % unknown[0])

    def instance(self, scenario):
        return self.str("instance", "%s-%d" % (scenario, os.getpid()))


# ---------------------------------------------------------------- the client

def load_client():
    """Imports the package after HOME points at the log dir (the C++ logger reads it once)."""
    keep = os.environ.get("PROBE_LOG_DIR")
    home = keep or tempfile.mkdtemp(prefix="weir-pyprobe-")
    os.makedirs(home, exist_ok=True)
    os.environ["HOME"] = home
    global rmq, ffi
    import rocketmq.client as rmq  # noqa: E402
    import rocketmq.ffi as ffi  # noqa: E402
    return home, (None if keep else home)


# The C++ client's log levels (rocketmq/ffi.py _CLogLevel): WARN 3, INFO 4.
def log_level():
    return 4 if os.environ.get("PROBE_LOG_DIR") else 3


STATUS_NAMES = {0: "SEND_OK", 1: "FLUSH_DISK_TIMEOUT", 2: "FLUSH_SLAVE_TIMEOUT", 3: "SLAVE_NOT_AVAILABLE"}

# Properties a received message is asked for (the package cannot list them): RocketMQ's
# own that reach a consumer, and the user properties the probes set.
PROPS = ["UNIQ_KEY", "KEYS", "TAGS", "WAIT", "DELAY", "REAL_TOPIC", "REAL_QID", "RETRY_TOPIC",
         "ORIGIN_MESSAGE_ID", "RECONSUME_TIME", "MAX_RECONSUME_TIMES", "PGROUP", "TRAN_MSG",
         "color", "n", "order", "step"]


def producer(a, group, instance):
    p = rmq.Producer(group, timeout=5000)
    p.set_namesrv_addr(a.namesrv)
    rmq.dll.SetProducerInstanceName(p._handle, instance.encode())
    rmq.dll.SetProducerLogLevel(p._handle, log_level())
    p.start()
    return p


def push_consumer(a, group, instance, orderly=False, broadcasting=False):
    model = ffi.MessageModel.BROADCASTING if broadcasting else ffi.MessageModel.CLUSTERING
    c = rmq.PushConsumer(group, orderly=orderly, message_model=model)
    c.set_namesrv_addr(a.namesrv)
    c.set_instance_name(instance)
    c.set_message_batch_max_size(1)
    rmq.dll.SetPushConsumerLogLevel(c._handle, log_level())
    return c


def message(topic, mode, seq, prefix, big=0):
    """Tag TagA/TagB alternating, key <prefix><seq>, properties color (red even, blue odd)
    and n = seq; the body padded to `big` bytes when > 0 (compressed over 4 KiB)."""
    tag, color = ("TagA", "red") if seq % 2 == 0 else ("TagB", "blue")
    body = "weir-interop %s #%d\n" % (mode, seq)
    if big > 0:
        parts = [body]
        n = len(body)
        while n < big:
            s = "the quick brown fox jumps over the lazy dog %d\n" % n
            parts.append(s)
            n += len(s)
        body = "".join(parts)[:big]
    m = rmq.Message(topic)
    m.set_tags(tag)
    m.set_keys(prefix + str(seq))
    m.set_property("color", color)
    m.set_property("n", str(seq))
    m.set_body(body)
    return m, {"tags": tag, "keys": prefix + str(seq), "body": body.encode()}


def uniq_key(m):
    # The client sets UNIQ_KEY on the caller's message when sending; the package's own
    # queue-selector hook reads a sent message the same way (RecvMessage over it).
    v = rmq.dll.GetMessageProperty(m._handle, b"UNIQ_KEY")
    return clean(v) or "-"


def sent(mode, status, msg_id, queue_id, queue_offset, info):
    line("SENT", mode, status, clean(msg_id) or "-", "-", str(queue_id), str(queue_offset),
         info["tags"], info["keys"], str(len(info["body"])), sha(info["body"]))


def send_and_report(p, mode, m, info, order_arg=None):
    """Sends `m` synchronously (with `order_arg`: `send_orderly` through the package's
    selector, queue = arg % queues) and prints its SENT line (EXCEPTION if it raised).
    True if the broker answered SEND_OK."""
    chosen = []

    def selector(n, _msg, arg):
        q = ctypes.cast(arg, ctypes.POINTER(ctypes.c_int))[0] % n
        chosen.append(q)
        return q
    try:
        if order_arg is None:
            r = p.send_sync(m)
        else:
            r = p.send_orderly(m, order_arg, queue_selector=selector)
    except Exception as e:
        log("%s send failed: %r" % (mode, e))
        sent(mode, "EXCEPTION", uniq_key(m), -1, -1, info)
        return False
    sent(mode, STATUS_NAMES.get(int(r.status), str(r.status)), r.msg_id, chosen[-1] if chosen else -1,
         r.offset, info)
    return int(r.status) == 0


def props_of(m):
    parts = []
    for k in sorted(PROPS):
        v = m.get_property(k)
        if v:
            parts.append(esc(k) + "=" + esc(clean(v)))
    return ";".join(parts)


def recv(tag, m, body):
    line("RECV", clean(tag), clean(m.topic), str(m.queue_id), str(m.queue_offset), clean(m.id), "-",
         clean(m.tags), clean(m.keys), props_of(m), str(m.reconsume_times), str(len(body)), sha(body),
         str(m.born_timestamp), str(m.store_timestamp), str(int(time.time() * 1000)))


class Recorder:
    """What a listener saw: each message by id, in arrival order."""

    def __init__(self, tag):
        self.tag = tag
        self.lock = threading.Lock()
        self.counts = {}
        self.seen = []  # dicts: id, keys, queue, reconsume, props
        self.last = 0.0

    def record(self, m):
        body = m.body or b""
        recv(self.tag, m, body)
        entry = {
            "id": clean(m.id), "keys": clean(m.keys), "queue": m.queue_id,
            "reconsume": m.reconsume_times, "order": clean(m.get_property("order")),
            "step": clean(m.get_property("step")), "at": time.time(),
        }
        with self.lock:
            if not self.seen:
                log("first message %d ms after start, %d ms after it was born" % (
                    ms_since_start(), int(time.time() * 1000) - m.born_timestamp))
            self.counts[entry["id"]] = self.counts.get(entry["id"], 0) + 1
            self.seen.append(entry)
            self.last = time.time()

    def snapshot(self):
        with self.lock:
            return len(self.counts), len(self.seen), self.last

    def entries(self):
        with self.lock:
            return list(self.seen)

    def await_(self, cond, grace_ms, deadline):
        """Until cond(distinct, total) holds and nothing new came for grace; False at deadline."""
        while True:
            d, t, last = self.snapshot()
            if cond(d, t) and time.time() - last >= grace_ms / 1000.0:
                return True
            if time.time() > deadline:
                return False
            time.sleep(0.02)


def subscribe(c, topic, expr, handler, orderly=False):
    """Registers `handler(msg) -> bool` (True: consumed) through the package's C callback.

    The package's public `subscribe` wraps the callback so that an exception means
    RECONSUME_LATER, but re-raises it from a `finally`, so ctypes swallows it and the C++
    client reads 0, CONSUME_SUCCESS: with rocketmq 0.4.4 a raising callback never asks for a
    redelivery. The probe registers its callback the way `subscribe` does (Subscribe, then
    the package's own `_register_callback`) and returns the status itself.
    """
    def on_message(_consumer, cmsg):
        try:
            ok = handler(rmq.RecvMessage(cmsg))
        except Exception as e:  # a probe bug: say so, and ask for a redelivery
            log("listener error: %r" % (e,))
            ok = False
        return (ffi._CConsumeStatus.CONSUME_SUCCESS if ok else ffi._CConsumeStatus.RECONSUME_LATER).value

    rmq.ffi_check(rmq.dll.Subscribe(c._handle, topic.encode(), expr.encode()))
    c._register_callback(on_message)


def shutdown_all(*clients):
    """Shuts clients down (consumers persist their offsets), bounded: a hung client call
    must not keep the probe alive."""
    def run():
        for c in clients:
            if c is None:
                continue
            try:
                c.shutdown()
            except Exception as e:
                log("shutdown: %r" % (e,))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(15)
    if t.is_alive():
        log("shutdown still running after 15 s; leaving it")


# ---------------------------------------------------------------- a little remoting
# Only to learn when a group's members are all registered (READY with members=N): the
# package has no admin API. GET_ROUTEINFO_BY_TOPIC (105) from the name server, then
# GET_CONSUMER_LIST_BY_GROUP (38) from the topic's first master.

def remoting_call(addr, code, ext, timeout=3.0):
    host, port = addr.rsplit(":", 1)
    header = json.dumps({"code": code, "language": "PYTHON", "version": 0, "opaque": 1, "flag": 0,
                         "extFields": {k: str(v) for k, v in ext.items()}}).encode()
    frame = struct.pack(">II", 4 + len(header), len(header)) + header
    with socket.create_connection((host, int(port)), timeout) as s:
        s.settimeout(timeout)
        s.sendall(frame)

        def read(n):
            buf = b""
            while len(buf) < n:
                chunk = s.recv(n - len(buf))
                if not chunk:
                    raise IOError("connection closed")
                buf += chunk
            return buf

        (length,) = struct.unpack(">I", read(4))
        data = read(length)
    (hl,) = struct.unpack(">I", data[:4])
    hl &= 0xFFFFFF
    head = json.loads(data[4:4 + hl])
    return head.get("code"), data[4 + hl:]


def group_members(namesrv, topic, group):
    try:
        code, body = remoting_call(namesrv.split(";")[0], 105, {"topic": topic})
        if code != 0:
            return 0
        # Broker ids are unquoted numbers in RocketMQ's answer: read the first address.
        text = body.decode("utf-8", "replace")
        i = text.find('"brokerAddrs"')
        j = text.find('"', text.find(":", text.find("{", i) + 1) + 1)
        broker = text[j + 1:text.find('"', j + 1)]
        code, body = remoting_call(broker, 38, {"consumerGroup": group})
        if code != 0:
            return 0
        return len(json.loads(body).get("consumerIdList", []))
    except Exception as e:
        log("members of %s: %r" % (group, e))
        return 0


def await_members(a, topic, group, members, settle_ms, deadline):
    """Until the broker lists `members` consumers of the group, then `settle_ms` more (the
    C++ client rebalances when the broker tells it of a new member; the package cannot say
    which queues it holds)."""
    while group_members(a.namesrv, topic, group) < members:
        if time.time() > deadline:
            return False
        time.sleep(0.2)
    time.sleep(settle_ms / 1000.0)
    return True
