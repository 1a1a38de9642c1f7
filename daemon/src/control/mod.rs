//! The per-device control socket: newline-delimited JSON, one request per line, answered
//! by zero or more `progress` lines and one final `ok` (a typed [`Answer`]) or `error`
//! (a typed [`Failure`]) line, every line carrying [`PROTOCOL_VERSION`]. Root only
//! (socket mode 0600, peer uid checked).

pub mod answer;
pub mod client;
pub mod failure;
pub mod ops;
pub mod protocol;
pub mod server;

pub use answer::Answer;
pub use client::Client;
pub use failure::{DaemonOnly, Failure, FailureKind};
pub use protocol::{Reply, Request, ShipAction, PROTOCOL_VERSION};
pub use server::{Handler, Server};
