package weir.interop;

import org.apache.rocketmq.client.QueryResult;
import org.apache.rocketmq.client.producer.DefaultMQProducer;
import org.apache.rocketmq.client.producer.SendResult;
import org.apache.rocketmq.client.producer.SendStatus;
import org.apache.rocketmq.common.message.Message;
import org.apache.rocketmq.common.message.MessageExt;

/**
 * {@code view topic= group= instance=}: sends one message (key v0), then looks it up three
 * ways, each printed as a RECV line whose consumer tag names the way:
 * {@code view-offset} = viewMessage(offsetMsgId) (VIEW_MESSAGE_BY_ID),
 * {@code view-uniq} = viewMessage(topic, uniqMsgId) (QUERY_MESSAGE by UNIQ_KEY),
 * {@code query-key} = queryMessage(topic, "v0", …) (QUERY_MESSAGE by key).
 * Index look-ups are retried until found (the index may lag the send).
 */
final class View implements Scenario {
    private final Args a;
    private final String topic;
    private final String group;
    private final String instance;

    View(Args a) {
        this.a = a;
        topic = a.str("topic", "InteropViewT");
        group = a.str("group", "interop_view_pg");
        instance = Clients.instance(a, "view");
        a.checkAllUsed();
    }

    @Override
    public boolean run() throws Exception {
        long deadline = System.currentTimeMillis() + a.timeoutMs();
        DefaultMQProducer p = Clients.producer(a, group, instance);
        p.start();
        Out.ready();
        try {
            Message m = Clients.message(topic, "view", 0, "v", 0);
            SendResult r = p.send(m);
            Out.sent("sync", r, m);
            if (r.getSendStatus() != SendStatus.SEND_OK) {
                Out.done(false, "send " + r.getSendStatus());
                return false;
            }
            MessageExt byOffset = p.viewMessage(topic, r.getOffsetMsgId());
            Out.recv("view-offset", byOffset);
            boolean okOffset = r.getMsgId().equals(byOffset.getMsgId()) || r.getMsgId().equals(byOffset.getProperty("UNIQ_KEY"));

            MessageExt byUniq = null;
            String lastErr = "";
            while (byUniq == null && System.currentTimeMillis() < deadline) {
                try {
                    byUniq = p.viewMessage(topic, r.getMsgId());
                } catch (Exception e) {
                    lastErr = String.valueOf(e);
                    Clients.sleep(200);
                }
            }
            if (byUniq != null) {
                Out.recv("view-uniq", byUniq);
            }
            MessageExt byKey = null;
            while (byKey == null && System.currentTimeMillis() < deadline) {
                try {
                    QueryResult q = p.queryMessage(topic, "v0", 32, 0, Long.MAX_VALUE);
                    if (!q.getMessageList().isEmpty()) {
                        byKey = q.getMessageList().get(0);
                    } else {
                        Clients.sleep(200);
                    }
                } catch (Exception e) {
                    lastErr = String.valueOf(e);
                    Clients.sleep(200);
                }
            }
            if (byKey != null) {
                Out.recv("query-key", byKey);
            }
            boolean pass = okOffset && byUniq != null && byKey != null;
            Out.done(pass, "byOffset=" + okOffset + " byUniq=" + (byUniq != null) + " byKey=" + (byKey != null)
                    + (pass ? "" : " lastError=" + lastErr));
            return pass;
        } finally {
            p.shutdown();
        }
    }
}
