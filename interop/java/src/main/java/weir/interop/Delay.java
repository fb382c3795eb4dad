package weir.interop;

import java.util.Map;
import org.apache.rocketmq.client.consumer.DefaultMQPushConsumer;
import org.apache.rocketmq.client.consumer.listener.ConsumeConcurrentlyStatus;
import org.apache.rocketmq.client.consumer.listener.MessageListenerConcurrently;
import org.apache.rocketmq.client.producer.DefaultMQProducer;
import org.apache.rocketmq.client.producer.SendResult;
import org.apache.rocketmq.client.producer.SendStatus;
import org.apache.rocketmq.common.message.Message;
import org.apache.rocketmq.common.message.MessageExt;

/**
 * {@code delay topic= group= count= level= minDelay= grace= instance=}: sends {@code count}
 * messages with setDelayTimeLevel(level) (keys d0..) after an undelayed warm-up message (key
 * dw0) and a settled consumer, and checks each delayed one arrived no earlier than
 * {@code minDelay} ms after it was sent (default: the broker default
 * table's delay for the level, less 100 ms: level 1 = 1 s, 2 = 5 s, 3 = 10 s).
 */
final class Delay implements Scenario {
    private static final long[] LEVELS = {0, 1000, 5000, 10000, 30000, 60000, 120000, 180000, 240000, 300000,
        360000, 420000, 480000, 540000, 600000, 1200000, 1800000, 3600000, 7200000};
    private final Args a;
    private final String topic;
    private final String group;
    private final int count;
    private final int level;
    private final long minDelay;
    private final long grace;
    private final String instance;

    Delay(Args a) {
        this.a = a;
        topic = a.str("topic", "InteropDelayT");
        group = a.str("group", "interop_delay_cg");
        count = a.integer("count", 2);
        level = a.integer("level", 1);
        if (level < 1 || level >= LEVELS.length) {
            throw new IllegalArgumentException("level must be 1.." + (LEVELS.length - 1));
        }
        minDelay = a.lng("minDelay", LEVELS[level] - 100);
        grace = a.lng("grace", 1000);
        instance = Clients.instance(a, "delay");
        a.checkAllUsed();
    }

    @Override
    public boolean run() throws Exception {
        long deadline = System.currentTimeMillis() + a.timeoutMs();
        DefaultMQProducer p = Clients.producer(a, group + "_pg", instance);
        p.start();
        Recorder rec = new Recorder(instance);
        DefaultMQPushConsumer c = Clients.pushConsumer(a, group, instance, false);
        java.util.Map<String, Long> recvAt = new java.util.concurrent.ConcurrentHashMap<>();
        java.util.Map<String, Long> sentAt = new java.util.concurrent.ConcurrentHashMap<>();
        try {
            int bad = 0;
            // An undelayed warm-up message creates the topic, so the consumer can be settled
            // before the delayed sends and the measured delay is the broker's.
            Message warm = Clients.message(topic, "delay-warmup", 0, "dw", 0);
            SendResult wr = p.send(warm);
            Out.sent("sync", wr, warm);
            if (wr.getSendStatus() != SendStatus.SEND_OK) {
                bad++;
            }
            c.subscribe(topic, "*");
            c.registerMessageListener((MessageListenerConcurrently) (msgs, ctx) -> {
                for (MessageExt m : msgs) {
                    recvAt.putIfAbsent(m.getMsgId(), System.currentTimeMillis());
                    rec.record(m);
                }
                return ConsumeConcurrentlyStatus.CONSUME_SUCCESS;
            });
            c.start();
            Clients.awaitAssigned(c, topic, 1, deadline);
            Out.ready();
            for (int i = 0; i < count; i++) {
                Message m = Clients.message(topic, "delay", i, "d", 0);
                m.setDelayTimeLevel(level);
                long t0 = System.currentTimeMillis();
                SendResult r = p.send(m);
                sentAt.put(r.getMsgId(), t0);
                Out.sent("delay", r, m);
                if (r.getSendStatus() != SendStatus.SEND_OK) {
                    bad++;
                }
            }
            boolean got = rec.await(() -> rec.distinct() >= count + 1, grace, deadline);
            int early = 0;
            long minSeen = Long.MAX_VALUE;
            for (Map.Entry<String, Long> e : sentAt.entrySet()) {
                Long r = recvAt.get(e.getKey());
                if (r == null) {
                    continue;
                }
                long d = r - e.getValue();
                minSeen = Math.min(minSeen, d);
                if (d < minDelay) {
                    early++;
                }
            }
            boolean pass = got && bad == 0 && early == 0 && rec.duplicates() == 0;
            Out.done(pass, "received=" + rec.distinct() + "/" + (count + 1) + " early=" + early + " minDelayMs="
                    + (minSeen == Long.MAX_VALUE ? -1 : minSeen) + " wantMs>=" + minDelay);
            return pass;
        } finally {
            c.shutdown();
            p.shutdown();
        }
    }
}
