package weir.interop;

/** One probe program. {@link #run()} prints its lines and returns true for DONE ok. */
public interface Scenario {
    boolean run() throws Exception;
}
