//! Renders library progress: a bar on a terminal, one line per phase otherwise.

use std::io::IsTerminal as _;
use std::time::Duration;

use baluchon_bundle::{Phase, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug)]
pub struct CliProgress {
    bar: ProgressBar,
    interactive: bool,
    enabled: bool,
}

impl CliProgress {
    pub fn new(enabled: bool) -> Self {
        let interactive = enabled && std::io::stderr().is_terminal();
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
            enabled,
        }
    }

    pub fn clear(&self) {
        self.bar.finish_and_clear();
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
        if !self.interactive {
            if self.enabled {
                eprintln!("baluchon: {}", describe(phase));
            }
            return;
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
        self.bar.set_message(describe(phase));
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
}
