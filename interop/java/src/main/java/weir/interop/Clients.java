package weir.interop;

import java.util.ArrayList;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import org.apache.rocketmq.client.ClientConfig;
import org.apache.rocketmq.client.consumer.AllocateMessageQueueStrategy;
import org.apache.rocketmq.client.consumer.DefaultMQPushConsumer;
import org.apache.rocketmq.client.impl.consumer.RebalanceImpl;
import org.apache.rocketmq.client.producer.DefaultMQProducer;
import org.apache.rocketmq.common.consumer.ConsumeFromWhere;
import org.apache.rocketmq.common.message.Message;
import org.apache.rocketmq.common.message.MessageQueue;

/** Client construction with short intervals, topic set-up and waits shared by scenarios. */
final class Clients {
    private Clients() {}

    /** Intervals shortened for tests: route poll, heartbeat, offset persistence. */
    static void fast(ClientConfig c, Args a, String instance) {
        c.setNamesrvAddr(a.namesrv);
        c.setInstanceName(instance);
        c.setPollNameServerInterval(1000);
        c.setHeartbeatBrokerInterval(1000);
        c.setPersistConsumerOffsetInterval(1000);
        c.setMqClientApiTimeout(5000);
    }

    static DefaultMQProducer producer(Args a, String group, String instance) {
        DefaultMQProducer p = new DefaultMQProducer(group);
        fast(p, a, instance);
        p.setSendMsgTimeout(5000);
        p.setRetryTimesWhenSendFailed(2);
        p.setRetryTimesWhenSendAsyncFailed(2);
        return p;
    }

    /**
     * A push consumer, CLUSTERING unless {@code broadcast}. The MessageModel enum is named
     * through the consumer's own getter: it moved between the 4.x client
     * (org.apache.rocketmq.common.protocol.heartbeat) and 5.x (org.apache.rocketmq.remoting.
     * protocol.heartbeat), and this source builds against both (interop/java, interop/java5).
     */
    static DefaultMQPushConsumer pushConsumer(Args a, String group, String instance, boolean broadcast) {
        DefaultMQPushConsumer c = new DefaultMQPushConsumer(group);
        fast(c, a, instance);
        c.setMessageModel(Enum.valueOf(c.getMessageModel().getDeclaringClass(),
                broadcast ? "BROADCASTING" : "CLUSTERING"));
        c.setConsumeFromWhere(ConsumeFromWhere.CONSUME_FROM_FIRST_OFFSET);
        c.setPullInterval(0);
        c.setConsumeThreadMin(4);
        c.setConsumeThreadMax(4);
        c.setConsumeMessageBatchMaxSize(1);
        c.setAwaitTerminationMillisWhenShutdown(2000);
        return c;
    }

    /**
     * producer.createTopic(key, topic, queues): UPDATE_AND_CREATE_TOPIC to each master of
     * {@code key}'s route. The 4.x client has createTopic(key, topic, queueNum); 5.x only the
     * variant with topic attributes (none here), so the one present is called by reflection.
     */
    static void createTopic(DefaultMQProducer p, String key, String topic, int queues) throws Exception {
        java.lang.reflect.Method m;
        Object[] args;
        try {
            m = DefaultMQProducer.class.getMethod("createTopic", String.class, String.class, int.class);
            args = new Object[] {key, topic, queues};
        } catch (NoSuchMethodException e) {
            m = DefaultMQProducer.class.getMethod("createTopic", String.class, String.class, int.class,
                    java.util.Map.class);
            args = new Object[] {key, topic, queues, java.util.Map.of()};
        }
        try {
            m.invoke(p, args);
        } catch (java.lang.reflect.InvocationTargetException e) {
            if (e.getCause() instanceof Exception ex) {
                throw ex;
            }
            throw e;
        }
    }

    /** Default instance name: unique per process, so two processes in a group differ. */
    static String instance(Args a, String prefix) {
        return a.str("instance", prefix + "-" + ProcessHandle.current().pid());
    }

    /**
     * Creates {@code topic} with {@code queues} queues through the TBW102 route
     * (UPDATE_AND_CREATE_TOPIC to each master) unless it exists, then waits until the name
     * server returns its route. Needed where a client-side queue selector must see the real
     * queue count before the first send.
     */
    static List<MessageQueue> ensureTopic(DefaultMQProducer p, String topic, int queues, long deadline) throws Exception {
        List<MessageQueue> mqs = tryQueues(p, topic);
        if (mqs.isEmpty()) {
            Out.log("creating topic " + topic + " with " + queues + " queues via TBW102");
            Clients.createTopic(p, "TBW102", topic, queues);
        }
        while (mqs.isEmpty()) {
            if (System.currentTimeMillis() > deadline) {
                throw new Timeout("route of topic " + topic + " not found");
            }
            Thread.sleep(100);
            mqs = tryQueues(p, topic);
        }
        return mqs;
    }

