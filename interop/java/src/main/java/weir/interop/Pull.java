package weir.interop;

import java.util.List;
import org.apache.rocketmq.client.consumer.DefaultLitePullConsumer;
import org.apache.rocketmq.common.consumer.ConsumeFromWhere;
import org.apache.rocketmq.common.message.MessageExt;

/**
 * {@code pull topic= group= expr= expect= grace= instance=}: a DefaultLitePullConsumer
 * (PULL_MESSAGE with the subscription in the request), CONSUME_FROM_FIRST_OFFSET,
 * auto-commit; polls until it holds {@code expect} distinct messages (0: at least one) and
 * nothing new came for {@code grace} ms. Run it after messages were produced.
 */
final class Pull implements Scenario {
    private final Args a;
    private final String topic;
    private final String group;
    private final String expr;
    private final int expect;
    private final long grace;
    private final String instance;

    Pull(Args a) {
        this.a = a;
        topic = a.str("topic", "InteropT");
        group = a.str("group", "interop_pull_cg");
        expr = a.str("expr", "*");
        expect = a.integer("expect", 0);
        grace = a.lng("grace", 1500);
        instance = Clients.instance(a, "pull");
        a.checkAllUsed();
    }

    @Override
    public boolean run() throws Exception {
        long deadline = System.currentTimeMillis() + a.timeoutMs();
        Recorder rec = new Recorder(instance);
        DefaultLitePullConsumer c = new DefaultLitePullConsumer(group);
        Clients.fast(c, a, instance);
        c.setConsumeFromWhere(ConsumeFromWhere.CONSUME_FROM_FIRST_OFFSET);
        c.setAutoCommit(true);
        c.setPollTimeoutMillis(200);
        c.setTopicMetadataCheckIntervalMillis(1000);
        c.setPullThreadNums(4);
        c.subscribe(topic, expr);
        c.start();
        try {
            Out.ready();
            int want = Math.max(1, expect);
            long last = System.currentTimeMillis();
            boolean got;
            while (true) {
                List<MessageExt> msgs = c.poll(200);
                for (MessageExt m : msgs) {
                    rec.record(m);
                    last = System.currentTimeMillis();
                }
                long now = System.currentTimeMillis();
                if (rec.distinct() >= want && now - last >= grace) {
                    got = true;
                    break;
                }
                if (now > deadline) {
                    got = false;
                    break;
                }
            }
            boolean pass = got && rec.duplicates() == 0 && (expect == 0 || rec.distinct() == expect);
            Out.done(pass, "received=" + rec.distinct() + " deliveries=" + rec.deliveries.get()
                    + " duplicates=" + rec.duplicates() + (got ? "" : " (timeout waiting for " + want + ")"));
            return pass;
        } finally {
            c.shutdown();
        }
    }
}
