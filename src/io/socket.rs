//! The socket system calls the message bus makes outside the ring (creating, configuring,
//! binding and shutting down sockets, asking for addresses), and conversions between
//! `SocketAddr` and the kernel's `sockaddr`. Nothing here allocates, so the bus can accept and
//! drop connections after startup.
//!
//! Sockets stay blocking: io_uring does the waiting, and a blocking socket lets it park a receive
//! or a send until the peer is ready instead of failing with `EAGAIN`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::io::ring::SocketAddress;
use crate::vsr::storage::IoError;

/// TCP keepalive: the first probe after this many idle seconds...
const KEEPALIVE_IDLE_SECONDS: i32 = 5;
/// ...then one probe every this many seconds...
const KEEPALIVE_INTERVAL_SECONDS: i32 = 4;
/// ...and the connection is dead after this many unanswered probes.
const KEEPALIVE_COUNT: i32 = 3;
/// Unacknowledged data for this long also kills the connection (matches keepalive's limit).
const USER_TIMEOUT_MS: i32 =
    (KEEPALIVE_IDLE_SECONDS + KEEPALIVE_INTERVAL_SECONDS * KEEPALIVE_COUNT) * 1000;

/// A TCP socket bound to `address` and listening, with `SO_REUSEADDR` so that a restarted
/// replica can bind while old connections linger in `TIME_WAIT`.
pub fn listen(address: SocketAddr, backlog: i32) -> std::io::Result<OwnedFd> {
    assert!(backlog > 0);
    let socket = stream_socket(&address)?;
    let fd = raw(&socket);
    option_set(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind(fd, &address)?;
    // SAFETY: a plain system call on a descriptor we own.
    check(unsafe { libc::listen(fd, backlog) })?;
    Ok(socket)
}

/// A new TCP socket of `address`'s family, for `listen` or for an io_uring connect.
pub fn stream_socket(address: &SocketAddr) -> std::io::Result<OwnedFd> {
    let family = match address {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: a plain system call; it returns a new descriptor or -1.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    check(fd)?;
    // SAFETY: `fd` is a descriptor just returned to us, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A configured socket (see `connection_configure`) for an io_uring connect to `address`,
/// bound to `local` (port chosen at connect) unless that is unspecified or of the other family:
/// the peer checks the IP address a replica dials from.
pub fn dial_socket(
    address: &SocketAddr,
    local: IpAddr,
    buffer_size_bytes: usize,
) -> std::io::Result<OwnedFd> {
    let socket = stream_socket(address)?;
    let fd = raw(&socket);
    if !local.is_unspecified() && local.is_ipv4() == address.is_ipv4() {
        // Bind the IP only: the port is picked at connect, from the whole 4-tuple space.
        option_set(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
        bind(fd, &SocketAddr::new(local, 0))?;
    }
    connection_configure(fd, buffer_size_bytes)?;
    Ok(socket)
}

/// Sets up an accepted or connected socket: no Nagle delay (messages are whole and latency
/// matters), keepalive and a user timeout so that a vanished peer is noticed, and kernel
/// buffers of `buffer_size_bytes` each way.
pub fn connection_configure(fd: RawFd, buffer_size_bytes: usize) -> std::io::Result<()> {
    assert!(buffer_size_bytes > 0 && buffer_size_bytes <= i32::MAX as usize);
    option_set(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    option_set(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    option_set(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, KEEPALIVE_IDLE_SECONDS)?;
    option_set(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, KEEPALIVE_INTERVAL_SECONDS)?;
    option_set(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, KEEPALIVE_COUNT)?;
    option_set(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, USER_TIMEOUT_MS)?;
    // The kernel caps these at net.core.rmem_max and wmem_max.
    option_set(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, buffer_size_bytes as i32)?;
    option_set(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, buffer_size_bytes as i32)?;
    Ok(())
}

/// Ends both directions: a receive or send parked in the ring on this socket completes (with 0
/// bytes or `EPIPE`), which is how the bus drains a connection before closing it.
pub fn shutdown(fd: RawFd) {
    assert!(fd >= 0);
    // SAFETY: a plain system call; failure (the peer already reset it) leaves nothing to undo.
    let _ = unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// Closes a descriptor at once, outside the ring (a connection refused at the limit).
pub fn close(fd: RawFd) {
    assert!(fd >= 0);
    // SAFETY: the caller owns `fd` and never uses it again; no operation in the ring uses it.
    let _ = unsafe { libc::close(fd) };
}

/// The address a socket is bound to (the port the kernel chose for port 0).
pub fn local_address(fd: RawFd) -> std::io::Result<SocketAddr> {
    let mut address = socket_address_empty();
    // SAFETY: the kernel writes at most `length` bytes into the storage and updates `length`.
    let result = unsafe {
        libc::getsockname(
            fd,
            (&raw mut address.storage).cast::<libc::sockaddr>(),
            &raw mut address.length,
        )
    };
    check(result)?;
    std_address(&address).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// The address of the peer of a connected socket, if the kernel still knows it.
pub fn peer_address(fd: RawFd) -> Option<SocketAddr> {
    let mut address = socket_address_empty();
    // SAFETY: the kernel writes at most `length` bytes into the storage and updates `length`.
    let result = unsafe {
        libc::getpeername(
            fd,
            (&raw mut address.storage).cast::<libc::sockaddr>(),
            &raw mut address.length,
        )
    };
    if result != 0 {
        return None;
    }
    std_address(&address)
}

/// `address` in the kernel's layout.
pub fn socket_address(address: &SocketAddr) -> SocketAddress {
    let mut kernel_address = socket_address_empty();
    let storage = &raw mut kernel_address.storage;
    match address {
        SocketAddr::V4(address) => {
            let value = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: address.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(address.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: `sockaddr_storage` is large and aligned enough for every sockaddr type.
            unsafe { storage.cast::<libc::sockaddr_in>().write(value) };
            kernel_address.length = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        }
        SocketAddr::V6(address) => {
            let value = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: address.port().to_be(),
                sin6_flowinfo: address.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: address.ip().octets() },
                sin6_scope_id: address.scope_id(),
            };
            // SAFETY: as above.
            unsafe { storage.cast::<libc::sockaddr_in6>().write(value) };
            kernel_address.length = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        }
    }
    kernel_address
}

/// The `SocketAddr` of a kernel address, if it is IPv4 or IPv6.
pub fn std_address(address: &SocketAddress) -> Option<SocketAddr> {
    let storage = &raw const address.storage;
    let length = address.length as usize;
    match i32::from(address.storage.ss_family) {
        libc::AF_INET if length >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family and length say the storage holds a `sockaddr_in`.
            let value = unsafe { storage.cast::<libc::sockaddr_in>().read() };
            let ip = Ipv4Addr::from(value.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(value.sin_port))))
        }
        libc::AF_INET6 if length >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family and length say the storage holds a `sockaddr_in6`.
            let value = unsafe { storage.cast::<libc::sockaddr_in6>().read() };
            let ip = Ipv6Addr::from(value.sin6_addr.s6_addr);
            let port = u16::from_be(value.sin6_port);
            let address = SocketAddrV6::new(ip, port, value.sin6_flowinfo, value.sin6_scope_id);
            Some(SocketAddr::V6(address))
        }
        _ => None,
    }
}

/// A system call's error as the ring reports errors (so that it displays without allocating).
pub fn io_error(error: &std::io::Error) -> IoError {
    IoError::Errno(error.raw_os_error().unwrap_or(libc::EIO))
}

/// Displays an `IoError` the way `std::io::Error` does ("Connection refused (os error 111)")
/// without allocating, which `std::io::Error`'s `Display` does: the bus logs after startup.
pub struct ErrorDisplay(pub IoError);

impl std::fmt::Display for ErrorDisplay {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let errno = match self.0 {
            IoError::Errno(errno) => errno,
            IoError::EndOfFile => return write!(formatter, "unexpected end of file"),
        };
        let mut buffer = [0u8; 128];
        // SAFETY: the XSI `strerror_r` writes at most `buffer.len()` bytes, NUL included, into
        // the buffer, which lives across the call.
        let result = unsafe { libc::strerror_r(errno, buffer.as_mut_ptr().cast(), buffer.len()) };
        let length = buffer.iter().position(|byte| *byte == 0).unwrap_or(buffer.len());
        match std::str::from_utf8(&buffer[..length]) {
            Ok(text) if result == 0 && !text.is_empty() => {
                write!(formatter, "{text} (os error {errno})")
            }
            _ => write!(formatter, "os error {errno}"),
        }
    }
}

fn socket_address_empty() -> SocketAddress {
    // SAFETY: `sockaddr_storage` is plain integers, for which all zeros is a valid value.
    let storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    SocketAddress { storage, length: size_of::<libc::sockaddr_storage>() as libc::socklen_t }
}

fn bind(fd: RawFd, address: &SocketAddr) -> std::io::Result<()> {
    let kernel_address = socket_address(address);
    // SAFETY: `kernel_address.storage` holds a valid sockaddr of `length` bytes for the call.
    let result = unsafe {
        libc::bind(
            fd,
            (&raw const kernel_address.storage).cast::<libc::sockaddr>(),
            kernel_address.length,
        )
    };
    check(result)
}

fn option_set(fd: RawFd, level: i32, name: i32, value: i32) -> std::io::Result<()> {
    // SAFETY: the kernel reads one `i32` from `value`, which lives across the call.
    let result = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast::<libc::c_void>(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    check(result)
}

fn raw(fd: &OwnedFd) -> RawFd {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

/// A system call's -1 as the OS error (no allocation: an `Os` error holds only the errno).
fn check(result: i32) -> std::io::Result<()> {
    if result < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_the_kernel_layout() {
        // Goal: IPv4 and IPv6 addresses (with port, flow info and scope) survive the
        // conversion to a sockaddr and back.
        let addresses: [SocketAddr; 3] = [
            "127.0.0.1:3001".parse().unwrap(),
            "10.1.2.3:65535".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 4000, 7, 3)),
        ];
        for address in addresses {
            assert_eq!(std_address(&socket_address(&address)), Some(address));
        }
        assert_eq!(std_address(&socket_address_empty()), None);
    }

    #[test]
    fn errors_display_like_std_without_allocating() {
        // Goal: an errno reads as `std::io::Error` writes it, and writing it allocates nothing
        // (the bus logs after startup); an unknown errno still displays.
        use std::fmt::Write;
        let expected = std::io::Error::from_raw_os_error(libc::ECONNREFUSED).to_string();
        let mut text = String::with_capacity(256);
        crate::stdx::allocation_guard::arm();
        write!(text, "{}", ErrorDisplay(IoError::Errno(libc::ECONNREFUSED))).unwrap();
        let allocations = crate::stdx::allocation_guard::allocations_since_armed();
        crate::stdx::allocation_guard::disarm();
        assert_eq!(allocations, 0);
        assert_eq!(text, expected);
        let unknown = ErrorDisplay(IoError::Errno(100_000)).to_string();
        assert!(unknown.contains("100000"), "{unknown}");
    }

    #[test]
    fn dial_socket_binds_the_local_ip() {
        // Goal: a dial socket bound to 127.0.0.2 connects from that IP (what the accepting
        // replica checks), and one given an unspecified IP is left for the kernel to place.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        for (local, expected) in [("127.0.0.2", "127.0.0.2"), ("0.0.0.0", "127.0.0.1")] {
            let socket = dial_socket(&address, local.parse().unwrap(), 64 * 1024).unwrap();
            let kernel_address = socket_address(&address);
            // SAFETY: the storage holds a valid sockaddr of `length` bytes for the call.
            let result = unsafe {
                libc::connect(
                    raw(&socket),
                    (&raw const kernel_address.storage).cast::<libc::sockaddr>(),
                    kernel_address.length,
                )
            };
            check(result).unwrap();
            let (_, peer) = listener.accept().unwrap();
            assert_eq!(peer.ip().to_string(), expected);
        }
    }

    #[test]
    fn listen_on_port_zero_reports_the_chosen_port() {
        // Goal: a listener bound to port 0 reports the port the kernel picked, and a client
        // reaches it there; a second bind of that port (without a close) fails cleanly.
        let listener = listen("127.0.0.1:0".parse().unwrap(), 64).unwrap();
        let address = local_address(raw(&listener)).unwrap();
        assert_ne!(address.port(), 0);
        let client = std::net::TcpStream::connect(address).unwrap();
        assert_eq!(client.peer_addr().unwrap(), address);
        assert!(listen(address, 64).is_err());
    }
}
