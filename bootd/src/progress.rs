//! Progress bars on a terminal only; piped output stays quiet.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

pub struct Progress(ProgressBar);

impl Progress {
    fn new(len: u64, template: &str, what: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(ProgressBar::hidden());
        }
        let bar = ProgressBar::new(len);
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        Self(bar)
    }

    pub fn bytes(len: u64, what: &str) -> Self {
        Self::new(
            len,
            "{msg:>10} [{wide_bar}] {bytes}/{total_bytes} eta {eta}",
            what,
        )
    }

    pub fn percent(what: &str) -> Self {
        Self::new(100, "{msg:>10} [{wide_bar}] {pos:>3}%", what)
    }

    pub fn visible(&self) -> bool {
        !self.0.is_hidden()
    }

    pub fn set(&self, pos: u64) {
        self.0.set_position(pos);
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// A spinner with a changing message, for work of unknown length (image
/// build): hidden when stderr is not a terminal, like the bars.
pub struct Spinner(ProgressBar);

impl Progress {
    pub fn spinner(what: &str) -> Spinner {
        if !std::io::stderr().is_terminal() {
            return Spinner(ProgressBar::hidden());
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}") {
            bar.set_style(style);
        }
        bar.set_message(what.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Spinner(bar)
    }
}

impl Spinner {
    pub fn visible(&self) -> bool {
        !self.0.is_hidden()
    }

    pub fn message(&self, msg: &str) {
        self.0.set_message(msg.to_string());
    }

    pub fn tick(&self) {
        self.0.tick();
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
