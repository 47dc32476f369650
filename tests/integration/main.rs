//! Integration tests: the real binary, a real socket, a real HTTP receiver.
//!
//! Run with the io_uring driver by default and with `MONOIO_FORCE_LEGACY_DRIVER=1` for
//! the legacy one (the README's test command runs both).

mod harness;

mod admin;
mod api;
mod check;
mod crash;
mod delivery;
mod network;
mod policy;
mod protocol;
mod routing;
mod tls;
