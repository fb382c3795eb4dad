// Command probe is the Go interop probe: unchanged rocketmq-client-go v2 programs that the
// weir test suite runs against weir (and scripts/test-rocketmq-reference against Apache
// RocketMQ). Usage, output lines and exit codes are those of the Java probe
// (interop/README.md):
//
//	probe <scenario> <namesrv> [key=value ...]
//
// Scenarios: produce, consume, sql92. Anything else prints UNSUPPORTED and exits 3.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"
	"github.com/apache/rocketmq-client-go/v2/rlog"
)

// ---------------------------------------------------------------- output

var (
	started = time.Now()
	outMu   sync.Mutex
	out     = bufio.NewWriter(os.Stdout)
)

func line(fields ...string) {
	outMu.Lock()
	defer outMu.Unlock()
	out.WriteString(strings.Join(fields, "\t"))
	out.WriteByte('\n')
	out.Flush()
}

func logf(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, time.Now().UTC().Format(time.RFC3339Nano)+" "+format+"\n", a...)
}

func clean(s string) string {
	return strings.NewReplacer("\t", " ", "\n", " ", "\r", " ").Replace(s)
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func done(ok bool, summary string) {
	status := "fail"
	if ok {
		status = "ok"
	}
	line("DONE", status, clean(summary))
}

var statusNames = map[primitive.SendStatus]string{
	primitive.SendOK:                "SEND_OK",
	primitive.SendFlushDiskTimeout:  "FLUSH_DISK_TIMEOUT",
	primitive.SendFlushSlaveTimeout: "FLUSH_SLAVE_TIMEOUT",
	primitive.SendSlaveNotAvailable: "SLAVE_NOT_AVAILABLE",
	primitive.SendUnknownError:      "UNKNOWN_ERROR",
}

func sent(mode string, r *primitive.SendResult, m *primitive.Message) {
	line("SENT", mode, statusNames[r.Status], clean(r.MsgID), clean(r.OffsetMsgID),
		strconv.Itoa(r.MessageQueue.QueueId), strconv.FormatInt(r.QueueOffset, 10),
		clean(m.GetTags()), clean(m.GetKeys()), strconv.Itoa(len(m.Body)), sha(m.Body))
}

func sentNoResult(mode, status string, m *primitive.Message) {
	line("SENT", mode, status, clean(m.GetProperty(primitive.PropertyUniqueClientMessageIdKeyIndex)), "-", "-1", "-1",
		clean(m.GetTags()), clean(m.GetKeys()), strconv.Itoa(len(m.Body)), sha(m.Body))
}

var volatileProps = map[string]bool{"MIN_OFFSET": true, "MAX_OFFSET": true, "CONSUME_START_TIME": true}

func esc(s string) string {
	var b strings.Builder
	for _, c := range s {
		if c == '%' || c == ';' || c == '=' || c < 0x20 {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteRune(c)
		}
	}
	return b.String()
}

func props(p map[string]string) string {
	keys := make([]string, 0, len(p))
	for k := range p {
		if !volatileProps[k] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = esc(k) + "=" + esc(p[k])
	}
	return strings.Join(parts, ";")
}

func recv(tag string, m *primitive.MessageExt) {
	qid := -1
	if m.Queue != nil {
		qid = m.Queue.QueueId
	}
	line("RECV", clean(tag), clean(m.Topic), strconv.Itoa(qid), strconv.FormatInt(m.QueueOffset, 10),
		clean(m.MsgId), clean(m.OffsetMsgId), clean(m.GetTags()), clean(m.GetKeys()), props(m.GetProperties()),
		strconv.Itoa(int(m.ReconsumeTimes)), strconv.Itoa(len(m.Body)), sha(m.Body),
		strconv.FormatInt(m.BornTimestamp, 10), strconv.FormatInt(m.StoreTimestamp, 10),
		strconv.FormatInt(time.Now().UnixMilli(), 10))
}

// ---------------------------------------------------------------- args

type args struct {
	namesrv string
	m       map[string]string
	used    map[string]bool
}

func (a *args) str(k, d string) string {
	a.used[k] = true
	if v, ok := a.m[k]; ok {
		return v
	}
	return d
}

func (a *args) integer(k string, d int) int {
	v := a.str(k, "")
	if v == "" {
		return d
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		panic(fmt.Sprintf("bad argument %s=%s", k, v))
	}
	return n
}

func (a *args) duration(k string, dms int) time.Duration {
	return time.Duration(a.integer(k, dms)) * time.Millisecond
}

func (a *args) check() {
	for k := range a.m {
		if !a.used[k] {
			panic("unknown argument '" + k + "'")
		}
	}
}

// ---------------------------------------------------------------- messages and recorder

// message: tag TagA/TagB alternating, key <prefix><seq>, properties color (red even, blue
// odd) and n = seq; a body padded to bigBytes when > 0 (the client compresses over 4 KiB).
func message(topic, mode string, seq int, prefix string, bigBytes int) *primitive.Message {
	tag := "TagA"
	color := "red"
	if seq%2 == 1 {
		tag, color = "TagB", "blue"
	}
	body := fmt.Sprintf("weir-interop %s #%d\n", mode, seq)
	if bigBytes > 0 {
		var b strings.Builder
		b.WriteString(body)
		for b.Len() < bigBytes {
			fmt.Fprintf(&b, "the quick brown fox jumps over the lazy dog %d\n", b.Len())
		}
		body = b.String()[:bigBytes]
	}
	m := primitive.NewMessage(topic, []byte(body))
	m.WithTag(tag)
	m.WithKeys([]string{prefix + strconv.Itoa(seq)})
	m.WithProperty("color", color)
	m.WithProperty("n", strconv.Itoa(seq))
	return m
}

type recorder struct {
	tag    string
	mu     sync.Mutex
	counts map[string]int
	keys   []string
	total  int
	last   time.Time
}

func (r *recorder) record(m *primitive.MessageExt) {
	recv(r.tag, m)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.total == 0 {
		logf("first message %d ms after start, %d ms after it was born",
			time.Since(started).Milliseconds(), time.Now().UnixMilli()-m.BornTimestamp)
	}
	r.counts[m.MsgId]++
	r.keys = append(r.keys, m.GetKeys())
	r.total++
	r.last = time.Now()
}

func (r *recorder) snapshot() (distinct, total int, last time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.counts), r.total, r.last
}

