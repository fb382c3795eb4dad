//! Helpers shared by this crate's unit tests.

/// Page faults this thread has taken so far (`minflt` in /proc/thread-self/stat), read
/// into a buffer on the stack so that reading it does not fault in heap pages.
pub(crate) fn minor_faults() -> u64 {
    use std::io::Read;
    let mut buf = [0u8; 1024];
    let mut file = std::fs::File::open("/proc/thread-self/stat").unwrap();
    let n = file.read(&mut buf).unwrap();
    let stat = std::str::from_utf8(&buf[..n]).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(7).unwrap().parse().unwrap()
}
