#!/usr/bin/env python3
"""Minimal checks of probe output (the line protocol in interop/README.md).

    check.py done FILE...              every file ends with DONE ok
    check.py produce FILE              DONE ok; SENT: SEND_OK (NONE for oneway), 32-hex offsetMsgId
    check.py union SENT RECV...        the RECVs of all files together = the SENT set, each once,
                                       with the SENT tags, keys, body length and sha256
    check.py each SENT RECV...         every RECV file alone = the SENT set, each once
    check.py batch FILE                one queue, consecutive queue offsets, distinct ids
    check.py orderly FILE              per order, steps arrive 1..n, all on one queue
    check.py tx FILE                   only the commit and the checked (unknown) message arrive

Prints one summary line; exits 1 with the reasons on failure.
"""
import re
import sys
from collections import Counter, defaultdict

HEX32 = re.compile(r"^[0-9A-F]{32}$")
SENT_F = ["kind", "mode", "status", "msgId", "offsetMsgId", "queueId", "queueOffset", "tags", "keys", "bodyLen", "sha"]
RECV_F = ["kind", "consumer", "topic", "queueId", "queueOffset", "msgId", "offsetMsgId", "tags", "keys", "props",
          "reconsumeTimes", "bodyLen", "sha", "bornTs", "storeTs", "recvTs"]


