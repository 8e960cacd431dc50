//! Renders progress: a bar on a terminal, one line per phase otherwise, or, for a baluchon
//! driven over SSH by another one, JSON events on stderr that the other side renders.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use baluchon_bundle::{Phase, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Starts each progress event line on stderr; the rest of the line is one JSON object,
/// `{"phase": LABEL, "total": BYTES|null}` or `{"advance": BYTES}`.
const EVENT_PREFIX: &str = "baluchon-progress ";

/// Bytes gathered before an `advance` event is written: a few events per second at most.
const EVENT_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing at all.
    Off,
    /// Bars on a terminal, a line per phase otherwise.
    Human,
    /// Event lines for the baluchon at the other end of an SSH connection.
    Events,
}

#[derive(Debug)]
pub struct CliProgress {
    bar: ProgressBar,
    interactive: bool,
    mode: Mode,
    /// Events mode: bytes advanced and not yet reported.
    pending: AtomicU64,
}

impl CliProgress {
    pub fn new(mode: Mode) -> Self {
        let interactive = mode == Mode::Human && std::io::stderr().is_terminal();
        let target = if interactive {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.enable_steady_tick(Duration::from_millis(200));
        Self {
            bar,
            interactive,
            mode,
            pending: AtomicU64::new(0),
        }
    }

    pub fn clear(&self) {
        self.flush_events();
        self.bar.finish_and_clear();
    }

    /// A new step, measured in bytes when `total` is known.
    pub fn start(&self, label: &str, total: Option<u64>) {
        match self.mode {
            Mode::Off => return,
            Mode::Events => {
                self.flush_events();
                eprintln!(
                    "{EVENT_PREFIX}{}",
                    serde_json::json!({ "phase": label, "total": total })
                );
                return;
            }
            Mode::Human if !self.interactive => {
                eprintln!("baluchon: {label}");
                return;
            }
            Mode::Human => {}
        }
        let template = if total.is_some() {
            "{msg:>32} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
        } else {
            "{msg:>32} {spinner} {bytes} {bytes_per_sec} {elapsed}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            self.bar.set_style(style.progress_chars("=> "));
        }
        self.bar.reset();
        self.bar.set_length(total.unwrap_or(0));
        self.bar.set_message(label.to_owned());
    }

    pub fn add(&self, bytes: u64) {
        if self.mode == Mode::Events {
            let pending = self.pending.fetch_add(bytes, Ordering::Relaxed) + bytes;
            if pending >= EVENT_BYTES {
                self.flush_events();
            }
        } else {
            self.bar.inc(bytes);
        }
    }

    fn flush_events(&self) {
        let pending = self.pending.swap(0, Ordering::Relaxed);
        if pending > 0 {
            eprintln!(
                "{EVENT_PREFIX}{}",
                serde_json::json!({ "advance": pending })
            );
        }
    }

    /// Renders an event line from a remote baluchon, its phase labelled with `host`;
    /// returns whether the line was an event.
    pub fn relay(&self, line: &str, host: &str) -> bool {
        let Some(event) = line
            .strip_prefix(EVENT_PREFIX)
            .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
        else {
            return false;
        };
        if let Some(label) = event.get("phase").and_then(|p| p.as_str()) {
            self.start(
                &format!("{host}: {label}"),
                event.get("total").and_then(serde_json::Value::as_u64),
            );
        } else if let Some(bytes) = event.get("advance").and_then(serde_json::Value::as_u64) {
            self.add(bytes);
        }
        true
    }
}

fn describe(phase: Phase) -> &'static str {
    match phase {
        Phase::Archiving => "archiving",
        Phase::Authenticating => "checking signature and tag files",
        Phase::VerifyingPayload => "verifying payload",
        _ => "working",
    }
}

impl Progress for CliProgress {
    fn phase(&self, phase: Phase, total: Option<u64>) {
        self.start(describe(phase), total);
    }

    fn advance(&self, bytes: u64) {
        self.add(bytes);
    }
}
