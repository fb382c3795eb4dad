package weir.interop;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.function.Function;

/**
 * Entry point: {@code weir.interop.Main <scenario> <namesrv> [key=value ...]}.
 *
 * <p>Facts go to stdout as tab-separated lines (see interop/README.md); logs go to stderr;
 * the RocketMQ client's own log goes to a temp dir at WARN unless -Drocketmq.client.logRoot
 * is given. Exit status: 0 = DONE ok, 1 = DONE fail (checks or timeout), 2 = usage or
 * unexpected exception.
 */
public final class Main {
    private static final Map<String, Function<Args, Scenario>> SCENARIOS = new TreeMap<>();
    private static final List<Path> TEMP_DIRS = new ArrayList<>();

    static {
        SCENARIOS.put("produce", Produce::new);
        SCENARIOS.put("batch", Batch::new);
        SCENARIOS.put("consume", a -> new Consume(a, false));
        SCENARIOS.put("broadcast", a -> new Consume(a, true));
        SCENARIOS.put("orderly", Orderly::new);
        SCENARIOS.put("retry", Retry::new);
        SCENARIOS.put("delay", Delay::new);
        SCENARIOS.put("tx", Tx::new);
        SCENARIOS.put("sql92", Sql92::new);
        SCENARIOS.put("pull", Pull::new);
        SCENARIOS.put("view", View::new);
        SCENARIOS.put("admin", Admin::new);
        SCENARIOS.put("latency", Latency::new);
    }

    public static void main(String[] argv) {
        if (argv.length < 2 || !SCENARIOS.containsKey(argv[0])) {
            System.err.println("usage: weir.interop.Main <scenario> <namesrv host:port[;host:port]> [key=value ...]");
            System.err.println("scenarios: " + String.join(" ", SCENARIOS.keySet()));
            System.exit(2);
        }
        int rc;
        try {
            quietClientLog();
            Args args = new Args(argv[1], argv, 2);
            Out.log(argv[0] + ": remoting headers "
                    + org.apache.rocketmq.remoting.protocol.RemotingCommand.getSerializeTypeConfigInThisServer());
            Scenario s = SCENARIOS.get(argv[0]).apply(args);
            Watchdog.arm(args.timeoutMs() + 15_000);
            boolean ok = s.run();
            Out.log(argv[0] + " finished " + Clients.sinceStart() + " ms after JVM start");
            rc = ok ? 0 : 1;
        } catch (Clients.Timeout e) {
            Out.log("timeout: " + e.getMessage());
            Out.done(false, "timeout: " + Out.clean(e.getMessage()));
            rc = 1;
        } catch (IllegalArgumentException e) {
            Out.log("bad argument: " + e.getMessage());
            Out.done(false, "bad argument: " + Out.clean(e.getMessage()));
            rc = 2;
        } catch (Throwable t) {
            t.printStackTrace(System.err);
            Out.done(false, "exception: " + Out.clean(String.valueOf(t)));
            rc = 2;
        }
        // Temp dirs made here go; the client log stays when the scenario failed.
        for (Path dir : TEMP_DIRS) {
            if (rc == 0 || !dir.getFileName().toString().startsWith("weir-interop-log") || isEmpty(dir)) {
                deleteTree(dir);
            } else {
                Out.log("client log kept in " + dir);
            }
        }
        System.out.flush();
        System.err.flush();
        // Client shutdown hooks and non-daemon threads must not keep us alive.
        Runtime.getRuntime().halt(rc);
    }

    /** RocketMQ client logging: a temp dir, WARN, unless the caller chose otherwise. */
    private static void quietClientLog() throws Exception {
        if (System.getProperty("rocketmq.client.logRoot") == null) {
            Path dir = Files.createTempDirectory("weir-interop-log");
            TEMP_DIRS.add(dir);
            System.setProperty("rocketmq.client.logRoot", dir.toString());
        }
        if (System.getProperty("rocketmq.client.logLevel") == null) {
            System.setProperty("rocketmq.client.logLevel", "WARN");
        }
        // The 5.x client logs through its own logback (rmq.client.logback.xml), which reads
        // other names and otherwise writes ~/logs/rocketmqlogs at INFO.
        if (System.getProperty("rocketmq.log.root") == null) {
            System.setProperty("rocketmq.log.root", System.getProperty("rocketmq.client.logRoot"));
        }
        if (System.getProperty("rocketmq.log.level") == null) {
            System.setProperty("rocketmq.log.level", System.getProperty("rocketmq.client.logLevel"));
        }
        if (System.getProperty("rocketmq.client.localOffsetStoreDir") == null) {
            // Broadcasting consumers keep offsets in files; never reuse them across runs.
            Path dir = Files.createTempDirectory("weir-interop-offsets");
            TEMP_DIRS.add(dir);
            System.setProperty("rocketmq.client.localOffsetStoreDir", dir.toString());
        }
        // Rebalance every second instead of every 20 s (a new member is also announced by
        // the broker's NOTIFY_CONSUMER_IDS_CHANGED, which wakes the rebalance at once).
        if (System.getProperty("rocketmq.client.rebalance.waitInterval") == null) {
            System.setProperty("rocketmq.client.rebalance.waitInterval", "1000");
        }
        // Orderly consumers re-lock their queues every 20 s by default.
        if (System.getProperty("rocketmq.client.rebalance.lockInterval") == null) {
            System.setProperty("rocketmq.client.rebalance.lockInterval", "5000");
        }
    }

    private static boolean isEmpty(Path dir) {
        try (var walk = Files.walk(dir)) {
            return walk.noneMatch(Files::isRegularFile);
        } catch (Exception e) {
            return false;
        }
    }

    private static void deleteTree(Path dir) {
        try (var walk = Files.walk(dir)) {
            walk.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
        } catch (Exception e) {
            Out.log("could not remove " + dir + ": " + e);
        }
    }

    /** Halts the JVM if a scenario hangs past its own deadline (a bug in a wait). */
    static final class Watchdog {
        static void arm(long ms) {
            Thread t = new Thread(() -> {
                try {
                    Thread.sleep(ms);
                } catch (InterruptedException e) {
                    return;
                }
                Out.done(false, "watchdog: scenario still running after " + ms + " ms");
                System.out.flush();
                Runtime.getRuntime().halt(1);
            }, "weir-interop-watchdog");
            t.setDaemon(true);
            t.start();
        }
    }
}
