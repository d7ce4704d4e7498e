//! What can go wrong, each with a message (what happened) and a hint (what to do), worded as convctl's.

use std::fmt;
use std::path::PathBuf;

pub const START_HINT: &str = "Start it with `convocationsd` (or `systemctl --user start convocationsd.socket`).";
/// Where to go when the socket's place cannot be trusted.
pub const ELSEWHERE: &str = "CONVOCATIONS_SOCKET (or XDG_RUNTIME_DIR) to a place in a directory only you can write to.";

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// Nothing listens on the socket (ENOENT, ECONNREFUSED): the daemon is not running.
    NotRunning { path: PathBuf },
    /// Connecting failed for another reason (a path too long for a socket, no permission, ...).
    Unreachable { path: PathBuf, reason: String },
    /// The socket's directory, or the process serving it, is not the user's own (or root's): someone may be
    /// posing as the daemon, so nothing was sent.
    Untrusted { message: String, hint: String },
    /// The daemon answered with a JSON-RPC error; `kind` is `data.kind` of a -32000 error (docs/protocol.md).
    Remote { code: i64, message: String, hint: String, kind: Option<String> },
    /// The connection ended before the answer came.
    Closed { reason: String },
    /// No answer in time; the daemon may still be working on it.
    NoReply { method: String },
    /// A line that is not a JSON-RPC message: is this convocationsd's socket at all?
    NotJsonRpc { path: PathBuf },
}

impl Error {
    pub fn hint(&self) -> String {
        match self {
            Error::NotRunning { .. } | Error::Unreachable { .. } => START_HINT.to_owned(),
            Error::Untrusted { hint, .. } | Error::Remote { hint, .. } => hint.clone(),
            Error::Closed { .. } => "Check that the daemon runs (`convctl status`), then try again.".to_owned(),
            Error::NoReply { .. } => {
                "It may still be working on it: check `convctl status`; restart the daemon if it hangs.".to_owned()
            }
            Error::NotJsonRpc { .. } => {
                "Check that CONVOCATIONS_SOCKET names convocationsd's socket, then restart the daemon.".to_owned()
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotRunning { path } => {
                write!(f, "The convocationsd daemon is not running (nothing listens on {}).", path.display())
            }
            Error::Unreachable { path, reason } => {
                write!(f, "Cannot reach the convocationsd daemon at {}: {}.", path.display(), reason)
            }
            Error::Untrusted { message, .. } | Error::Remote { message, .. } => f.write_str(message),
            Error::Closed { reason } => {
                write!(f, "The connection to the daemon ended before it answered ({}).", reason)
            }
            Error::NoReply { method } => write!(f, "The daemon did not answer `{}` in time.", method),
            Error::NotJsonRpc { path } => {
                write!(f, "The daemon at {} sent a line that is not a JSON-RPC message.", path.display())
            }
        }
    }
}

impl std::error::Error for Error {}
