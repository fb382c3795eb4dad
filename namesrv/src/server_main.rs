//! What every weir server binary does around its work: logging, a one-line fatal error,
//! the heap's page size, and waiting for Ctrl-C or SIGTERM. (Shared by `weir-namesrv` and
//! `weir-broker`; the `weir` command line takes the heap setting too.)

/// Logs to stdout through `tracing`, filtered by `RUST_LOG` (default `info`), colored only
/// on a terminal.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

/// Keeps this process's heap on ordinary 4 KiB pages: transparent huge pages off (the
/// process-wide `PR_SET_THP_DISABLE`), unless `MIMALLOC_ALLOW_THP` is set, in which case
/// mimalloc's own switch decides.
///
/// Why: mimalloc asks for huge pages for its segments, and the kernel then zeroes 2 MiB
/// at the first touch of each, however little of it is used. A burst that grows a
/// thread's heap (a filter worker's or a consumer's first catch-up read) paid for that:
/// on this project's virtual machines a fresh huge page costs about 8 times more per byte
/// than small pages (the README's replication figures say why). With huge pages off (in
/// broker and consumer), a fresh broker's first filtered catch-up read examined a median
/// 7.55 M offsets a second against 6.3 M (6 alternated runs), the consumer spending a
/// third less CPU. Brokers are usually run with huge pages off for their latency anyway
/// (RocketMQ's `os.sh` turns them off machine-wide). The store's maps of its files are
/// not affected (they never asked for huge pages).
///
/// Returns the kernel's refusal (kernels before 3.15 lack the switch); the caller logs it.
pub fn heap_on_small_pages() -> std::io::Result<()> {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return Ok(());
    }
    rustix::thread::disable_transparent_huge_pages(true).map_err(std::io::Error::from)
}

/// Raises this process's limit of open files to the most it may have (the hard limit):
/// a broker keeps a file open for every consume queue that holds messages, besides its
/// connections. Returns the limit in force after.
pub fn open_files_at_hard_limit() -> std::io::Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).map_err(std::io::Error::from)?;
    }
    Ok(limit.current.unwrap_or(u64::MAX))
}

/// Runs `run`; on error prints `NAME: error: causes` on one line and exits non-zero.
pub fn exit_code(name: &str, result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Ctrl-C and SIGTERM, listened for from the moment this is made: a signal that arrives
/// while the server is still starting (opening and recovering its store, say) is kept and
/// seen by [`StopSignal::recv`] once it is, so the server then stops cleanly instead of
/// dying half-open.
pub struct StopSignal {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
}

impl StopSignal {
    /// Registers the handlers now (inside a tokio runtime).
    pub fn listen() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
        }
    }

    /// Resolves on the first Ctrl-C or SIGTERM since [`StopSignal::listen`].
    pub async fn recv(&mut self) {
        async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.interrupt) => {}
            _ = next(&mut self.terminate) => {}
        }
    }
}

/// Reads a TOML config file, naming the file in any error.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> anyhow::Result<T> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_one() {
        use rustix::process::{Resource, getrlimit};
        let n = super::open_files_at_hard_limit().unwrap();
        let after = getrlimit(Resource::Nofile);
        assert_eq!(after.current, after.maximum);
        assert_eq!(n, after.current.unwrap_or(u64::MAX));
    }
}
