//! SIGINT and SIGTERM as a flag a loop can poll: `catch_interrupts` once, then `interrupted`
//! where the caller can stop cleanly (the load generator removes its scratch data files).

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    // Only an atomic store: all that is safe in a signal handler.
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// From now on SIGINT and SIGTERM set the flag instead of ending the process.
pub fn catch_interrupts() -> std::io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `action` is zeroed then filled in full (handler, empty mask, SA_RESTART);
        // the handler is an `extern "C"` function that only stores to an atomic, and no old
        // action is asked for.
        let result = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if result != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived since `catch_interrupts`.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_interrupt_sets_the_flag_and_the_process_goes_on() {
        // Goal: after `catch_interrupts`, a SIGTERM the process sends itself is a flag, not
        // the end of the process.
        catch_interrupts().expect("sigaction");
        // SAFETY: raise sends a signal whose handler was just installed.
        assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
        assert!(interrupted());
        // The rest of the test process ends on SIGINT and SIGTERM again.
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: SIG_DFL is a valid disposition for both signals.
            assert_ne!(unsafe { libc::signal(signal, libc::SIG_DFL) }, libc::SIG_ERR);
        }
    }
}
