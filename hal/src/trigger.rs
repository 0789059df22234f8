//! Layer triggers: whatever says "the bed is freshly spread, look now".
//!
//! Every trigger source (a Modbus command write, a serial `LAYER n` line, a GPIO edge, a timer,
//! the video itself) asks through a [`TriggerGate`]; the loop takes requests from the matching
//! [`TriggerQueue`]. The gate holds at most one layer: a request that arrives while a layer is
//! still being captured or analysed is refused at once ([`Busy`]) and the source answers BUSY
//! in its own protocol. Nothing is ever queued without bound.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Which kind of source asked for a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerSource {
    Modbus,
    SerialLine,
    Gpio,
    Timer,
    Video,
}

impl TriggerSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerSource::Modbus => "modbus",
            TriggerSource::SerialLine => "serial line",
            TriggerSource::Gpio => "gpio",
            TriggerSource::Timer => "timer",
            TriggerSource::Video => "video",
        }
    }
}

/// One accepted request to inspect a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerRequest {
    /// The layer number when the PLC sends one (Modbus, serial line); `None` for edges, timers
    /// and video, where the loop counts layers itself.
    pub layer: Option<u32>,
    pub source: TriggerSource,
}

/// A request refused because a layer is still in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("busy: a layer is still being analysed")]
pub struct Busy;

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("trigger {source_name}: {reason}")]
    Failed { source_name: String, reason: String },
    /// Every sender is gone: no trigger can come any more.
    #[error("every trigger source has stopped")]
    Closed,
}

/// Something that says when to inspect the next layer.
pub trait Trigger {
    /// Waits up to `timeout` for the next layer request; `Ok(None)` when none came.
    fn wait(&mut self, timeout: Duration) -> Result<Option<LayerRequest>, TriggerError>;
    fn describe(&self) -> String;
}

/// The sending side, cloned into every trigger source.
#[derive(Debug, Clone)]
pub struct TriggerGate {
    busy: Arc<AtomicBool>,
    busy_refusals: Arc<AtomicU64>,
    requests: SyncSender<LayerRequest>,
}

impl TriggerGate {
    /// Asks for a layer. Refused with [`Busy`] while the previous one is not finished.
    pub fn request(&self, layer: Option<u32>, source: TriggerSource) -> Result<(), Busy> {
        if self
            .busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.busy_refusals.fetch_add(1, Ordering::Relaxed);
            return Err(Busy);
        }
        match self.requests.try_send(LayerRequest { layer, source }) {
            Ok(()) => Ok(()),
            // The queue holds one request and `busy` guards it, so it is never full here; a
            // closed queue means the loop is gone: refuse the same way.
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.busy_refusals.fetch_add(1, Ordering::Relaxed);
                Err(Busy)
            }
        }
    }

    /// Whether a layer is in progress now.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }
}

/// The loop's side: one request at a time.
#[derive(Debug)]
pub struct TriggerQueue {
    busy: Arc<AtomicBool>,
    busy_refusals: Arc<AtomicU64>,
    requests: Receiver<LayerRequest>,
}

impl TriggerQueue {
    /// The loop calls this once the layer's verdict is out: the next trigger is accepted again.
    pub fn layer_done(&self) {
        self.busy.store(false, Ordering::Release);
    }

    /// How many triggers were answered BUSY since start.
    pub fn busy_refusals(&self) -> u64 {
        self.busy_refusals.load(Ordering::Relaxed)
    }
}

impl Trigger for TriggerQueue {
    fn wait(&mut self, timeout: Duration) -> Result<Option<LayerRequest>, TriggerError> {
        match self.requests.recv_timeout(timeout) {
            Ok(request) => Ok(Some(request)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(TriggerError::Closed),
        }
    }

    fn describe(&self) -> String {
        "trigger queue (one layer at a time, BUSY otherwise)".into()
    }
}

/// A gate and its queue.
pub fn trigger_channel() -> (TriggerGate, TriggerQueue) {
    let (sender, receiver) = sync_channel(1);
    let busy = Arc::new(AtomicBool::new(false));
    let busy_refusals = Arc::new(AtomicU64::new(0));
    (
        TriggerGate {
            busy: busy.clone(),
            busy_refusals: busy_refusals.clone(),
            requests: sender,
        },
        TriggerQueue {
            busy,
            busy_refusals,
            requests: receiver,
        },
    )
}

/// The simulated twin of a recoater: asks for a layer every `interval`, for replaying a folder
/// without any PLC. A tick that finds the loop busy is skipped (and counted as BUSY).
pub fn spawn_timer(gate: TriggerGate, interval: Duration, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("trigger-timer".into())
        .spawn(move || {
            let mut next = Instant::now() + interval;
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now >= next {
                    let _ = gate.request(None, TriggerSource::Timer);
                    next += interval;
                    if next < now {
                        next = now + interval;
                    }
                }
                std::thread::sleep((next.saturating_duration_since(Instant::now())).min(Duration::from_millis(50)));
            }
        })
        .expect("spawning a thread")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_request_is_busy_until_the_layer_is_done() {
        let (gate, mut queue) = trigger_channel();
        assert_eq!(gate.request(Some(7), TriggerSource::Modbus), Ok(()));
        assert!(gate.is_busy());
        assert_eq!(gate.request(Some(8), TriggerSource::SerialLine), Err(Busy));
        assert_eq!(
            queue.wait(Duration::from_millis(10)).unwrap(),
            Some(LayerRequest {
                layer: Some(7),
                source: TriggerSource::Modbus
            })
        );
        // Taken but not done: still busy.
        assert_eq!(gate.request(Some(8), TriggerSource::SerialLine), Err(Busy));
        queue.layer_done();
        assert_eq!(gate.request(Some(8), TriggerSource::SerialLine), Ok(()));
        assert_eq!(queue.busy_refusals(), 2);
        assert_eq!(queue.wait(Duration::from_millis(10)).unwrap().unwrap().layer, Some(8));
        assert_eq!(queue.wait(Duration::from_millis(10)).unwrap(), None);
    }

    #[test]
    fn the_timer_asks_again_after_each_layer() {
        let (gate, mut queue) = trigger_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let timer = spawn_timer(gate, Duration::from_millis(20), stop.clone());
        for _ in 0..3 {
            let request = queue.wait(Duration::from_secs(2)).unwrap().expect("a tick");
            assert_eq!(request.source, TriggerSource::Timer);
            queue.layer_done();
        }
        stop.store(true, Ordering::Relaxed);
        timer.join().unwrap();
    }
}
