package weir.interop;

import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import org.apache.rocketmq.client.producer.DefaultMQProducer;
import org.apache.rocketmq.client.producer.SendCallback;
import org.apache.rocketmq.client.producer.SendResult;
import org.apache.rocketmq.client.producer.SendStatus;
import org.apache.rocketmq.common.message.Message;

/**
 * {@code produce topic= group= count= modes=sync,async,oneway big= keyPrefix= delayLevel= instance=}:
 * {@code count} messages per mode (seq numbers run on across modes). The first message
 * has a {@code big}-byte body (default 6000; 0 = none) so the client compresses it.
 */
final class Produce implements Scenario {
    private final Args a;
    private final String topic;
    private final String group;
    private final int count;
    private final String[] modes;
    private final int big;
    private final String keyPrefix;
    private final int delayLevel;
    private final String instance;

    Produce(Args a) {
        this.a = a;
        topic = a.str("topic", "InteropT");
        group = a.str("group", "interop_pg");
        count = a.integer("count", 4);
        modes = a.str("modes", "sync,async,oneway").split(",");
        big = a.integer("big", 6000);
        keyPrefix = a.str("keyPrefix", "k");
        delayLevel = a.integer("delayLevel", 0);
        instance = Clients.instance(a, "produce");
        a.checkAllUsed();
    }

    @Override
    public boolean run() throws Exception {
        long deadline = System.currentTimeMillis() + a.timeoutMs();
        DefaultMQProducer p = Clients.producer(a, group, instance);
        p.start();
        Out.ready();
        int seq = 0;
        int ok = 0;
        int bad = 0;
        try {
            for (String mode : modes) {
                switch (mode) {
                    case "sync":
                        for (int i = 0; i < count; i++, seq++) {
                            Message m = msg(mode, seq);
                            try {
                                SendResult r = p.send(m);
                                Out.sent("sync", r, m);
                                if (r.getSendStatus() == SendStatus.SEND_OK) ok++; else bad++;
                            } catch (Exception e) {
                                Out.log("sync send failed: " + e);
                                Out.sentNoResult("sync", "EXCEPTION", m);
                                bad++;
                            }
                        }
                        break;
                    case "async": {
                        CountDownLatch latch = new CountDownLatch(count);
                        AtomicBoolean failed = new AtomicBoolean();
                        int[] okAsync = {0};
                        for (int i = 0; i < count; i++, seq++) {
                            Message m = msg(mode, seq);
                            p.send(m, new SendCallback() {
                                @Override
                                public void onSuccess(SendResult r) {
                                    Out.sent("async", r, m);
                                    synchronized (okAsync) {
                                        if (r.getSendStatus() == SendStatus.SEND_OK) okAsync[0]++; else failed.set(true);
                                    }
                                    latch.countDown();
                                }

                                @Override
                                public void onException(Throwable e) {
                                    Out.log("async send failed: " + e);
                                    Out.sentNoResult("async", "EXCEPTION", m);
                                    failed.set(true);
                                    latch.countDown();
                                }
                            });
                        }
                        if (!latch.await(Math.max(0, deadline - System.currentTimeMillis()), TimeUnit.MILLISECONDS)) {
                            throw new Clients.Timeout("async sends not acknowledged");
                        }
                        synchronized (okAsync) {
                            ok += okAsync[0];
                            bad += count - okAsync[0];
                        }
                        break;
                    }
                    case "oneway":
                        for (int i = 0; i < count; i++, seq++) {
                            Message m = msg(mode, seq);
                            p.sendOneway(m);
                            Out.sentNoResult("oneway", "NONE", m);
                            ok++;
                        }
                        break;
                    default:
                        throw new IllegalArgumentException("unknown mode " + mode);
                }
            }
        } finally {
            p.shutdown();
        }
        boolean pass = bad == 0;
        Out.done(pass, "sent=" + ok + " failed=" + bad);
        return pass;
    }

    private Message msg(String mode, int seq) {
        Message m = Clients.message(topic, mode, seq, keyPrefix, seq == 0 ? big : 0);
        if (delayLevel > 0) {
            m.setDelayTimeLevel(delayLevel);
        }
        return m;
    }
}
