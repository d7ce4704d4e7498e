//! A JSON-RPC 2.0 client over the daemon's socket (docs/protocol.md): one JSON value per line, replies
//! matched by id, events handed to whoever subscribed.
//!
//! Blocking, std only, and safe to share between threads (`Client` is `Send + Sync`): a Tauri backend keeps
//! one in its managed state, calls it from commands (inside `spawn_blocking`), and moves the event receiver
//! into a thread that forwards each event to the webview. One reader thread per connection reads every line,
//! so events never wait for a call and a call never misses its reply.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::error::Error;
use crate::json::{self, Value};
use crate::paths;
use crate::sys;

/// One event notification: `{"method":"event","params":{"event":…,"seq":…,"data":…}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    /// Numbers every event the daemon publishes, from 1 after it starts; a gap is an event of a name this
    /// connection did not subscribe to, never a lost one (docs/protocol.md, Events).
    pub seq: u64,
    pub data: Value,
}

pub struct Client {
    /// Whole lines go out under this lock, so calls from several threads never interleave.
    writer: Mutex<UnixStream>,
    shared: Arc<Mutex<Shared>>,
    next_id: AtomicU64,
    reader: Option<JoinHandle<()>>,
    timeout: Duration,
}

/// What the reader thread and the callers share.
#[derive(Default)]
struct Shared {
    waiting: HashMap<u64, Sender<Result<Value, Error>>>,
    events: Option<Sender<Event>>,
    /// Why the connection ended, once it has: every later call fails with it at once.
    ended: Option<Error>,
    /// An error that answers no request (`"id": null`): the daemon's refusal of a client of another user
    /// comes so, just before it closes the connection.
    unmatched: Option<Error>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Client {
    /// Connects to the socket found by docs/protocol.md's steps.
    pub fn connect() -> Result<Client, Error> {
        Client::connect_to(paths::socket_path())
    }

    /// Connects to `path`, after the checks docs/protocol.md asks of a client: the socket's directory is
    /// safe from other users, and the process serving the socket is our own user's or root's. Nothing is
    /// sent to a socket that fails them.
    pub fn connect_to(path: impl Into<PathBuf>) -> Result<Client, Error> {
        let path = path.into();
        paths::check_socket_dir(path.parent().unwrap_or_else(|| Path::new("/")))?;
        let stream = UnixStream::connect(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => Error::NotRunning { path: path.clone() },
            _ => Error::Unreachable { path: path.clone(), reason: e.to_string() },
        })?;
        match sys::peer_uid(&stream) {
            Some(uid) if paths::trusted_uid(uid) => {}
            server => {
                let whose = server.map_or("an unknown user".to_owned(), |uid| format!("uid {}", uid));
                return Err(Error::Untrusted {
                    message: format!(
                        "The socket {} is served by {}, not by you, so nothing was sent to it.",
                        path.display(),
                        whose
                    ),
                    hint: "Someone may be posing as convocationsd: check CONVOCATIONS_SOCKET, and start your own \
                           daemon with `convocationsd`."
                        .to_owned(),
                });
            }
        }
        let incoming =
            stream.try_clone().map_err(|e| Error::Unreachable { path: path.clone(), reason: e.to_string() })?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let reader = {
            let (shared, path) = (Arc::clone(&shared), path.clone());
            thread::Builder::new()
                .name("convocationsd-reader".to_owned())
                .spawn(move || read_lines(incoming, &shared, &path))
        }
        .map_err(|e| Error::Unreachable { path: path.clone(), reason: e.to_string() })?;
        Ok(Client {
            writer: Mutex::new(stream),
            shared,
            next_id: AtomicU64::new(0),
            reader: Some(reader),
            timeout: Duration::from_secs(30),
        })
    }

