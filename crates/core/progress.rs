//! Progress bars, shown only when stderr is a terminal (never in logs or pipes).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A byte counter with throughput, hidden unless stderr is a terminal.
pub fn bytes_bar(label: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}: {bytes} ({bytes_per_sec})") {
        bar.set_style(style);
    }
    bar.set_message(label);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}
