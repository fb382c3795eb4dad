package weir.interop;

import org.apache.rocketmq.client.consumer.DefaultMQPushConsumer;
import org.apache.rocketmq.client.consumer.listener.ConsumeConcurrentlyStatus;
import org.apache.rocketmq.client.consumer.listener.MessageListenerConcurrently;
import org.apache.rocketmq.common.message.MessageExt;

/**
 * {@code consume topic= group= expr= expect= grace= members= instance= timeout=} (and
 * {@code broadcast}, the same with BROADCASTING): a push consumer, CONSUME_FROM_FIRST_OFFSET,
 * tag expression {@code expr} (default {@code *}). READY once its rebalance has settled
 * with at least {@code members} members in the group (start all members, wait for every
 * READY, then produce). Stops {@code grace} ms after the last message once it holds
 * {@code expect} distinct messages (expect=0: at least one). DONE fail on timeout or on a
 * duplicate delivery (allowDup=true to accept them).
 */
final class Consume implements Scenario {
    private final Args a;
    private final boolean broadcast;
    private final String topic;
    private final String group;
    private final String expr;
    private final int expect;
    private final long grace;
    private final int members;
    private final boolean allowDup;
    private final String instance;

    Consume(Args a, boolean broadcast) {
        this.a = a;
        this.broadcast = broadcast;
        topic = a.str("topic", "InteropT");
        group = a.str("group", broadcast ? "interop_bc_cg" : "interop_cg");
        expr = a.str("expr", "*");
        expect = a.integer("expect", 0);
        grace = a.lng("grace", 1500);
        members = a.integer("members", 1);
        allowDup = a.bool("allowDup", false);
        instance = Clients.instance(a, broadcast ? "broadcast" : "consume");
        a.checkAllUsed();
    }

    @Override
    public boolean run() throws Exception {
        long deadline = System.currentTimeMillis() + a.timeoutMs();
        Recorder rec = new Recorder(instance);
        DefaultMQPushConsumer c = Clients.pushConsumer(a, group, instance, broadcast);
        c.subscribe(topic, expr);
        c.registerMessageListener((MessageListenerConcurrently) (msgs, ctx) -> {
            for (MessageExt m : msgs) {
                rec.record(m);
            }
            return ConsumeConcurrentlyStatus.CONSUME_SUCCESS;
        });
        c.start();
        try {
            Clients.awaitAssigned(c, topic, members, deadline);
            Out.ready();
            int want = Math.max(1, expect);
            boolean got = rec.await(() -> rec.distinct() >= want, grace, deadline);
            boolean pass = got && (allowDup || rec.duplicates() == 0) && (expect == 0 || rec.distinct() == expect);
            Out.done(pass, "received=" + rec.distinct() + " deliveries=" + rec.deliveries.get()
                    + " duplicates=" + rec.duplicates() + (got ? "" : " (timeout waiting for " + want + ")"));
            return pass;
        } finally {
            c.shutdown();
        }
    }
}