    /// How long `call` waits for its reply (30 seconds unless set).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Calls `method` with named `params` (an object, or `Value::Null` for none) and waits for its result.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (reply_to, reply) = mpsc::channel();
        {
            let mut shared = lock(&self.shared);
            if let Some(why) = &shared.ended {
                return Err(why.clone());
            }
            shared.waiting.insert(id, reply_to);
        }
        let mut request =
            vec![("jsonrpc", Value::from("2.0")), ("id", Value::from(id)), ("method", Value::from(method))];
        if !params.is_null() {
            request.push(("params", params));
        }
        let line = format!("{}\n", Value::object(request));
        let sent = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).write_all(line.as_bytes());
        let wait = match sent {
            Ok(()) => self.timeout,
            // The daemon closed the connection, perhaps saying why first (its refusal of another user): the
            // reader hands that to every waiting call once it reads the end, which is already on its way.
            Err(_) => Duration::from_secs(2),
        };
        match reply.recv_timeout(wait) {
            Ok(outcome) => outcome,
            Err(RecvTimeoutError::Timeout) => {
                lock(&self.shared).waiting.remove(&id);
                match sent {
                    Ok(()) => Err(Error::NoReply { method: method.to_owned() }),
                    Err(e) => Err(Error::Closed { reason: e.to_string() }),
                }
            }
            // The reader answers every waiting call before it lets go of it; this is for completeness.
            Err(RecvTimeoutError::Disconnected) => Err(Error::Closed { reason: "no reply".to_owned() }),
        }
    }

    /// Subscribes this connection to exactly the events named (a later `subscribe` replaces the set) and
    /// returns them as they come, in `seq` order. The receiver ends when the connection does.
    pub fn subscribe(&self, names: &[&str]) -> Result<Receiver<Event>, Error> {
        let (deliver, events) = mpsc::channel();
        // In place before the request goes out: an event may follow its reply before `call` returns.
        let previous = lock(&self.shared).events.replace(deliver);
        let names: Vec<Value> = names.iter().map(|&name| Value::from(name)).collect();
        match self.call("subscribe", Value::object([("events", Value::Array(names))])) {
            Ok(_) => Ok(events),
            Err(e) => {
                lock(&self.shared).events = previous; // refused: the daemon keeps the old set, so do we
                Err(e)
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Ok(stream) = self.writer.get_mut() {
            let _ = stream.shutdown(std::net::Shutdown::Both); // the reader sees the end and returns
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// The reader thread: every line from the daemon, until the connection ends; then every waiting call is
/// told why, and the event receiver ends.
fn read_lines(stream: UnixStream, shared: &Mutex<Shared>, path: &Path) {
    let mut lines = BufReader::new(stream);
    let mut line = Vec::new();
    let why = loop {
        line.clear();
        match lines.read_until(b'\n', &mut line) {
            Ok(0) => break Error::Closed { reason: "end of file".to_owned() },
            Ok(_) => {}
            Err(e) => break Error::Closed { reason: e.to_string() },
        }
        match std::str::from_utf8(&line).ok().and_then(|text| json::parse(text).ok()) {
            Some(message @ Value::Object(_)) => dispatch(message, &mut lock(shared)),
            // Not shown: the line may be part of an answer that carries the key.
            _ => break Error::NotJsonRpc { path: path.to_path_buf() },
        }
    };
    let mut shared = lock(shared);
    let why = shared.unmatched.take().unwrap_or(why);
    for (_, reply_to) in shared.waiting.drain() {
        let _ = reply_to.send(Err(why.clone()));
    }
    shared.events = None;
    shared.ended = Some(why);
}

fn dispatch(message: Value, shared: &mut Shared) {
    if message["method"].as_str() == Some("event") {
        let params = &message["params"];
        if let (Some(name), Some(seq), Some(deliver)) =
            (params["event"].as_str(), params["seq"].as_u64(), &shared.events)
        {
            let _ = deliver.send(Event { name: name.to_owned(), seq, data: params["data"].clone() });
        }
        return;
    }
    let outcome = match message.get("error") {
        Some(error) if !error.is_null() => Err(remote_error(error)),
        _ => Ok(message["result"].clone()),
    };
    match message["id"].as_u64().and_then(|id| shared.waiting.remove(&id)) {
        Some(reply_to) => {
            let _ = reply_to.send(outcome);
        }
        None => {
            if let Err(e) = outcome {
                shared.unmatched = Some(e);
            }
        }
    }
}

fn remote_error(error: &Value) -> Error {
    let data = &error["data"];
    Error::Remote {
        code: error["code"].as_f64().map_or(-32603, |code| code as i64),
        message: error["message"].as_str().unwrap_or("unknown error").to_owned(),
        hint: data["hint"].as_str().unwrap_or("").to_owned(),
        kind: data["kind"].as_str().map(str::to_owned),
    }
}
