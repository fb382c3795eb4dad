package weir.interop;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
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
 * {@code retry topic= group= count= fail= max= level= grace= dlq= instance=}: sends {@code count}
 * messages (keys r0..), then consumes with setMaxReconsumeTimes(max). The listener returns
 * RECONSUME_LATER for the first {@code fail} keys, with delayLevelWhenNextConsume =
 * {@code level} (1 = 1 s on a default broker; 0 = the broker's 3 + reconsumeTimes, 10 s
 * and more). Checks: a failing key is delivered max+1 times with reconsumeTimes 0..max (then
 * the broker moves it to %DLQ%group), every other key exactly once; with {@code dlq=true}
 * (default) each failing key is then found in {@code %DLQ%<group>} by queryMessage(key),
 * printed as a RECV line with consumer tag {@code dlq}.
 */
final class Retry implements Scenario {
    private final Args a;
    private final String topic;
    private final String group;
    private final int count;
    private final int fail;
    private final int max;
    private final int level;
    private final long grace;
    private final boolean dlq;
    private final String instance;

    Retry(Args a) {
        this.a = a;
        topic = a.str("topic", "InteropRetryT");
        group = a.str("group", "interop_retry_cg");
        count = a.integer("count", 4);
        fail = a.integer("fail", 2);
        max = a.integer("max", 1);
        level = a.integer("level", 1);
        grace = a.lng("grace", 2000);
        dlq = a.bool("dlq", true);
        instance = Clients.instance(a, "retry");
        a.checkAllUsed();
    }

    @Override
    public boolean run() throws Exception {
        long deadline = System.currentTimeMillis() + a.timeoutMs();
        DefaultMQProducer p = Clients.producer(a, group + "_pg", instance);
        p.start();
        Recorder rec = new Recorder(instance);
        DefaultMQPushConsumer c = Clients.pushConsumer(a, group, instance, false);
        c.setMaxReconsumeTimes(max);
        try {
            int bad = 0;
            for (int i = 0; i < count; i++) {
                Message m = Clients.message(topic, "retry", i, "r", 0);
                SendResult r = p.send(m);
                Out.sent("sync", r, m);
                if (r.getSendStatus() != SendStatus.SEND_OK) {
                    bad++;
                }
            }
            c.subscribe(topic, "*");
            c.registerMessageListener((MessageListenerConcurrently) (msgs, ctx) -> {
                boolean later = false;
                for (MessageExt m : msgs) {
                    rec.record(m);
                    if (failing(m.getKeys())) {
                        later = true;
                    }
                }
                if (later) {
                    ctx.setDelayLevelWhenNextConsume(level);
                    return ConsumeConcurrentlyStatus.RECONSUME_LATER;
                }
                return ConsumeConcurrentlyStatus.CONSUME_SUCCESS;
            });
            c.start();
            Clients.awaitAssigned(c, topic, 1, deadline);
            Out.ready();
            int want = count + fail * max;
            boolean got = rec.await(() -> rec.deliveries.get() >= want, grace, deadline);
            Map<String, List<Integer>> times = new HashMap<>();
            for (MessageExt m : rec.messages()) {
                times.computeIfAbsent(m.getKeys(), k -> new ArrayList<>()).add(m.getReconsumeTimes());
            }
            int wrong = 0;
            for (int i = 0; i < count; i++) {
                String key = "r" + i;
                List<Integer> wantTimes = new ArrayList<>();
                for (int t = 0; t <= (failing(key) ? max : 0); t++) {
                    wantTimes.add(t);
                }
                List<Integer> l = times.getOrDefault(key, List.of());
                if (!l.equals(wantTimes)) {
                    wrong++;
                    Out.log("key " + key + " reconsumeTimes " + l + ", want " + wantTimes);
                }
            }
            int inDlq = 0;
            if (dlq && got) {
                // queryMessage by key on %DLQ%<group> (QUERY_MESSAGE); the index may lag.
                String dlqTopic = "%DLQ%" + group;
                for (int i = 0; i < fail; i++) {
                    String key = "r" + i;
                    MessageExt found = null;
                    while (found == null && System.currentTimeMillis() < deadline) {
                        try {
                            for (MessageExt m : p.queryMessage(dlqTopic, key, 32, 0, Long.MAX_VALUE).getMessageList()) {
                                if (key.equals(m.getKeys())) {
                                    found = m;
                                }
                            }
                        } catch (Exception e) {
                            Out.log("DLQ query for " + key + ": " + e);
                        }
                        if (found == null) {
                            Clients.sleep(200);
                        }
                    }
                    if (found != null) {
                        Out.recv("dlq", found);
                        inDlq++;
                    }
                }
            }
            boolean pass = got && bad == 0 && wrong == 0 && rec.deliveries.get() == want && (!dlq || inDlq == fail);
            Out.done(pass, "deliveries=" + rec.deliveries.get() + "/" + want + " wrongKeys=" + wrong
                    + (dlq ? " inDLQ=" + inDlq + "/" + fail : "") + " sendFailures=" + bad);
            return pass;
        } finally {
            c.shutdown();
            p.shutdown();
        }
    }

    private boolean failing(String key) {
        if (key == null || !key.startsWith("r")) {
            return false;
        }
        try {
            return Integer.parseInt(key.substring(1)) < fail;
        } catch (NumberFormatException e) {
            return false;
        }
    }
}
