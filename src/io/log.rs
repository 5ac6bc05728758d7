//! The replica's log: one line per event on stderr, each
//! `2026-12-07T21:49:49.123456Z level=info event=view_entered replica=0 view=3 ...`: an RFC 3339
//! timestamp (UTC, microseconds), a level, the event's name and its `key=value` fields (a value
//! with spaces is quoted, see `Quoted`).
//!
//! Lines below the level set by `level_set` (`--log-level`) are not written. Each event is
//! rate-limited on its own, on a monotonic clock: at most `LOG_LINES_PER_WINDOW_MAX` lines per
//! `LOG_WINDOW_MS`; the lines beyond are counted, and the count is reported by the event's next
//! line (`suppressed=N`) or, when none comes, by a `log_suppressed` line that `flush` writes
//! once the window has passed (the server calls it every tick).
//!
//! A line is formatted into a stack buffer (cut at `LOG_LINE_SIZE_MAX`) and written with one
//! `write`: the event loop allocates nothing, and lines of concurrent replicas (tests run
//! several in one process) do not interleave.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::constants::{LOG_LINE_SIZE_MAX, LOG_LINES_PER_WINDOW_MAX, LOG_WINDOW_MS};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    pub const ALL: [Level; 4] = [Level::Error, Level::Warn, Level::Info, Level::Debug];

    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    /// The level named `name` (as `--log-level` takes it).
    pub fn parse(name: &str) -> Result<Level, String> {
        Level::ALL.into_iter().find(|level| level.name() == name).ok_or_else(|| {
            format!("--log-level must be one of error, warn, info, debug (got '{name}')")
        })
    }
}

macro_rules! events {
    ($($(#[$meta:meta])* $name:ident => $text:literal,)*) => {
        /// What a line reports: each is rate-limited on its own.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Event { $($(#[$meta])* $name,)* }

        impl Event {
            pub const COUNT: usize = [$($text),*].len();
            pub const ALL: [Event; Event::COUNT] = [$(Event::$name),*];

            pub fn name(self) -> &'static str {
                match self { $(Event::$name => $text,)* }
            }
        }
    };
}

events! {
    ReplicaMemory => "replica_memory",
    ReplicaListening => "replica_listening",
    MetricsListening => "metrics_listening",
    ReplicaStopped => "replica_stopped",
    ReplicaFailed => "replica_failed",
    ViewEntered => "view_entered",
    OpenRepair => "open_repair",
    PeerMessagesInvalid => "peer_messages_invalid",
    AllocationBug => "allocation_bug",
    PeerConnected => "peer_connected",
    PeerConnectFailed => "peer_connect_failed",
    AcceptFailed => "accept_failed",
    ConnectionRefused => "connection_refused",
    ConnectionSetupFailed => "connection_setup_failed",
    /// A client's or unidentified peer's connection closed for what it sent or did.
    ConnectionClosed => "connection_closed",
    /// A peer replica's connection closed: rate-limited apart from clients' closures.
    ReplicaConnectionClosed => "replica_connection_closed",
    ConnectionsShed => "connections_shed",
    MetricsRequestInvalid => "metrics_request_invalid",
    LogSuppressed => "log_suppressed",
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Per event: the start of its current window (ms since the epoch), lines written in it, and
/// lines suppressed since the last report.
static WINDOWS: Mutex<[(u64, u64, u64); Event::COUNT]> = Mutex::new([(0, 0, 0); Event::COUNT]);

/// Writes lines of `level` and more severe from now on (`Info` until set).
pub fn level_set(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Writes a line of `level` for `event` with `fields` (`key=value` pairs separated by spaces),
/// unless the level is off or the event is over its rate.
pub fn line(level: Level, event: Event, fields: fmt::Arguments) {
    if !enabled(level) {
        return;
    }
    let Some(suppressed) = admit(event, monotonic_ms()) else { return };
    line_write(level, event, fields, suppressed);
}

fn line_write(level: Level, event: Event, fields: fmt::Arguments, suppressed: u64) {
    let mut buffer = LineBuffer::new();
    let _ = write!(buffer, "{} level={} event={} ", Rfc3339(now_us()), level.name(), event.name());
    let _ = buffer.write_fmt(fields);
    if suppressed > 0 {
        let _ = write!(buffer, " suppressed={suppressed}");
    }
    buffer.emit();
}

/// Reports the lines suppressed in windows that have passed with no later line of their event
/// to carry the count. These reports are not rate-limited themselves (at most one per event
/// per window), so that no count is lost.
pub fn flush() {
    if !enabled(Level::Warn) {
        return;
    }
    let now_ms = monotonic_ms();
    for event in Event::ALL {
        let suppressed = {
            let mut windows = WINDOWS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let (start, _, suppressed) = &mut windows[event as usize];
            if *suppressed == 0 || now_ms < *start + LOG_WINDOW_MS {
                continue;
            }
            std::mem::take(suppressed)
        };
        line_write(
            Level::Warn,
            Event::LogSuppressed,
            format_args!("of={} count={suppressed} window_ms={LOG_WINDOW_MS}", event.name()),
            0,
        );
    }
}

/// Counts a line of `event` at `now_ms` against its window: the lines suppressed before it
/// (reported with it), or None when it is itself suppressed.
fn admit(event: Event, now_ms: u64) -> Option<u64> {
    let mut windows = WINDOWS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (start, lines, suppressed) = &mut windows[event as usize];
    if now_ms >= *start + LOG_WINDOW_MS {
        (*start, *lines) = (now_ms, 0);
    }
    if *lines >= LOG_LINES_PER_WINDOW_MAX {
        *suppressed += 1;
        return None;
    }
    *lines += 1;
    Some(std::mem::take(suppressed))
}

/// Milliseconds since the first line: the rate limit's clock, which a step of the wall clock
/// does not move.
fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let elapsed = START.get_or_init(Instant::now).elapsed();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

fn now_us() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX)
}

/// A log line being formatted: cut at `LOG_LINE_SIZE_MAX` (less the newline).
struct LineBuffer {
    bytes: [u8; LOG_LINE_SIZE_MAX],
    length: usize,
}

impl LineBuffer {
    fn new() -> LineBuffer {
        LineBuffer { bytes: [0; LOG_LINE_SIZE_MAX], length: 0 }
    }

    fn emit(mut self) {
        use std::io::Write;
        self.bytes[self.length] = b'\n';
        let _ = std::io::stderr().write_all(&self.bytes[..=self.length]);
    }
}

impl fmt::Write for LineBuffer {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let room = LOG_LINE_SIZE_MAX - 1 - self.length;
        let mut take = text.len().min(room);
        while !text.is_char_boundary(take) {
            take -= 1;
        }
        self.bytes[self.length..self.length + take].copy_from_slice(&text.as_bytes()[..take]);
        self.length += take;
        if take < text.len() { Err(fmt::Error) } else { Ok(()) }
    }
}

