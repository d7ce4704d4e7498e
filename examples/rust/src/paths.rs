//! Where the daemon's socket is (docs/protocol.md, "Finding the socket", config.toml's `socket` included) and
//! whether its directory can be trusted (docs/protocol.md, "Connecting").

use std::env;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, ELSEWHERE};
use crate::sys;

const APP: &str = "convocations";
const SOCKET_NAME: &str = "convocationsd.sock";

/// The socket by the documented steps, from this process's environment.
pub fn socket_path() -> PathBuf {
    if let Some(explicit) = var("CONVOCATIONS_SOCKET") {
        return PathBuf::from(explicit);
    }
    if let Some(configured) = fs::read_to_string(config_path()).ok().and_then(|text| configured_socket(&text)) {
        return configured;
    }
    if let Some(xdg) = var("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|p| p.is_absolute()) {
        return xdg.join(APP).join(SOCKET_NAME);
    }
    runtime_dir_fallback().join(APP).join(SOCKET_NAME)
}

fn var(name: &str) -> Option<OsString> {
    env::var_os(name).filter(|v| !v.is_empty())
}

fn home() -> PathBuf {
    #[allow(deprecated)] // right on Unix (HOME, then the password database); deprecated for Windows' sake
    env::home_dir().unwrap_or_default()
}

/// config.toml: CONVOCATIONS_CONFIG, else under XDG_CONFIG_HOME (absolute only), else the platform's place.
fn config_path() -> PathBuf {
    if let Some(explicit) = var("CONVOCATIONS_CONFIG") {
        return PathBuf::from(explicit);
    }
    let base = match var("XDG_CONFIG_HOME").map(PathBuf::from).filter(|p| p.is_absolute()) {
        Some(xdg) => xdg,
        None if cfg!(target_os = "macos") => home().join("Library").join("Application Support"),
        None => home().join(".config"),
    };
    base.join(APP).join("config.toml")
}

/// The top-level `socket` of config.toml in the simple form protocol.md asks of a client without a TOML
/// parser: a line `socket = "..."` (JSON's escapes) or `socket = '...'` above the first `[table]`; a leading
/// `~/` is the home directory. Anything else (a quoted or dotted key, a multi-line string) is not found here:
/// a real app would use the `toml` crate.
pub fn configured_socket(text: &str) -> Option<PathBuf> {
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            return None; // settings end where the first table begins
        }
        let value = match line.strip_prefix("socket").map(str::trim_start) {
            Some(rest) if rest.starts_with('=') => rest[1..].trim_start(),
            _ => continue,
        };
        let path = if value.starts_with("'''") || value.starts_with("\"\"\"") {
            return None;
        } else if let Some(literal) = value.strip_prefix('\'') {
            literal[..literal.find('\'')?].to_owned()
        } else if value.starts_with('"') {
            let end = closing_quote(value)?;
            crate::json::parse(&value[..=end]).ok()?.as_str()?.to_owned()
        } else {
            return None;
        };
        if path.is_empty() {
            return None; // as the daemon: an empty value is no value
        }
        return Some(match path.strip_prefix("~/") {
            Some(rest) => home().join(rest),
            None if path == "~" => home(),
            None => PathBuf::from(path),
        });
    }
    None
}

/// Where the basic string `text` starts with ends: the first quote not after a backslash.
fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, b) in text.bytes().enumerate().skip(1) {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(target_os = "macos")]
fn runtime_dir_fallback() -> PathBuf {
    home().join("Library").join("Caches").join("TemporaryItems")
}

#[cfg(not(target_os = "macos"))]
fn runtime_dir_fallback() -> PathBuf {
    let uid = sys::euid();
    let run_user = if cfg!(any(target_os = "freebsd", target_os = "netbsd")) {
        "/var/run/user"
    } else if cfg!(target_os = "openbsd") {
        "/tmp/run/user"
    } else {
        "/run/user"
    };
    let base = Path::new(run_user).join(uid.to_string());
    if is_private_dir(&base, uid) {
        return base;
    }
    temp_root().join(format!("runtime-{}", uid))
}

/// A directory, not a symlink, owned by `uid`, mode exactly 0700.
#[cfg(not(target_os = "macos"))]
fn is_private_dir(dir: &Path, uid: u32) -> bool {
    match fs::symlink_metadata(dir) {
        Ok(meta) => meta.is_dir() && meta.uid() == uid && meta.mode() & 0o777 == 0o700,
        Err(_) => false,
    }
}

