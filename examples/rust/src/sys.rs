//! The few C library calls std does not offer: who we are, who serves a socket, whether we may write a
//! directory. `UnixStream::peer_cred` would do the middle one, but it is unstable (nightly only).

use std::os::raw::c_int;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;

extern "C" {
    fn geteuid() -> u32;
}

/// The effective user id, the `<uid>` of docs/protocol.md ("as `id -u` prints it").
pub fn euid() -> u32 {
    unsafe { geteuid() }
}

/// Whether this process may create files in `dir`, as the kernel judges it (ACLs and read-only mounts too).
/// For the socket's last-resort place, which macOS does not use.
#[cfg(not(target_os = "macos"))]
pub fn writable(dir: &std::path::Path) -> bool {
    use std::ffi::CString;
    use std::os::raw::c_char;
    use std::os::unix::ffi::OsStrExt;
    extern "C" {
        fn access(path: *const c_char, mode: c_int) -> c_int;
    }
    const W_OK: c_int = 2; // the same on every Unix
    match CString::new(dir.as_os_str().as_bytes()) {
        Ok(path) => unsafe { access(path.as_ptr(), W_OK) == 0 },
        Err(_) => false, // a NUL byte: no such directory
    }
}

/// The uid of the process that serves `stream` (the one that called listen()), or None when the system
/// cannot say.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn peer_uid(stream: &UnixStream) -> Option<u32> {
    use std::os::raw::c_void;
    // struct ucred, <sys/socket.h>
    #[repr(C)]
    struct Ucred {
        pid: i32,
        uid: u32,
        gid: u32,
    }
    extern "C" {
        fn getsockopt(fd: c_int, level: c_int, name: c_int, value: *mut c_void, len: *mut u32) -> c_int;
    }
    // The kernel's values (arch/*/include/uapi/asm/socket.h); most architectures use asm-generic's.
    #[cfg(any(target_arch = "mips", target_arch = "mips64"))]
    const SOL_SOCKET_SO_PEERCRED: (c_int, c_int) = (0xffff, 18);
    #[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
    const SOL_SOCKET_SO_PEERCRED: (c_int, c_int) = (0xffff, 0x40);
    #[cfg(any(target_arch = "powerpc", target_arch = "powerpc64"))]
    const SOL_SOCKET_SO_PEERCRED: (c_int, c_int) = (1, 21);
    #[cfg(not(any(
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "sparc",
        target_arch = "sparc64",
        target_arch = "powerpc",
        target_arch = "powerpc64"
    )))]
    const SOL_SOCKET_SO_PEERCRED: (c_int, c_int) = (1, 17);

    let (level, name) = SOL_SOCKET_SO_PEERCRED;
    let mut cred = Ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<Ucred>() as u32;
    let ok = unsafe { getsockopt(stream.as_raw_fd(), level, name, &mut cred as *mut Ucred as *mut c_void, &mut len) };
    (ok == 0 && len as usize == std::mem::size_of::<Ucred>()).then_some(cred.uid)
}

/// macOS and the BSDs: getpeereid(3), which asks LOCAL_PEERCRED (the effective uid at listen()).
#[cfg(any(
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd",
    target_os = "dragonfly"
))]
pub fn peer_uid(stream: &UnixStream) -> Option<u32> {
    extern "C" {
        fn getpeereid(fd: c_int, euid: *mut u32, egid: *mut u32) -> c_int;
    }
    let (mut uid, mut gid) = (0u32, 0u32);
    let ok = unsafe { getpeereid(stream.as_raw_fd(), &mut uid, &mut gid) };
    (ok == 0).then_some(uid)
}

/// Elsewhere we cannot tell, and the caller refuses the socket.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd",
    target_os = "dragonfly"
)))]
pub fn peer_uid(_stream: &UnixStream) -> Option<u32> {
    None
}
