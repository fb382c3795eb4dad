package weir.interop;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.BooleanSupplier;
import org.apache.rocketmq.common.message.MessageExt;

/** What a consumer received: prints RECV, counts deliveries per msgId (UNIQ_KEY). */
final class Recorder {
    final String tag;
    final Map<String, Integer> counts = new ConcurrentHashMap<>();
    final AtomicInteger deliveries = new AtomicInteger();
    private final List<MessageExt> all = new ArrayList<>();
    private volatile long last;

    Recorder(String tag) {
        this.tag = tag;
    }

    void record(MessageExt m) {
        // Before the counts: await() must never see a count without its time.
        last = System.currentTimeMillis();
        Out.recv(tag, m);
        synchronized (all) {
            all.add(m);
        }
        counts.merge(m.getMsgId(), 1, Integer::sum);
        last = System.currentTimeMillis();
        if (deliveries.incrementAndGet() == 1) {
            Out.log("first message " + Clients.sinceStart() + " ms after JVM start, "
                    + (System.currentTimeMillis() - m.getBornTimestamp()) + " ms after it was born");
        }
        last = System.currentTimeMillis();
    }

    int distinct() {
        return counts.size();
    }

    int duplicates() {
        return deliveries.get() - counts.size();
    }

    List<MessageExt> messages() {
        synchronized (all) {
            return new ArrayList<>(all);
        }
    }

    /**
     * Waits until {@code enough} holds and nothing new arrived for {@code graceMs} (so late
     * duplicates or unwanted messages are still seen). Returns false at {@code deadline}.
     */
    boolean await(BooleanSupplier enough, long graceMs, long deadline) {
        while (true) {
            long now = System.currentTimeMillis();
            if (enough.getAsBoolean() && last != 0 && now - last >= graceMs) {
                return true;
            }
            if (now > deadline) {
                return false;
            }
            Clients.sleep(20);
        }
    }
}