/// The first of $TMPDIR, $TEMP, $TMP (absolute only), /tmp, /var/tmp, /usr/tmp that is a directory we can
/// write to.
#[cfg(not(target_os = "macos"))]
fn temp_root() -> PathBuf {
    let from_env = ["TMPDIR", "TEMP", "TMP"].iter().filter_map(env::var_os).map(PathBuf::from);
    let fixed = ["/tmp", "/var/tmp", "/usr/tmp"].iter().map(PathBuf::from);
    from_env
        .filter(|p| p.is_absolute())
        .chain(fixed)
        .find(|dir| dir.is_dir() && sys::writable(dir))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// The uids whose directories and servers we trust: our own, and root's (root can read our files anyway).
pub fn trusted_uid(uid: u32) -> bool {
    uid == sys::euid() || uid == 0
}

/// Refuses a socket directory that another user could change or swap, before anything is sent: the directory
/// must not be a symbolic link, and it and every directory on the way (as written, and where links lead)
/// must belong to us or root and be writable by no one else unless sticky (a socket in /tmp is fine: others
/// cannot remove or rename it there). A link on the way must belong to us or root too, or its owner could
/// point it elsewhere. What does not exist is skipped: then there is nothing to connect to either.
pub fn check_socket_dir(dir: &Path) -> Result<(), Error> {
    let dir = absolute(dir);
    if let Some(meta) = lstat(&dir)? {
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&dir).map(|t| t.display().to_string()).unwrap_or_default();
            return Err(Error::Untrusted {
                message: format!("The socket directory {} is a symbolic link (to {}).", dir.display(), target),
                hint: format!(
                    "Remove the link (the daemon creates a real directory), use the directory it points to, or set {}",
                    ELSEWHERE
                ),
            });
        }
        if !meta.is_dir() {
            return Err(Error::Untrusted {
                message: format!("{} is not a directory, so it cannot hold the socket.", dir.display()),
                hint: format!("Set {}", ELSEWHERE),
            });
        }
    }
    let written = dir.ancestors().map(Path::to_path_buf);
    let resolved = dir.parent().map(resolve).unwrap_or_default();
    let mut seen: Vec<PathBuf> = Vec::new();
    for d in written.chain(resolved.ancestors().map(Path::to_path_buf)) {
        if d.as_os_str().is_empty() || seen.contains(&d) {
            continue;
        }
        seen.push(d.clone());
        let meta = match lstat(&d)? {
            Some(meta) => meta,
            None => continue,
        };
        let mode = meta.mode() & 0o7777;
        let (problem, fix) = if !trusted_uid(meta.uid()) {
            (format!("belongs to uid {}", meta.uid()), "Have that user or root remove it, or".to_owned())
        } else if meta.is_dir() && mode & 0o022 != 0 && mode & 0o1000 == 0 {
            (
                format!("can be written by other users (mode {:04o})", mode),
                format!("Run `chmod go-w {}` if it is yours, or", d.display()),
            )
        } else {
            continue;
        };
        let place = if d == dir {
            format!("The socket directory {}", dir.display())
        } else {
            format!("{}, on the way to the socket directory {},", d.display(), dir.display())
        };
        return Err(Error::Untrusted {
            message: format!("{} {}, so another user could replace the socket.", place, problem),
            hint: format!("{} set {}", fix, ELSEWHERE),
        });
    }
    Ok(())
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        env::current_dir().unwrap_or_default().join(path)
    }
}

/// `path` with its links resolved as far as it exists (the rest appended as written), like Python's realpath.
fn resolve(path: &Path) -> PathBuf {
    let mut rest: Vec<OsString> = Vec::new();
    let mut existing = path;
    loop {
        if let Ok(real) = fs::canonicalize(existing) {
            return rest.iter().rev().fold(real, |p, part| p.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

fn lstat(path: &Path) -> Result<Option<fs::Metadata>, Error> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Untrusted {
            message: format!("Cannot check {}, on the way to the daemon's socket: {}.", path.display(), e),
            hint: format!("Set {}", ELSEWHERE),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_simple_forms_of_the_socket_key() {
        let found = |text: &str| configured_socket(text).map(|p| p.display().to_string());
        assert_eq!(found("socket = \"/run/d.sock\"\n"), Some("/run/d.sock".to_owned()));
        assert_eq!(found("http_port = 3001\nsocket='/a b/d.sock' # mine\n"), Some("/a b/d.sock".to_owned()));
        assert_eq!(found("socket = \"/q\\\"x\\u00e9.sock\" # c\n"), Some("/q\"x\u{e9}.sock".to_owned()));
        assert_eq!(found("socket_path = \"/no\"\nsockets = \"/no\"\n"), None);
        assert_eq!(found("[openrouter_api_key]\nsocket = \"/in/a/table\"\n"), None);
        assert_eq!(found("socket = \"\"\n"), None);
        assert_eq!(found("socket = \"/unterminated\n"), None);
        assert_eq!(found("socket = 5\n"), None);
        assert_eq!(configured_socket("socket = \"~/d.sock\""), Some(home().join("d.sock")));
    }
}
