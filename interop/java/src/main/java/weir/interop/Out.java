package weir.interop;

import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.time.Instant;
import java.util.HexFormat;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import org.apache.rocketmq.client.producer.SendResult;
import org.apache.rocketmq.common.message.Message;
import org.apache.rocketmq.common.message.MessageClientIDSetter;
import org.apache.rocketmq.common.message.MessageExt;

/**
 * The stdout line protocol (interop/README.md). One line per fact, tab-separated, flushed
 * at once; every field is passed through {@link #clean} so it holds no tab or newline.
 */
public final class Out {
    private static final Object LOCK = new Object();
    /** Properties the broker adds per delivery, left out of RECV. */
    private static final Set<String> VOLATILE = Set.of("MIN_OFFSET", "MAX_OFFSET", "CONSUME_START_TIME");

    private Out() {}

    static void line(String... fields) {
        String s = String.join("\t", fields);
        synchronized (LOCK) {
            System.out.println(s);
            System.out.flush();
        }
    }

    static void log(String msg) {
        synchronized (LOCK) {
            System.err.println(Instant.now() + " " + msg);
            System.err.flush();
        }
    }

    static void ready() {
        line("READY");
        log("READY " + Clients.sinceStart() + " ms after JVM start");
    }

    static void done(boolean ok, String summary) {
        line("DONE", ok ? "ok" : "fail", clean(summary));
    }

    static void unsupported(String feature, String why) {
        line("UNSUPPORTED", clean(feature), clean(why));
    }

    static void tx(String uniq, String state, boolean checked) {
        line("TX", clean(uniq), clean(state), Boolean.toString(checked));
    }

    /** SENT for a send that has a result (sync, async, orderly, tx, delay, …). */
    static void sent(String mode, SendResult r, Message m) {
        line("SENT", mode, r.getSendStatus().name(), clean(r.getMsgId()), clean(r.getOffsetMsgId()),
                Integer.toString(r.getMessageQueue().getQueueId()), Long.toString(r.getQueueOffset()),
                clean(m.getTags()), clean(m.getKeys()), Integer.toString(m.getBody().length), sha256(m.getBody()));
    }

    /** SENT for a send without a result (oneway) or a failed one. */
    static void sentNoResult(String mode, String status, Message m) {
        line("SENT", mode, status, clean(MessageClientIDSetter.getUniqID(m)), "-", "-1", "-1",
                clean(m.getTags()), clean(m.getKeys()), Integer.toString(m.getBody().length), sha256(m.getBody()));
    }

    /** SENT for one message of a batch: ids and offsets come from the batch result. */
    static void sentBatch(String status, String uniq, String offsetMsgId, int queueId, long queueOffset, Message m) {
        line("SENT", "batch", status, clean(uniq), clean(offsetMsgId), Integer.toString(queueId),
                Long.toString(queueOffset), clean(m.getTags()), clean(m.getKeys()),
                Integer.toString(m.getBody().length), sha256(m.getBody()));
    }

    static void recv(String consumerTag, MessageExt m) {
        line("RECV", clean(consumerTag), clean(m.getTopic()), Integer.toString(m.getQueueId()),
                Long.toString(m.getQueueOffset()), clean(m.getMsgId()), clean(offsetMsgId(m)), clean(m.getTags()),
                clean(m.getKeys()), props(m.getProperties()), Integer.toString(m.getReconsumeTimes()),
                Integer.toString(m.getBody() == null ? 0 : m.getBody().length), sha256(m.getBody()),
                Long.toString(m.getBornTimestamp()), Long.toString(m.getStoreTimestamp()),
                Long.toString(System.currentTimeMillis()));
    }

    static String offsetMsgId(MessageExt m) {
        if (m instanceof org.apache.rocketmq.common.message.MessageClientExt) {
            return ((org.apache.rocketmq.common.message.MessageClientExt) m).getOffsetMsgId();
        }
        return m.getMsgId();
    }

    /** Sorted k=v;k=v with the per-delivery properties removed; % ; = escaped as %XX. */
    static String props(Map<String, String> p) {
        StringBuilder sb = new StringBuilder();
        for (Map.Entry<String, String> e : new TreeMap<>(p).entrySet()) {
            if (VOLATILE.contains(e.getKey())) {
                continue;
            }
            if (sb.length() > 0) {
                sb.append(';');
            }
            sb.append(esc(e.getKey())).append('=').append(esc(e.getValue()));
        }
        return sb.toString();
    }

    private static String esc(String s) {
        if (s == null) {
            return "";
        }
        StringBuilder sb = new StringBuilder();
        for (char c : s.toCharArray()) {
            if (c == '%' || c == ';' || c == '=' || c < 0x20) {
                sb.append(String.format("%%%02X", (int) c));
            } else {
                sb.append(c);
            }
        }
        return sb.toString();
    }

    /** A field value: null becomes "", tabs and line breaks become spaces. */
    static String clean(String s) {
        if (s == null) {
            return "";
        }
        return s.replace('\t', ' ').replace('\n', ' ').replace('\r', ' ');
    }

    static String sha256(byte[] b) {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(b == null ? new byte[0] : b));
        } catch (Exception e) {
            throw new IllegalStateException(e);
        }
    }

    static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }
}
