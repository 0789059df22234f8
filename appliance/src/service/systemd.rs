//! The service manager's side of `bedsight run` (board/bedsight.service, `Type=notify`): READY
//! once the model has self-tested and the PLC links listen, WATCHDOG pings from the control loop
//! (a loop that hangs is restarted), STOPPING on the way out. Without `NOTIFY_SOCKET` (not
//! started by systemd) every call does nothing. The priority journald files each line under is
//! `log`'s.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Start-up is done: the service manager may start what depends on the box.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

fn notify(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::error!("systemd: cannot notify the service manager: {error}");
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
