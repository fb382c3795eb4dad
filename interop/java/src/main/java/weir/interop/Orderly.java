package weir.interop;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.apache.rocketmq.client.consumer.DefaultMQPushConsumer;
import org.apache.rocketmq.client.consumer.listener.ConsumeOrderlyStatus;
import org.apache.rocketmq.client.consumer.listener.MessageListenerOrderly;
import org.apache.rocketmq.client.producer.DefaultMQProducer;
import org.apache.rocketmq.client.producer.MessageQueueSelector;
import org.apache.rocketmq.client.producer.SendResult;
import org.apache.rocketmq.client.producer.SendStatus;
import org.apache.rocketmq.common.message.Message;
import org.apache.rocketmq.common.message.MessageExt;

/**
 * {@code orderly topic= group= orders= steps= queues= grace= instance=}: creates the topic
 * with {@code queues} queues if needed (so the selector sees real queues), starts a
 * MessageListenerOrderly consumer, READY once it holds (and has locked) its queues, then
 * sends orders×steps messages, step-major, each to queue orderId % n via a
 * MessageQueueSelector (key {@code o<order>s<step>}, properties order and step). Checks
 * every order's steps arrive as 1..steps.
 */
final class Orderly implements Scenario {
    private final Args a;
    private final String topic;
    private final String group;
    private final int orders;
    private final int steps;
    private final int queues;
    private final long grace;
    private final String instance;

    Orderly(Args a) {
        this.a = a;
        topic = a.str("topic", "InteropOrderT");
        group = a.str("group", "interop_order_cg");
        orders = a.integer("orders", 10);
        steps = a.integer("steps", 3);
        queues = a.integer("queues", 4);
        grace = a.lng("grace", 1000);
        instance = Clients.instance(a, "orderly");
        a.checkAllUsed();
    }

    @Override
    public boolean run() throws Exception {
        long deadline = System.currentTimeMillis() + a.timeoutMs();
        DefaultMQProducer p = Clients.producer(a, group + "_pg", instance);
        p.start();
        Recorder rec = new Recorder(instance);
        DefaultMQPushConsumer c = Clients.pushConsumer(a, group, instance, false);
        c.setSuspendCurrentQueueTimeMillis(200);
        try {
            Clients.ensureTopic(p, topic, queues, deadline);
            c.subscribe(topic, "*");
            c.registerMessageListener((MessageListenerOrderly) (msgs, ctx) -> {
                for (MessageExt m : msgs) {
                    rec.record(m);
                }
                return ConsumeOrderlyStatus.SUCCESS;
            });
            c.start();
            Clients.awaitAssigned(c, topic, 1, deadline);
            Out.ready();
            MessageQueueSelector byOrder = (mqs, msg, arg) -> mqs.get((Integer) arg % mqs.size());
            int bad = 0;
            for (int s = 1; s <= steps; s++) {
                for (int o = 0; o < orders; o++) {
                    Message m = new Message(topic, "TagA", "o" + o + "s" + s, Out.utf8("order " + o + " step " + s));
                    m.putUserProperty("order", Integer.toString(o));
                    m.putUserProperty("step", Integer.toString(s));
                    SendResult r = p.send(m, byOrder, o);
                    Out.sent("orderly", r, m);
                    if (r.getSendStatus() != SendStatus.SEND_OK) {
                        bad++;
                    }
                }
            }
            int total = orders * steps;
            boolean got = rec.await(() -> rec.distinct() >= total, grace, deadline);
            Map<Integer, List<Integer>> seen = new HashMap<>();
            Map<Integer, Integer> queueOf = new HashMap<>();
            boolean sameQueue = true;
            for (MessageExt m : rec.messages()) {
                int o = Integer.parseInt(m.getUserProperty("order"));
                seen.computeIfAbsent(o, k -> new ArrayList<>()).add(Integer.parseInt(m.getUserProperty("step")));
                Integer q = queueOf.putIfAbsent(o, m.getQueueId());
                if (q != null && q != m.getQueueId()) {
                    sameQueue = false;
                }
            }
            int outOfOrder = 0;
            for (int o = 0; o < orders; o++) {
                List<Integer> l = seen.getOrDefault(o, List.of());
                List<Integer> want = new ArrayList<>();
                for (int s = 1; s <= steps; s++) {
                    want.add(s);
                }
                if (!l.equals(want)) {
                    outOfOrder++;
                    Out.log("order " + o + " got steps " + l);
                }
            }
            boolean pass = got && bad == 0 && outOfOrder == 0 && sameQueue && rec.duplicates() == 0;
            Out.done(pass, "received=" + rec.distinct() + "/" + total + " duplicates=" + rec.duplicates()
                    + " badOrders=" + outOfOrder + " sameQueuePerOrder=" + sameQueue + " sendFailures=" + bad);
            return pass;
        } finally {
            c.shutdown();
            p.shutdown();
        }
    }
}
