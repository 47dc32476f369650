//! TLS for `https://` endpoints (placeholder until the rustls client lands).

/// The error an https attempt records while TLS is unavailable.
pub const UNAVAILABLE: &str = "https delivery is not available in this build yet";

/// Prepares the process-wide TLS client configuration.
pub fn init(_extra_ca_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    Ok(())
}
