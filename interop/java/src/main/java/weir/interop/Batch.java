package weir.interop;

import java.util.ArrayList;
import java.util.List;
import org.apache.rocketmq.client.producer.DefaultMQProducer;
import org.apache.rocketmq.client.producer.SendResult;
import org.apache.rocketmq.client.producer.SendStatus;
import org.apache.rocketmq.common.message.Message;

/**
 * {@code batch topic= group= count= keyPrefix= instance=}: one {@code send(List<Message>)} of
 * {@code count} messages (SEND_BATCH_MESSAGE); one SENT line per message, queue offsets
 * consecutive from the batch's first.
 */
final class Batch implements Scenario {
    private final Args a;
    private final String topic;
    private final String group;
    private final int count;
    private final String keyPrefix;
    private final String instance;

    Batch(Args a) {
        this.a = a;
        topic = a.str("topic", "InteropBatchT");
        group = a.str("group", "interop_batch_pg");
        count = a.integer("count", 10);
        keyPrefix = a.str("keyPrefix", "b");
        instance = Clients.instance(a, "batch");
        a.checkAllUsed();
    }

    @Override
    public boolean run() throws Exception {
        DefaultMQProducer p = Clients.producer(a, group, instance);
        p.start();
        Out.ready();
        List<Message> batch = new ArrayList<>();
        for (int i = 0; i < count; i++) {
            batch.add(Clients.message(topic, "batch", i, keyPrefix, 0));
        }
        boolean pass;
        try {
            SendResult r = p.send(batch);
            String[] ids = r.getMsgId().split(",");
            String[] offs = r.getOffsetMsgId() == null ? new String[0] : r.getOffsetMsgId().split(",");
            for (int i = 0; i < count; i++) {
                Out.sentBatch(r.getSendStatus().name(), i < ids.length ? ids[i] : "", i < offs.length ? offs[i] : "-",
                        r.getMessageQueue().getQueueId(), r.getQueueOffset() + i, batch.get(i));
            }
            pass = r.getSendStatus() == SendStatus.SEND_OK && ids.length == count && offs.length == count;
            Out.done(pass, "status=" + r.getSendStatus() + " ids=" + ids.length + " offsetMsgIds=" + offs.length
                    + " queue=" + r.getMessageQueue().getQueueId() + " firstOffset=" + r.getQueueOffset());
        } finally {
            p.shutdown();
        }
        return pass;
    }
}