def lines(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            raw = raw.rstrip("\n")
            if not raw:
                continue
            fields = raw.split("\t")
            if fields[0] == "SENT":
                out.append(dict(zip(SENT_F, fields)))
            elif fields[0] == "RECV":
                rec = dict(zip(RECV_F, fields))
                rec["propsMap"] = dict(kv.split("=", 1) for kv in rec.get("props", "").split(";") if "=" in kv)
                out.append(rec)
            else:
                out.append({"kind": fields[0], "fields": fields[1:]})
    return out


def of(recs, kind):
    return [r for r in recs if r["kind"] == kind]


class Check:
    def __init__(self):
        self.errors = []

    def fail(self, msg):
        self.errors.append(msg)

    def done_ok(self, path, recs):
        done = of(recs, "DONE")
        if not done:
            self.fail(f"{path}: no DONE line")
        elif done[-1]["fields"][0] != "ok":
            self.fail(f"{path}: DONE {' '.join(done[-1]['fields'])}")

    def sent_ok(self, path, recs):
        sent = of(recs, "SENT")
        if not sent:
            self.fail(f"{path}: no SENT line")
        for s in sent:
            want = "NONE" if s["mode"] == "oneway" else "SEND_OK"
            if s["status"] != want:
                self.fail(f"{path}: {s['mode']} {s['msgId']} status {s['status']}, want {want}")
            # The Java TransactionSendResult does not carry the offsetMsgId (4.9.8).
            if s["mode"] not in ("oneway", "tx") and not HEX32.match(s["offsetMsgId"]):
                self.fail(f"{path}: {s['msgId']} offsetMsgId {s['offsetMsgId']!r} is not 32 hex digits")
        ids = Counter(s["msgId"] for s in sent)
        for i, n in ids.items():
            if n > 1 or not i:
                self.fail(f"{path}: msgId {i!r} on {n} SENT lines")
        return sent

    def match(self, label, sent, recvs):
        by_id = {s["msgId"]: s for s in sent}
        got = Counter(r["msgId"] for r in recvs)
        for i in by_id:
            if got[i] != 1:
                self.fail(f"{label}: {by_id[i]['keys']} ({i}) received {got[i]} times")
        for i in got:
            if i not in by_id:
                self.fail(f"{label}: unexpected message {i}")
        for r in recvs:
            s = by_id.get(r["msgId"])
            if s is None:
                continue
            for f in ("tags", "keys", "bodyLen", "sha"):
                if r[f] != s[f]:
                    self.fail(f"{label}: {r['msgId']} {f} {r[f]!r}, sent {s[f]!r}")
            if s["mode"] not in ("oneway", "tx") and r["offsetMsgId"] != s["offsetMsgId"]:
                self.fail(f"{label}: {r['msgId']} offsetMsgId {r['offsetMsgId']}, sent {s['offsetMsgId']}")


def main(argv):
    c = Check()
    cmd, files = argv[0], argv[1:]
    recs = [lines(f) for f in files]
    summary = ""
    if cmd == "done":
        for f, r in zip(files, recs):
            c.done_ok(f, r)
        summary = "; ".join(" ".join(of(r, "DONE")[-1]["fields"]) for r in recs if of(r, "DONE"))
    elif cmd == "produce":
        c.done_ok(files[0], recs[0])
        sent = c.sent_ok(files[0], recs[0])
        summary = f"{len(sent)} sent ({dict(Counter(s['mode'] for s in sent))})"
    elif cmd in ("union", "each"):
        sent = c.sent_ok(files[0], recs[0])
        for f, r in zip(files[1:], recs[1:]):
            c.done_ok(f, r)
        if cmd == "union":
            allr = [x for r in recs[1:] for x in of(r, "RECV")]
            c.match("union of " + " ".join(files[1:]), sent, allr)
            split = "+".join(str(len(of(r, "RECV"))) for r in recs[1:])
            summary = f"{len(sent)} sent, {len(allr)} received ({split})"
        else:
            for f, r in zip(files[1:], recs[1:]):
                c.match(f, sent, of(r, "RECV"))
            summary = f"{len(sent)} sent, each of {len(files) - 1} received all"
    elif cmd == "batch":
        c.done_ok(files[0], recs[0])
        sent = c.sent_ok(files[0], recs[0])
        if len({s["queueId"] for s in sent}) != 1:
            c.fail("batch: more than one queue")
        offs = [int(s["queueOffset"]) for s in sent]
        if offs != list(range(offs[0], offs[0] + len(offs))):
            c.fail(f"batch: queue offsets {offs} not consecutive")
        if len({s["offsetMsgId"] for s in sent}) != len(sent):
            c.fail("batch: offsetMsgIds not distinct")
        summary = f"{len(sent)} in one batch, offsets {offs[0]}..{offs[-1]}"
    elif cmd == "orderly":
        c.done_ok(files[0], recs[0])
        sent = c.sent_ok(files[0], recs[0])
        steps, queues = defaultdict(list), defaultdict(set)
        for r in of(recs[0], "RECV"):
            o = r["propsMap"].get("order")
            steps[o].append(int(r["propsMap"].get("step", -1)))
            queues[o].add(r["queueId"])
        n = len(sent) // max(1, len(steps))
        for o, l in steps.items():
            if l != list(range(1, n + 1)):
                c.fail(f"orderly: order {o} steps {l}")
            if len(queues[o]) != 1:
                c.fail(f"orderly: order {o} on queues {sorted(queues[o])}")
        c.match("orderly", sent, of(recs[0], "RECV"))
        summary = f"{len(steps)} orders x {n} steps in order"
    elif cmd == "tx":
        c.done_ok(files[0], recs[0])
        sent = c.sent_ok(files[0], recs[0])
        by_key = {s["keys"]: s["msgId"] for s in sent}
        tx = [t["fields"] for t in of(recs[0], "TX")]
        local = {t[0]: t[1] for t in tx if t[2] == "false"}
        checked = {t[0] for t in tx if t[2] == "true"}
        want_local = {"commit": "COMMIT_MESSAGE", "rollback": "ROLLBACK_MESSAGE", "unknown": "UNKNOW"}
        for k, st in want_local.items():
            if local.get(by_key.get(k)) != st:
                c.fail(f"tx: local state of {k} is {local.get(by_key.get(k))}, want {st}")
        if by_key.get("unknown") not in checked:
            c.fail("tx: no check-back for the unknown message")
        if checked - {by_key.get("unknown")}:
            c.fail(f"tx: unexpected check-backs {checked}")
        got = Counter(r["keys"] for r in of(recs[0], "RECV"))
        if got != Counter({"commit": 1, "unknown": 1}):
            c.fail(f"tx: received {dict(got)}, want commit and unknown once each")
        summary = f"local {sorted(local.values())}, checked {len(checked)}, received {sorted(got)}"
    else:
        print(f"unknown check {cmd}", file=sys.stderr)
        return 2
    if c.errors:
        for e in c.errors[:20]:
            print("  " + e)
        if len(c.errors) > 20:
            print(f"  ... {len(c.errors) - 20} more")
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
