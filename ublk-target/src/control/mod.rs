//! The per-device control socket: newline-delimited JSON, one request per
//! line, answered by zero or more `progress` lines and one final `ok` or
//! `error` line. Root only (socket mode 0600, peer uid checked).

pub mod client;
pub mod ops;
pub mod protocol;
pub mod server;

pub use client::Client;
pub use protocol::{Reply, Request, ShipAction, ShipSecrets};
pub use server::{Handler, Server};
