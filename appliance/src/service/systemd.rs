//! The service manager's side of `bedsight run` (board/bedsight.service, `Type=notify`): READY
//! once the model has self-tested and the PLC links listen, WATCHDOG pings from the control loop
//! (a loop that hangs is restarted), STOPPING on the way out. Without `NOTIFY_SOCKET` (not
//! started by systemd) every call does nothing. And the priority journald files each line
//! under, when stdout and stderr go to the journal: a PAUSE or a FAULT is a warning or worse.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hal::Verdict;
use sd_notify::NotifyState;

/// Syslog priorities (sd-daemon(3)).
pub const ERR: u8 = 3;
pub const WARNING: u8 = 4;
pub const NOTICE: u8 = 5;
pub const INFO: u8 = 6;

/// The priority of a layer's lines: FAULT err, PAUSE warning, RECOAT and REVIEW notice, PASS info.
pub fn priority(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Fault => ERR,
        Verdict::Pause => WARNING,
        Verdict::Recoat | Verdict::Review => NOTICE,
        Verdict::Pass => INFO,
    }
}

/// `text` with the `<N>` prefix that journald reads as its priority when stdout and stderr are
/// the journal's (systemd sets JOURNAL_STREAM then); elsewhere `text` as it is.
pub fn line(priority: u8, text: &str) -> String {
    static TO_JOURNAL: OnceLock<bool> = OnceLock::new();
    if *TO_JOURNAL.get_or_init(|| std::env::var_os("JOURNAL_STREAM").is_some()) {
        format!("<{priority}>{text}")
    } else {
        text.to_string()
    }
}

/// Start-up is done: the service manager may start what depends on the box.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

fn notify(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(false, states) {
        eprintln!("systemd: cannot notify the service manager: {error}");
    }
}

/// Pings the service manager's watchdog from the loop that must stay alive, at half the
/// interval it asked for (`WatchdogSec=`, passed as WATCHDOG_USEC to this process).
pub struct Watchdog {
    every: Option<Duration>,
    next: Instant,
}

impl Watchdog {
    pub fn from_env() -> Watchdog {
        let mut usec = 0;
        let every = sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2));
        Watchdog {
            every,
            next: Instant::now(),
        }
    }

    /// The watchdog interval asked for, halved; none when there is no watchdog.
    pub fn interval(&self) -> Option<Duration> {
        self.every
    }

    /// Called on every turn of the loop: pings when it is time.
    pub fn tick(&mut self) {
        let Some(every) = self.every else { return };
        let now = Instant::now();
        if now >= self.next {
            notify(&[NotifyState::Watchdog]);
            self.next = now + every;
        }
    }
}
