package weir.interop;

import java.util.HashMap;
import java.util.HashSet;
import java.util.Map;
import java.util.Set;

/** key=value arguments after the name server address. Unknown keys are an error. */
public final class Args {
    final String namesrv;
    private final Map<String, String> map = new HashMap<>();
    private final Set<String> used = new HashSet<>();

    Args(String namesrv, String[] argv, int from) {
        this.namesrv = namesrv;
        for (int i = from; i < argv.length; i++) {
            int eq = argv[i].indexOf('=');
            if (eq <= 0) {
                throw new IllegalArgumentException("expected key=value, got '" + argv[i] + "'");
            }
            map.put(argv[i].substring(0, eq), argv[i].substring(eq + 1));
        }
        timeoutMs(); // read by Main, after the scenario has checked its keys
    }

    String str(String key, String dflt) {
        used.add(key);
        return map.getOrDefault(key, dflt);
    }

    int integer(String key, int dflt) {
        String v = str(key, null);
        return v == null ? dflt : Integer.parseInt(v.trim());
    }

    long lng(String key, long dflt) {
        String v = str(key, null);
        return v == null ? dflt : Long.parseLong(v.trim());
    }

    boolean bool(String key, boolean dflt) {
        String v = str(key, null);
        return v == null ? dflt : Boolean.parseBoolean(v.trim());
    }

    /** Overall deadline of the scenario (ms); every wait is bounded by it. */
    long timeoutMs() {
        return lng("timeout", 60_000);
    }

    /** Call after reading every key: rejects typos. */
    void checkAllUsed() {
        for (String k : map.keySet()) {
            if (!used.contains(k)) {
                throw new IllegalArgumentException("unknown argument '" + k + "'");
            }
        }
    }
}
