//! The box's log lines, through `tracing`: every line has a level, and a time where nothing else
//! adds one.
//!
//! - `bedsight run` on a terminal or into a file: `2026-12-03T09:55:12.123456Z INFO   layer 1 PASS ...`
//!   (UTC, RFC 3339), on stdout: one stream in the order things happened (a start-up error that
//!   stops the loop is the exception: `error: ...` on stderr, as every command's).
//! - `bedsight run` under systemd (stdout and stderr are the journal's: systemd sets
//!   JOURNAL_STREAM): `<6>layer 1 PASS ...`, the `<N>` prefix journald files the line under
//!   (sd-daemon(3)); journald keeps the time itself.
//! - every other command: warnings and errors on stderr as `warning: ...` and `error: ...`, beside
//!   the command's own output on stdout.
//!
//! A layer's lines take their level from its verdict (`verdict_line`): FAULT error, PAUSE
//! warning, RECOAT and REVIEW notice, PASS info. `tracing` has no notice level: an info event with
//! the field `notice = true` is one.
//!
//! The box's own crates log from info up; the libraries under them (ONNX Runtime through `ort`,
//! tract) from warning up, so that their start-up chatter stays out of the journal.

use std::fmt::{self, Write as _};
use std::sync::OnceLock;

use hal::Verdict;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// Syslog priorities (sd-daemon(3)).
const ERR: u8 = 3;
const WARNING: u8 = 4;
const NOTICE: u8 = 5;
const INFO: u8 = 6;
const DEBUG: u8 = 7;

/// Whether stdout and stderr are the journal's (systemd sets JOURNAL_STREAM for a service whose
/// output goes there).
pub fn to_journal() -> bool {
    static TO_JOURNAL: OnceLock<bool> = OnceLock::new();
    *TO_JOURNAL.get_or_init(|| std::env::var_os("JOURNAL_STREAM").is_some())
}

/// The logger of `bedsight run`: levels and times, or journald's priorities.
pub fn init_service() {
    let style = if to_journal() { Style::Journal } else { Style::Timed };
    install(style, std::io::stdout);
}

/// The logger of every other command: its warnings and errors on stderr.
pub fn init_command() {
    install(Style::Command, std::io::stderr);
}

fn install<W>(style: Style, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let targets = Targets::new()
        .with_target("appliance", Level::INFO)
        .with_target("hal", Level::INFO)
        .with_target("bedsight", Level::INFO)
        .with_default(Level::WARN);
    let layer = tracing_subscriber::fmt::layer()
        .event_format(LineFormat { style })
        .with_writer(writer);
    // A second call (tests that start the loop twice in one process) keeps the first logger.
    tracing_subscriber::registry().with(layer).with(targets).try_init().ok();
}

/// One layer's line at its verdict's level.
pub fn verdict_line(verdict: Verdict, text: &str) {
    match verdict {
        Verdict::Fault => tracing::error!("{text}"),
        Verdict::Pause => tracing::warn!("{text}"),
        Verdict::Recoat | Verdict::Review => tracing::info!(notice = true, "{text}"),
        Verdict::Pass => tracing::info!("{text}"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Style {
    Timed,
    Journal,
    Command,
}

struct LineFormat {
    style: Style,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = *event.metadata().level();
        let text = line(self.style, level, fields.notice, &fields.message, || {
            let mut time = String::new();
            SystemTime.format_time(&mut Writer::new(&mut time)).ok();
            time
        });
        writer.write_str(&text)?;
        writer.write_char('\n')
    }
}

/// The text of one line (without its newline); `now` gives the time where the style shows it.
fn line(style: Style, level: Level, notice: bool, message: &str, now: impl FnOnce() -> String) -> String {
    match style {
        Style::Journal => format!("<{}>{message}", priority(level, notice)),
        Style::Timed => format!("{} {:<6} {message}", now(), name(level, notice)),
        Style::Command => match level {
            Level::ERROR => format!("error: {message}"),
            Level::WARN => format!("warning: {message}"),
            _ => message.to_string(),
        },
    }
}

fn priority(level: Level, notice: bool) -> u8 {
    match level {
        Level::ERROR => ERR,
        Level::WARN => WARNING,
        Level::INFO if notice => NOTICE,
        Level::INFO => INFO,
        _ => DEBUG,
    }
}

fn name(level: Level, notice: bool) -> &'static str {
    match level {
        Level::INFO if notice => "NOTICE",
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        _ => "TRACE",
    }
}

/// An event's message, its `notice` flag, and any other field as ` key=value`.
#[derive(Default)]
struct Fields {
    message: String,
    notice: bool,
}

impl Visit for Fields {
    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "notice" {
            self.notice = value;
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.message, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_noon() -> String {
        "2026-12-03T12:00:00.000000Z".to_string()
    }

    #[test]
    fn a_terminal_line_has_its_time_and_level() {
        assert_eq!(
            line(Style::Timed, Level::INFO, false, "layer 1 PASS", at_noon),
            "2026-12-03T12:00:00.000000Z INFO   layer 1 PASS"
        );
        assert_eq!(
            line(Style::Timed, Level::INFO, true, "layer 2 RECOAT", at_noon),
            "2026-12-03T12:00:00.000000Z NOTICE layer 2 RECOAT"
        );
        assert_eq!(
            line(Style::Timed, Level::WARN, false, "layer 3 PAUSE", at_noon),
            "2026-12-03T12:00:00.000000Z WARN   layer 3 PAUSE"
        );
    }

    #[test]
    fn a_journal_line_has_the_priority_journald_reads_and_no_time() {
        // sd-daemon(3): 3 err, 4 warning, 5 notice, 6 info, 7 debug
        let journal = |level, notice| line(Style::Journal, level, notice, "m", || unreachable!());
        assert_eq!(journal(Level::ERROR, false), "<3>m");
        assert_eq!(journal(Level::WARN, false), "<4>m");
        assert_eq!(journal(Level::INFO, true), "<5>m");
        assert_eq!(journal(Level::INFO, false), "<6>m");
        assert_eq!(journal(Level::DEBUG, false), "<7>m");
    }

    #[test]
    fn a_command_says_warning_or_error_and_nothing_for_the_rest() {
        let command = |level| line(Style::Command, level, false, "record: behind", || unreachable!());
        assert_eq!(command(Level::ERROR), "error: record: behind");
        assert_eq!(command(Level::WARN), "warning: record: behind");
        assert_eq!(command(Level::INFO), "record: behind");
    }
}
