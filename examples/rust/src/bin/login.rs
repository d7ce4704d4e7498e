//! Links an OpenRouter account through convocationsd, as a Convocations frontend would: find the daemon's
//! socket, subscribe to the login's outcome, start (or join) a login, print the address to open, and wait
//! for `openrouter-auth-complete`. The Rust twin of examples/node/login.mjs.
//!
//!   login [--restart]
//!
//! Exit codes as convctl's: 0 linked, 1 the login failed, 2 a bad argument, 3 the daemon cannot be reached
//! (or the socket is not the user's own).

use std::process::ExitCode;

use convocations_client::{Client, Error, Value};

const USAGE: &str = "usage: login [--restart]\n\nLinks your OpenRouter account through convocationsd. --restart \
                     cancels a login in progress and starts a new one.";

fn main() -> ExitCode {
    let mut restart = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--restart" => restart = true,
            "-h" | "--help" => {
                println!("{}", USAGE);
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("login: unknown argument {:?}.\n{}", other, USAGE);
                return ExitCode::from(2);
            }
        }
    }
    match login(restart) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("login: {}", e);
            eprintln!("{}", e.hint());
            ExitCode::from(exit_code(&e))
        }
    }
}

/// convctl's: 3 when there is no daemon to talk to (or no trustworthy one), 1 when it said no.
fn exit_code(e: &Error) -> u8 {
    match e {
        Error::NotRunning { .. } | Error::Unreachable { .. } | Error::Untrusted { .. } | Error::Closed { .. } => 3,
        Error::Remote { .. } | Error::NoReply { .. } | Error::NotJsonRpc { .. } => 1,
    }
}

fn login(restart: bool) -> Result<u8, Error> {
    let client = Client::connect()?;
    let events = client.subscribe(&["openrouter-auth-complete"])?;
    // Its reply comes before any event it causes, so the session id is known before its outcome arrives.
    let login = client.call("oauth.start", Value::object([("restart", Value::from(restart))]))?;
    let session_id = &login["session_id"];
    if login["joined"].as_bool() == Some(true) {
        println!("Joined the login already in progress.");
    } else {
        println!("Started a login.");
    }
    println!("Open this address to link your OpenRouter account:\n");
    println!("  {}\n", login["auth_url"].as_str().unwrap_or(""));
    println!("Waiting for you to approve in the browser...");
    for event in events {
        if event.name != "openrouter-auth-complete" || &event.data["session_id"] != session_id {
            continue; // another login's outcome
        }
        let data = &event.data;
        if data["success"].as_bool() == Some(true) {
            println!("Linked. Your OpenRouter key is stored in {}.", data["backend"].as_str().unwrap_or("?"));
            return Ok(0);
        }
        let error = &data["error"];
        eprintln!(
            "{} {}",
            error["message"].as_str().unwrap_or("The login failed."),
            error["hint"].as_str().unwrap_or("")
        );
        return Ok(1);
    }
    eprintln!("The daemon closed the connection before the login ended; run this again.");
    Ok(3)
}
