//! A client for convocationsd's Unix socket, std only; docs/protocol.md is its whole contract.
//!
//! `Client::connect()` finds the socket and checks who serves it, `call(method, params)` sends a request and
//! waits for its result, `subscribe(names)` returns the events as they come. `src/bin/login.rs` uses all
//! three; examples/README.md shows a Tauri command doing the same. To embed this in an app, copy these
//! files (not `bin/`) into a module of it.

pub mod client;
pub mod error;
pub mod json;
pub mod paths;
mod sys;

pub use client::{Client, Event};
pub use error::Error;
pub use json::Value;
