package weir.interop;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.rocketmq.client.producer.DefaultMQProducer;
import org.apache.rocketmq.client.producer.SendResult;
import org.apache.rocketmq.client.producer.SendStatus;
import org.apache.rocketmq.common.message.Message;

/**
 * {@code latency topic= group= threads=64 seconds=20 warmup=5 size=128}: {@code threads}
 * threads send synchronously, each as fast as its answers come (as the benchmark tool's
 * producer does), for {@code warmup + seconds}; every send's round trip after the warm-up
 * is kept. Prints one {@code LATENCY} line: sends, sends/s, p50, p99, p99.9 and max in ms,
 * failed sends. For the figures (scripts/bench-rocketmq), not a test.
 */
final class Latency implements Scenario {
    private final Args a;
    private final String topic;
    private final String group;
    private final int threads;
    private final int seconds;
    private final int warmup;
    private final int size;
    private final String instance;

    Latency(Args a) {
        this.a = a;
        topic = a.str("topic", "InteropLatencyT");
        group = a.str("group", "interop_latency_pg");
        threads = a.integer("threads", 64);
        seconds = a.integer("seconds", 20);
        warmup = a.integer("warmup", 5);
        size = a.integer("size", 128);
        instance = Clients.instance(a, "latency");
        a.checkAllUsed();
    }

    @Override
    public boolean run() throws Exception {
        DefaultMQProducer p = Clients.producer(a, group, instance);
        p.setSendMsgTimeout(10_000);
        p.start();
        Out.ready();
        byte[] body = new byte[size];
        Arrays.fill(body, (byte) 'w');
        long start = System.nanoTime();
        long measureFrom = start + warmup * 1_000_000_000L;
        long end = measureFrom + seconds * 1_000_000_000L;
        AtomicLong failed = new AtomicLong();
        List<long[]> perThread = new ArrayList<>();
        List<Thread> workers = new ArrayList<>();
        for (int t = 0; t < threads; t++) {
            long[][] slot = {new long[1 << 14]};
            int[] n = {0};
            Thread w = new Thread(() -> {
                while (true) {
                    long t0 = System.nanoTime();
                    if (t0 >= end) break;
                    try {
                        SendResult r = p.send(new Message(topic, "TagA", body));
                        if (r.getSendStatus() != SendStatus.SEND_OK) failed.incrementAndGet();
                    } catch (Exception e) {
                        failed.incrementAndGet();
                        continue;
                    }
                    long t1 = System.nanoTime();
                    if (t0 < measureFrom) continue;
                    if (n[0] == slot[0].length) slot[0] = Arrays.copyOf(slot[0], n[0] * 2);
                    slot[0][n[0]++] = t1 - t0;
                }
                synchronized (perThread) {
                    perThread.add(Arrays.copyOf(slot[0], n[0]));
                }
            });
            w.setDaemon(true);
            w.start();
            workers.add(w);
        }
        for (Thread w : workers) w.join(a.timeoutMs() + (warmup + seconds) * 1000L);
        p.shutdown();
        long[] all = perThread.stream().flatMapToLong(Arrays::stream).sorted().toArray();
        if (all.length == 0) {
            Out.done(false, "no send succeeded");
            return false;
        }
        double rate = all.length / (double) seconds;
        Out.line("LATENCY", String.valueOf(all.length), String.format("%.0f", rate),
                ms(pct(all, 0.50)), ms(pct(all, 0.99)), ms(pct(all, 0.999)), ms(all[all.length - 1]),
                String.valueOf(failed.get()));
        Out.done(failed.get() == 0, all.length + " sends measured");
        return failed.get() == 0;
    }

    private static long pct(long[] sorted, double q) {
        int i = (int) Math.ceil(q * sorted.length) - 1;
        return sorted[Math.max(0, Math.min(sorted.length - 1, i))];
    }

    private static String ms(long nanos) {
        return String.format("%.2f", nanos / 1e6);
    }
}
