package weir.interop;

import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.rocketmq.client.consumer.DefaultMQPushConsumer;
import org.apache.rocketmq.client.consumer.listener.ConsumeConcurrentlyStatus;
import org.apache.rocketmq.client.consumer.listener.MessageListenerConcurrently;
import org.apache.rocketmq.client.producer.LocalTransactionState;
import org.apache.rocketmq.client.producer.TransactionListener;
import org.apache.rocketmq.client.producer.TransactionMQProducer;
import org.apache.rocketmq.client.producer.TransactionSendResult;
import org.apache.rocketmq.client.producer.SendStatus;
import org.apache.rocketmq.common.message.Message;
import org.apache.rocketmq.common.message.MessageExt;

/**
 * {@code tx topic= group= grace= instance= timeout=}: a TransactionMQProducer sends three
 * half messages, keys {@code commit}, {@code rollback}, {@code unknown}; the local
 * transaction answers COMMIT_MESSAGE, ROLLBACK_MESSAGE and UNKNOW; the check-back answers
 * COMMIT_MESSAGE. TX lines: one per local decision (checked=false) and one per check-back
 * (checked=true). A consumer (group {@code group}) must receive exactly the commit and the
 * unknown message, and the unknown one only after a check-back. The broker's check-back
 * comes after its transaction timeout and check interval (RocketMQ defaults 6 s and 60 s:
 * run the broker with short ones, e.g. 1 s and 1 s).
 */
final class Tx implements Scenario {
    private static final String[] KEYS = {"commit", "rollback", "unknown"};
    private final Args a;
    private final String topic;
    private final String group;
    private final long grace;
    private final String instance;

    Tx(Args a) {
        this.a = a;
        topic = a.str("topic", "InteropTxT");
        group = a.str("group", "interop_tx_cg");
        grace = a.lng("grace", 2000);
        instance = Clients.instance(a, "tx");
        a.checkAllUsed();
    }

    @Override
    public boolean run() throws Exception {
        long deadline = System.currentTimeMillis() + a.timeoutMs();
        Set<String> checked = ConcurrentHashMap.newKeySet();
        Map<String, String> keyOf = new ConcurrentHashMap<>();
        TransactionMQProducer p = new TransactionMQProducer(group + "_pg");
        Clients.fast(p, a, instance);
        p.setSendMsgTimeout(5000);
        p.setTransactionListener(new TransactionListener() {
            @Override
            public LocalTransactionState executeLocalTransaction(Message msg, Object arg) {
                LocalTransactionState s;
                switch (msg.getKeys()) {
                    case "commit": s = LocalTransactionState.COMMIT_MESSAGE; break;
                    case "rollback": s = LocalTransactionState.ROLLBACK_MESSAGE; break;
                    default: s = LocalTransactionState.UNKNOW; break;
                }
                String uniq = msg.getProperty("UNIQ_KEY");
                keyOf.put(uniq, msg.getKeys());
                Out.tx(uniq, s.name(), false);
                return s;
            }

            @Override
            public LocalTransactionState checkLocalTransaction(MessageExt msg) {
                // The check-back body is a plain MessageExt: its msgId is the offsetMsgId of
                // the half message; the client puts UNIQ_KEY into transactionId.
                String uniq = msg.getProperty("UNIQ_KEY") != null ? msg.getProperty("UNIQ_KEY") : msg.getTransactionId();
                checked.add(msg.getKeys() == null ? "" : msg.getKeys());
                Out.tx(uniq, LocalTransactionState.COMMIT_MESSAGE.name(), true);
                Out.log("check-back for " + msg.getKeys() + " " + uniq + " transactionId=" + msg.getTransactionId());
                return LocalTransactionState.COMMIT_MESSAGE;
            }
        });
        p.start();
        Recorder rec = new Recorder(instance);
        DefaultMQPushConsumer c = Clients.pushConsumer(a, group, instance, false);
        try {
            int bad = 0;
            for (String k : KEYS) {
                Message m = new Message(topic, "TagA", k, Out.utf8("tx " + k));
                m.putUserProperty("color", "red");
                TransactionSendResult r = p.sendMessageInTransaction(m, null);
                Out.sent("tx", r, m);
                if (r.getSendStatus() != SendStatus.SEND_OK) {
                    bad++;
                }
            }
            c.subscribe(topic, "*");
            c.registerMessageListener((MessageListenerConcurrently) (msgs, ctx) -> {
                for (MessageExt m : msgs) {
                    rec.record(m);
                }
                return ConsumeConcurrentlyStatus.CONSUME_SUCCESS;
            });
            c.start();
            Clients.awaitAssigned(c, topic, 1, deadline);
            Out.ready();
            boolean got = rec.await(() -> rec.distinct() >= 2 && checked.contains("unknown"), grace, deadline);
            int rolledBack = 0;
            int commit = 0;
            int unknown = 0;
            for (MessageExt m : rec.messages()) {
                switch (String.valueOf(m.getKeys())) {
                    case "commit": commit++; break;
                    case "unknown": unknown++; break;
                    default: rolledBack++; break;
                }
            }
            boolean pass = got && bad == 0 && commit == 1 && unknown == 1 && rolledBack == 0
                    && !checked.contains("rollback") && !checked.contains("commit");
            Out.done(pass, "commit=" + commit + " unknownThenChecked=" + unknown + " rollbackDelivered=" + rolledBack
                    + " checked=" + checked + " sendFailures=" + bad);
            return pass;
        } finally {
            c.shutdown();
            p.shutdown();
        }
    }
}
