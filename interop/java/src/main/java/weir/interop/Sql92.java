package weir.interop;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import org.apache.rocketmq.client.consumer.DefaultMQPushConsumer;
import org.apache.rocketmq.client.consumer.MessageSelector;
import org.apache.rocketmq.client.consumer.listener.ConsumeConcurrentlyStatus;
import org.apache.rocketmq.client.consumer.listener.MessageListenerConcurrently;
import org.apache.rocketmq.client.producer.DefaultMQProducer;
import org.apache.rocketmq.client.producer.SendResult;
import org.apache.rocketmq.client.producer.SendStatus;
import org.apache.rocketmq.common.message.Message;
import org.apache.rocketmq.common.message.MessageExt;

/**
 * {@code sql92 topic= group= count= sql= expectKeys= grace= instance=}: sends {@code count}
 * messages (keys s0.., color red for even n, blue for odd, n = seq, tags TagA/TagB) and
 * consumes with MessageSelector.bySql(sql). Default sql {@code color = 'red' AND n > 3};
 * the keys it must select are computed for the default, else give expectKeys=s4,s6.
 */
final class Sql92 implements Scenario {
    static final String DEFAULT_SQL = "color = 'red' AND n > 3";
    private final Args a;
    private final String topic;
    private final String group;
    private final int count;
    private final String sql;
    private final Set<String> expectKeys;
    private final long grace;
    private final String instance;

    Sql92(Args a) {
        this.a = a;
        topic = a.str("topic", "InteropSqlT");
        group = a.str("group", "interop_sql_cg");
        count = a.integer("count", 8);
        sql = a.str("sql", DEFAULT_SQL);
        String ek = a.str("expectKeys", null);
        if (ek != null) {
            expectKeys = new HashSet<>(Arrays.asList(ek.split(",")));
        } else if (sql.equals(DEFAULT_SQL)) {
            expectKeys = new HashSet<>();
            for (int i = 0; i < count; i++) {
                if (i % 2 == 0 && i > 3) {
                    expectKeys.add("s" + i);
                }
            }
        } else {
            throw new IllegalArgumentException("expectKeys is required with a custom sql");
        }
        grace = a.lng("grace", 1500);
        instance = Clients.instance(a, "sql92");
        a.checkAllUsed();
    }

    @Override
    public boolean run() throws Exception {
        long deadline = System.currentTimeMillis() + a.timeoutMs();
        DefaultMQProducer p = Clients.producer(a, group + "_pg", instance);
        p.start();
        Recorder rec = new Recorder(instance);
        DefaultMQPushConsumer c = Clients.pushConsumer(a, group, instance, false);
        try {
            int bad = 0;
            for (int i = 0; i < count; i++) {
                Message m = Clients.message(topic, "sql92", i, "s", 0);
                SendResult r = p.send(m);
                Out.sent("sync", r, m);
                if (r.getSendStatus() != SendStatus.SEND_OK) {
                    bad++;
                }
            }
            c.subscribe(topic, MessageSelector.bySql(sql));
            c.registerMessageListener((MessageListenerConcurrently) (msgs, ctx) -> {
                for (MessageExt m : msgs) {
                    rec.record(m);
                }
                return ConsumeConcurrentlyStatus.CONSUME_SUCCESS;
            });
            c.start();
            Clients.awaitAssigned(c, topic, 1, deadline);
            Out.ready();
            boolean got = rec.await(() -> rec.distinct() >= expectKeys.size(), grace, deadline);
            List<String> keys = new ArrayList<>();
            for (MessageExt m : rec.messages()) {
                keys.add(m.getKeys());
            }
            Collections.sort(keys);
            List<String> want = new ArrayList<>(expectKeys);
            Collections.sort(want);
            boolean pass = got && bad == 0 && keys.equals(want);
            Out.done(pass, "received=" + keys + " want=" + want + " sendFailures=" + bad);
            return pass;
        } finally {
            c.shutdown();
            p.shutdown();
        }
    }
}
