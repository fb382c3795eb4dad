package weir.interop;

import java.util.List;
import org.apache.rocketmq.client.producer.DefaultMQProducer;
import org.apache.rocketmq.common.message.MessageQueue;

/**
 * {@code admin topic= queues= group= instance=}: producer.createTopic("TBW102", topic, queues)
 * (GET_ROUTEINFO of TBW102, then UPDATE_AND_CREATE_TOPIC to each master), then waits until
 * the name server's route for the topic has {@code queues} write queues.
 */
final class Admin implements Scenario {
    private final Args a;
    private final String topic;
    private final int queues;
    private final String group;
    private final String instance;

    Admin(Args a) {
        this.a = a;
        topic = a.str("topic", "InteropAdminT");
        queues = a.integer("queues", 4);
        group = a.str("group", "interop_admin_pg");
        instance = Clients.instance(a, "admin");
        a.checkAllUsed();
    }

    @Override
    public boolean run() throws Exception {
        long deadline = System.currentTimeMillis() + a.timeoutMs();
        DefaultMQProducer p = Clients.producer(a, group, instance);
        p.start();
        Out.ready();
        try {
            Clients.createTopic(p, "TBW102", topic, queues);
            List<MessageQueue> mqs = Clients.tryQueues(p, topic);
            while (mqs.size() != queues && System.currentTimeMillis() < deadline) {
                Clients.sleep(100);
                mqs = Clients.tryQueues(p, topic);
            }
            boolean pass = mqs.size() == queues;
            Out.done(pass, "topic=" + topic + " queues=" + mqs.size() + " want=" + queues);
            return pass;
        } finally {
            p.shutdown();
        }
    }
}