    static List<MessageQueue> tryQueues(DefaultMQProducer p, String topic) {
        try {
            List<MessageQueue> l = new ArrayList<>(p.fetchPublishMessageQueues(topic));
            Collections.sort(l);
            return l;
        } catch (Exception e) {
            return List.of();
        }
    }

    /**
     * Waits until the consumer's rebalance has settled for {@code topic}: the group has at
     * least {@code members} members and the queues it holds are exactly the share that its
     * allocation strategy gives it (all queues when broadcasting). Logs what it holds.
     */
    static void awaitAssigned(DefaultMQPushConsumer c, String topic, int members, long deadline) throws Exception {
        RebalanceImpl rb = c.getDefaultMQPushConsumerImpl().getRebalanceImpl();
        var factory = rb.getmQClientFactory();
        String clientId = factory.getClientId();
        boolean broadcast = c.getMessageModel().name().equals("BROADCASTING");
        AllocateMessageQueueStrategy strategy = c.getAllocateMessageQueueStrategy();
        while (true) {
            Set<MessageQueue> held = new HashSet<>();
            for (MessageQueue mq : rb.getProcessQueueTable().keySet()) {
                if (mq.getTopic().equals(topic)) {
                    held.add(mq);
                }
            }
            Set<MessageQueue> all = rb.getTopicSubscribeInfoTable().get(topic);
            if (all != null && !all.isEmpty()) {
                Set<MessageQueue> expected;
                int seen = 1;
                if (broadcast) {
                    expected = new HashSet<>(all);
                } else {
                    List<String> cids = factory.findConsumerIdList(topic, c.getConsumerGroup());
                    seen = cids == null ? 0 : cids.size();
                    if (cids != null && cids.contains(clientId)) {
                        List<MessageQueue> mqAll = new ArrayList<>(all);
                        List<String> cidAll = new ArrayList<>(cids);
                        Collections.sort(mqAll);
                        Collections.sort(cidAll);
                        expected = new HashSet<>(strategy.allocate(c.getConsumerGroup(), clientId, mqAll, cidAll));
                    } else {
                        expected = null;
                    }
                }
                if (expected != null && seen >= members && held.equals(expected)) {
                    List<Integer> ids = new ArrayList<>();
                    for (MessageQueue mq : held) {
                        ids.add(mq.getQueueId());
                    }
                    Collections.sort(ids);
                    Out.log("assigned " + topic + " queues " + ids + " of " + all.size() + ", members " + seen
                            + ", " + sinceStart() + " ms after JVM start");
                    return;
                }
            }
            if (System.currentTimeMillis() > deadline) {
                throw new Timeout("rebalance of " + topic + " did not settle (held " + held.size()
                        + " queues, want members >= " + members + ")");
            }
            Thread.sleep(50);
        }
    }

    /**
     * A probe message: tag TagA/TagB alternating, key {@code <keyPrefix><seq>}, properties
     * {@code color} (red for even seq, blue for odd) and {@code n} = seq. The body is text;
     * with {@code bigBytes > 0} it is padded to that many bytes (over 4 KiB the Java client
     * compresses it with zlib).
     */
    static Message message(String topic, String mode, int seq, String keyPrefix, int bigBytes) {
        String tag = seq % 2 == 0 ? "TagA" : "TagB";
        StringBuilder body = new StringBuilder("weir-interop " + mode + " #" + seq + "\n");
        if (bigBytes > 0) {
            while (body.length() < bigBytes) {
                body.append("the quick brown fox jumps over the lazy dog ").append(body.length()).append('\n');
            }
            body.setLength(bigBytes);
        }
        Message m = new Message(topic, tag, keyPrefix + seq, Out.utf8(body.toString()));
        m.putUserProperty("color", seq % 2 == 0 ? "red" : "blue");
        m.putUserProperty("n", Integer.toString(seq));
        return m;
    }

    /** Milliseconds since this JVM started (for the timing notes on stderr). */
    static long sinceStart() {
        return System.currentTimeMillis() - java.lang.management.ManagementFactory.getRuntimeMXBean().getStartTime();
    }

    static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** A bounded wait that ran out. */
    static final class Timeout extends Exception {
        Timeout(String msg) {
            super(msg);
        }
    }
}
