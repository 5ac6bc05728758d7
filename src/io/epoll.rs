//! epoll, for client programs that drive many sockets from one thread (the load generator's
//! sessions). The replica itself runs on io_uring (`ring`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An epoll instance.
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new() -> std::io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; a negative result is an error, checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1 and is owned by nothing else.
        Ok(Epoll { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    pub fn control(
        &self,
        operation: i32,
        fd: RawFd,
        events: u32,
        token: usize,
    ) -> std::io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token as u64 };
        // SAFETY: both descriptors are open, and `event` is a valid epoll_event that outlives
        // the call.
        let result = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), operation, fd, &mut event) };
        if result < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` for events; returns how many of `events` it filled.
    pub fn wait(
        &self,
        events: &mut [libc::epoll_event],
        timeout_ms: i32,
    ) -> std::io::Result<usize> {
        let capacity = i32::try_from(events.len()).expect("a small event array");
        // SAFETY: `events` is a valid, writable array of `capacity` epoll_event.
        let result = unsafe {
            libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), capacity, timeout_ms)
        };
        if result < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(error);
        }
        Ok(result as usize)
    }
}