/// A field value in double quotes, with `"`, `\` and control characters escaped, so that a
/// reason with spaces stays one `key="value"` field.
pub struct Quoted<T: fmt::Display>(pub T);

impl<T: fmt::Display> fmt::Display for Quoted<T> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Escaper<'a, 'b>(&'a mut fmt::Formatter<'b>);
        impl fmt::Write for Escaper<'_, '_> {
            fn write_str(&mut self, text: &str) -> fmt::Result {
                for character in text.chars() {
                    match character {
                        '"' => self.0.write_str("\\\"")?,
                        '\\' => self.0.write_str("\\\\")?,
                        '\n' => self.0.write_str("\\n")?,
                        character if character.is_control() => self.0.write_char(' ')?,
                        character => self.0.write_char(character)?,
                    }
                }
                Ok(())
            }
        }
        formatter.write_char('"')?;
        write!(Escaper(formatter), "{}", self.0)?;
        formatter.write_char('"')
    }
}

/// Microseconds since the epoch as RFC 3339 UTC.
struct Rfc3339(u64);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        const US_PER_DAY: u64 = 86_400_000_000;
        let (days, us_of_day) = (self.0 / US_PER_DAY, self.0 % US_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let seconds = us_of_day / 1_000_000;
        write!(
            formatter,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
            seconds / 3_600,
            seconds / 60 % 60,
            seconds % 60,
            us_of_day % 1_000_000,
        )
    }
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Writes a log line: `log!(Info, ViewEntered, "replica={replica} view={view}")`.
macro_rules! log {
    ($level:ident, $event:ident, $($fields:tt)*) => {
        $crate::io::log::line(
            $crate::io::log::Level::$level,
            $crate::io::log::Event::$event,
            format_args!($($fields)*),
        )
    };
}

pub(crate) use log;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        // Goal: the epoch, a leap day and a date past 2100 format as RFC 3339 with the right
        // civil date (checked against `date -u -d @SECONDS`).
        assert_eq!(Rfc3339(0).to_string(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(Rfc3339(951_782_400_123_456).to_string(), "2000-02-29T00:00:00.123456Z");
        assert_eq!(Rfc3339(1_796_679_002_999_999).to_string(), "2026-12-07T21:30:02.999999Z");
        assert_eq!(Rfc3339(4_107_542_399_000_001).to_string(), "2100-02-28T23:59:59.000001Z");
    }

    #[test]
    fn quoted_values_stay_one_field() {
        // Goal: quotes, backslashes and newlines in a value are escaped, so that a reason with
        // spaces parses back as one `key="value"` field.
        let text = Quoted("bad \"checksum\"\\\nend").to_string();
        assert_eq!(text, r#""bad \"checksum\"\\\nend""#);
    }

    #[test]
    fn each_event_is_rate_limited_with_a_count_of_what_it_suppressed() {
        // Goal: in one window, an event gets `LOG_LINES_PER_WINDOW_MAX` lines and the rest are
        // counted; the first line of the next window carries the count; another event is not
        // held back by the first's flood.
        let event = Event::MetricsRequestInvalid;
        let start = 10 * LOG_WINDOW_MS;
        WINDOWS.lock().unwrap()[event as usize] = (0, 0, 0);
        for _ in 0..LOG_LINES_PER_WINDOW_MAX {
            assert_eq!(admit(event, start), Some(0));
        }
        for _ in 0..7 {
            assert_eq!(admit(event, start + LOG_WINDOW_MS - 1), None);
        }
        assert_eq!(admit(Event::LogSuppressed, start), Some(0));
        assert_eq!(admit(event, start + LOG_WINDOW_MS), Some(7));
        assert_eq!(admit(event, start + LOG_WINDOW_MS), Some(0));
    }

    #[test]
    fn lines_longer_than_the_buffer_are_cut_on_a_character_boundary() {
        // Goal: a field longer than a line is cut, not split inside a UTF-8 character, and the
        // line keeps room for its newline.
        let mut buffer = LineBuffer::new();
        let long = "é".repeat(LOG_LINE_SIZE_MAX);
        assert!(write!(buffer, "{long}").is_err());
        assert!(buffer.length < LOG_LINE_SIZE_MAX);
        assert!(std::str::from_utf8(&buffer.bytes[..buffer.length]).is_ok());
    }
}