// await: until distinct >= want and nothing new for grace; false at deadline.
func (r *recorder) await(want int, grace time.Duration, deadline time.Time) bool {
	for {
		d, _, last := r.snapshot()
		if d >= want && time.Since(last) >= grace {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ---------------------------------------------------------------- scenarios

func newProducer(a *args, group, instance string) (rocketmq.Producer, error) {
	return rocketmq.NewProducer(
		producer.WithNameServer([]string{a.namesrv}),
		producer.WithGroupName(group),
		producer.WithInstanceName(instance),
		producer.WithRetry(2),
		producer.WithSendMsgTimeout(5*time.Second),
	)
}

func newPushConsumer(a *args, group, instance string, model consumer.MessageModel) (rocketmq.PushConsumer, error) {
	return rocketmq.NewPushConsumer(
		consumer.WithNameServer([]string{a.namesrv}),
		consumer.WithGroupName(group),
		consumer.WithInstance(instance),
		consumer.WithConsumerModel(model),
		consumer.WithConsumeFromWhere(consumer.ConsumeFromFirstOffset),
		consumer.WithConsumeMessageBatchMaxSize(1),
	)
}

// produce topic= group= count= modes=sync,async,oneway big= keyPrefix= instance=
func produce(a *args, deadline time.Time) bool {
	topic := a.str("topic", "InteropT")
	group := a.str("group", "interop_go_pg")
	count := a.integer("count", 4)
	modes := strings.Split(a.str("modes", "sync,async,oneway"), ",")
	big := a.integer("big", 6000)
	prefix := a.str("keyPrefix", "g")
	instance := a.str("instance", "go-produce-"+strconv.Itoa(os.Getpid()))
	a.check()
	p, err := newProducer(a, group, instance)
	if err != nil {
		done(false, "new producer: "+err.Error())
		return false
	}
	if err := p.Start(); err != nil {
		done(false, "start: "+err.Error())
		return false
	}
	defer p.Shutdown()
	line("READY")
	ctx := context.Background()
	seq, ok, bad := 0, 0, 0
	for _, mode := range modes {
		switch mode {
		case "sync":
			for i := 0; i < count; i++ {
				bigBytes := 0
				if seq == 0 {
					bigBytes = big
				}
				m := message(topic, mode, seq, prefix, bigBytes)
				seq++
				r, err := p.SendSync(ctx, m)
				if err != nil {
					logf("sync send failed: %v", err)
					sentNoResult("sync", "EXCEPTION", m)
					bad++
					continue
				}
				sent("sync", r, m)
				if r.Status == primitive.SendOK {
					ok++
				} else {
					bad++
				}
			}
		case "async":
			var wg sync.WaitGroup
			var mu sync.Mutex
			for i := 0; i < count; i++ {
				m := message(topic, mode, seq, prefix, 0)
				seq++
				wg.Add(1)
				err := p.SendAsync(ctx, func(_ context.Context, r *primitive.SendResult, err error) {
					defer wg.Done()
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						logf("async send failed: %v", err)
						sentNoResult("async", "EXCEPTION", m)
						bad++
						return
					}
					sent("async", r, m)
					if r.Status == primitive.SendOK {
						ok++
					} else {
						bad++
					}
				}, m)
				if err != nil {
					wg.Done()
					logf("async send failed: %v", err)
					sentNoResult("async", "EXCEPTION", m)
					mu.Lock()
					bad++
					mu.Unlock()
				}
			}
			ch := make(chan struct{})
			go func() { wg.Wait(); close(ch) }()
			select {
			case <-ch:
			case <-time.After(time.Until(deadline)):
				done(false, "timeout: async sends not acknowledged")
				return false
			}
		case "oneway":
			for i := 0; i < count; i++ {
				m := message(topic, mode, seq, prefix, 0)
				seq++
				if err := p.SendOneWay(ctx, m); err != nil {
					logf("oneway send failed: %v", err)
					sentNoResult("oneway", "EXCEPTION", m)
					bad++
					continue
				}
				sentNoResult("oneway", "NONE", m)
				ok++
			}
		default:
			panic("unknown mode " + mode)
		}
	}
	done(bad == 0, fmt.Sprintf("sent=%d failed=%d", ok, bad))
	return bad == 0
}

// consume topic= group= expr= expect= grace= instance= (push, CLUSTERING, first offset)
// sql92 topic= group= count= sql= expectKeys= grace= instance= (sends count messages first)
func consume(a *args, deadline time.Time, sql bool) bool {
	topic := a.str("topic", "InteropT")
	var group, expr, instance string
	var expect int
	var expectKeys []string
	count := 0
	if sql {
		group = a.str("group", "interop_go_sql_cg")
		count = a.integer("count", 8)
		expr = a.str("sql", "color = 'red' AND n > 3")
		if ek := a.str("expectKeys", ""); ek != "" {
			expectKeys = strings.Split(ek, ",")
		} else if expr == "color = 'red' AND n > 3" {
			for i := 0; i < count; i++ {
				if i%2 == 0 && i > 3 {
					expectKeys = append(expectKeys, "s"+strconv.Itoa(i))
				}
			}
		} else {
			panic("expectKeys is required with a custom sql")
		}
		expect = len(expectKeys)
	} else {
		group = a.str("group", "interop_go_cg")
		expr = a.str("expr", "*")
		expect = a.integer("expect", 0)
	}
	grace := a.duration("grace", 1500)
	instance = a.str("instance", "go-consume-"+strconv.Itoa(os.Getpid()))
	a.check()

	bad := 0
	if sql {
		p, err := newProducer(a, group+"_pg", instance)
		if err == nil {
			err = p.Start()
		}
		if err != nil {
			done(false, "producer: "+err.Error())
			return false
		}
		for i := 0; i < count; i++ {
			m := message(topic, "sql92", i, "s", 0)
			r, err := p.SendSync(context.Background(), m)
			if err != nil {
				logf("send failed: %v", err)
				sentNoResult("sync", "EXCEPTION", m)
				bad++
				continue
			}
			sent("sync", r, m)
			if r.Status != primitive.SendOK {
				bad++
			}
		}
		p.Shutdown()
	}

	rec := &recorder{tag: instance, counts: map[string]int{}}
	c, err := newPushConsumer(a, group, instance, consumer.Clustering)
	if err != nil {
		done(false, "new consumer: "+err.Error())
		return false
	}
	sel := consumer.MessageSelector{Type: consumer.TAG, Expression: expr}
	if sql {
		sel.Type = consumer.SQL92
	}
	err = c.Subscribe(topic, sel, func(_ context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
		for _, m := range msgs {
			rec.record(m)
		}
		return consumer.ConsumeSuccess, nil
	})
	if err != nil {
		done(false, "subscribe: "+err.Error())
		return false
	}
	if err := c.Start(); err != nil {
		done(false, "start: "+err.Error())
		return false
	}
	defer c.Shutdown()
	line("READY")
	logf("READY %d ms after start", time.Since(started).Milliseconds())
	want := expect
	if want < 1 {
		want = 1
	}
	got := rec.await(want, grace, deadline)
	distinct, total, _ := rec.snapshot()
	pass := got && distinct == total && (expect == 0 || distinct == expect) && bad == 0
	if sql {
		rec.mu.Lock()
		keys := append([]string(nil), rec.keys...)
		rec.mu.Unlock()
		sort.Strings(keys)
		sort.Strings(expectKeys)
		pass = pass && strings.Join(keys, ",") == strings.Join(expectKeys, ",")
		done(pass, fmt.Sprintf("received=%v want=%v sendFailures=%d", keys, expectKeys, bad))
		return pass
	}
	note := ""
	if !got {
		note = fmt.Sprintf(" (timeout waiting for %d)", want)
	}
	done(pass, fmt.Sprintf("received=%d deliveries=%d duplicates=%d%s", distinct, total, total-distinct, note))
	return pass
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: probe <produce|consume|sql92> <namesrv> [key=value ...]")
		os.Exit(2)
	}
	// The client logs with logrus to stderr; PROBE_LOG=1 lets its errors through.
	rlog.SetLogLevel("fatal")
	if os.Getenv("PROBE_LOG") != "" {
		rlog.SetLogLevel("error")
	}
	a := &args{namesrv: os.Args[2], m: map[string]string{}, used: map[string]bool{}}
	for _, kv := range os.Args[3:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			fmt.Fprintln(os.Stderr, "expected key=value, got "+kv)
			os.Exit(2)
		}
		a.m[k] = v
	}
	rc := 2
	func() {
		defer func() {
			if r := recover(); r != nil {
				logf("error: %v", r)
				done(false, fmt.Sprint(r))
				rc = 2
			}
		}()
		timeout := a.duration("timeout", 60000)
		deadline := time.Now().Add(timeout)
		// Watchdog: a hung client call must not keep the probe alive.
		go func() {
			time.Sleep(timeout + 15*time.Second)
			done(false, "watchdog: scenario still running")
			os.Exit(1)
		}()
		var ok bool
		switch os.Args[1] {
		case "produce":
			ok = produce(a, deadline)
		case "consume":
			ok = consume(a, deadline, false)
		case "sql92":
			ok = consume(a, deadline, true)
		default:
			line("UNSUPPORTED", clean(os.Args[1]), "not implemented in the Go probe (produce, consume, sql92 are)")
			done(false, "unsupported scenario "+os.Args[1])
			rc = 3
			return
		}
		logf("%s finished %d ms after start", os.Args[1], time.Since(started).Milliseconds())
		if ok {
			rc = 0
		} else {
			rc = 1
		}
	}()
	out.Flush()
	os.Exit(rc)
}
