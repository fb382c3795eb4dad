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

/// Kilobytes of this process's memory mapped from `file` (its `Rss` in /proc/self/smaps).
pub(crate) fn mapped_kib(file: &std::path::Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let name = file.to_str().unwrap();
    let mut total = 0;
    let mut in_file = false;
    for line in smaps.lines() {
        if let Some(first) = line.split_whitespace().next()
            && first.contains('-')
            && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        {
            in_file = line.ends_with(name);
        } else if in_file && let Some(kib) = line.strip_prefix("Rss:") {
            total += kib.trim().trim_end_matches(" kB").parse::<u64>().unwrap();
        }
    }
    total
}
