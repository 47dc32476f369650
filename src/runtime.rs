//! Runtime selection: io_uring where the kernel allows it, the legacy (epoll) driver
//! otherwise or when asked (`driver = "legacy"`, `MONOIO_FORCE_LEGACY_DRIVER=1`).
//!
//! Owns building one monoio runtime per worker thread. It must not know what runs on it.
//!
//! An io_uring ring is set up with cooperative task running (`IORING_SETUP_COOP_TASKRUN`,
//! with `SINGLE_ISSUER`: each ring is used by the one thread that made it): a completion
//! that arrives while its thread runs in user space waits for the thread's next entry
//! into the kernel, instead of interrupting it. Flat out that took `max`'s deliveries
//! from 70.9–80.4k to 81.0–86.4k a second in five alternating pairs (docs/performance.md,
//! session 54). A kernel that refuses those flags (before 6.0) gets a plain ring.

use std::future::Future;

use crate::config::Driver;

/// The driver a worker will actually use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effective {
    Uring,
    Legacy,
}

impl Effective {
    /// As the config names it (`driver = "uring"`).
    pub fn name(self) -> &'static str {
        match self {
            Effective::Uring => "uring",
            Effective::Legacy => "legacy",
        }
    }
}

/// Errors choosing or building a runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("driver = \"uring\" was requested but io_uring is not available on this kernel")]
    UringUnavailable,
    #[error("cannot build the monoio runtime: {0}")]
    Build(#[from] std::io::Error),
}

/// Whether `MONOIO_FORCE_LEGACY_DRIVER` asks for the legacy driver.
fn legacy_forced() -> bool {
    std::env::var("MONOIO_FORCE_LEGACY_DRIVER")
        .map(|v| !v.is_empty() && v != "0")
        .unwrap_or(false)
}

/// Resolves `auto` and the environment override.
pub fn choose(driver: Driver) -> Result<Effective, RuntimeError> {
    if legacy_forced() {
        if driver != Driver::Legacy {
            tracing::info!(
                configured = ?driver,
                "MONOIO_FORCE_LEGACY_DRIVER=1: the legacy driver, whatever `driver` says"
            );
        }
        return Ok(Effective::Legacy);
    }
    match driver {
        Driver::Legacy => Ok(Effective::Legacy),
        Driver::Uring if monoio::utils::detect_uring() => Ok(Effective::Uring),
        Driver::Uring => Err(RuntimeError::UringUnavailable),
        Driver::Auto if monoio::utils::detect_uring() => Ok(Effective::Uring),
        Driver::Auto => Ok(Effective::Legacy),
    }
}

/// Runs `fut` to completion on a new runtime of the chosen driver, on this thread.
pub fn block_on<F: Future>(driver: Effective, fut: F) -> Result<F::Output, RuntimeError> {
    Ok(match driver {
        Effective::Uring => uring_runtime(ring_setups())?.block_on(fut),
        Effective::Legacy => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()?
            .block_on(fut),
    })
}

/// The ring set-ups to try, best first: cooperative task running for one issuer, then a
/// plain ring.
fn ring_setups() -> [io_uring::Builder; 2] {
    let mut coop = io_uring::IoUring::builder();
    coop.setup_coop_taskrun().setup_single_issuer();
    [coop, io_uring::IoUring::builder()]
}

type UringRuntime = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;

/// An io_uring runtime on the first of `setups` the kernel takes; the last one's error
/// if it takes none.
fn uring_runtime(
    setups: impl IntoIterator<Item = io_uring::Builder>,
) -> std::io::Result<UringRuntime> {
    let mut refused = None;
    for setup in setups {
        let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(4096)
            .uring_builder(setup)
            .enable_timer()
            .build();
        match built {
            Ok(rt) => return Ok(rt),
            Err(e) => refused = Some(e),
        }
    }
    Err(refused.unwrap_or_else(|| std::io::Error::other("no io_uring set-up to try")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the kernel has io_uring at all (the tests run where it may be refused).
    fn uring() -> bool {
        monoio::utils::detect_uring()
    }

    #[test]
    fn a_ring_set_up_the_kernel_refuses_falls_back_to_the_next() {
        if !uring() {
            return;
        }
        // Deferred task running without a single issuer is refused (EINVAL) by every
        // kernel, as the cooperative set-up is by one before 6.0.
        let mut refused = io_uring::IoUring::builder();
        refused.setup_defer_taskrun();
        assert!(uring_runtime([refused.clone()]).is_err());
        let mut rt = uring_runtime([refused, io_uring::IoUring::builder()]).unwrap();
        assert_eq!(rt.block_on(async { 7 }), 7);
    }

    #[test]
    fn the_preferred_ring_runs_timers_and_io() {
        if !uring() {
            return;
        }
        let mut rt = uring_runtime(ring_setups()).unwrap();
        let echoed = rt.block_on(async {
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
            let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let client = monoio::spawn(async move {
                use monoio::io::AsyncWriteRentExt;
                let mut s = monoio::net::TcpStream::connect(addr).await.unwrap();
                s.write_all(b"ping").await.0.unwrap();
            });
            let (mut conn, _) = listener.accept().await.unwrap();
            client.await;
            use monoio::io::AsyncReadRentExt;
            let (n, buf) = conn.read_exact(vec![0u8; 4]).await;
            n.unwrap();
            buf
        });
        assert_eq!(echoed, b"ping");
    }
}
