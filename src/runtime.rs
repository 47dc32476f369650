//! Runtime selection: io_uring where the kernel allows it, the legacy (epoll) driver
//! otherwise or when asked (`driver = "legacy"`, `MONOIO_FORCE_LEGACY_DRIVER=1`).
//!
//! Owns building one monoio runtime per worker thread. It must not know what runs on it.

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
pub fn legacy_forced() -> bool {
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
        Effective::Uring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(4096)
            .enable_timer()
            .build()?
            .block_on(fut),
        Effective::Legacy => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()?
            .block_on(fut),
    })
}
