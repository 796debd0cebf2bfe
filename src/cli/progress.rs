//! The progress bar of the offline commands: shown on a terminal only, never
//! with `--json` or when the output is piped, so scripts see clean output.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Whether a bar belongs on screen: both stdout and stderr are terminals
/// (a pipe on either means a script or a log file) and the output is not JSON.
pub fn wanted(json: bool, stdout_is_terminal: bool, stderr_is_terminal: bool) -> bool {
    !json && stdout_is_terminal && stderr_is_terminal
}

/// A bar of `len` steps on stderr, or a hidden one when [`wanted`] says no.
pub fn bar(len: usize, json: bool) -> ProgressBar {
    if !wanted(json, std::io::stdout().is_terminal(), std::io::stderr().is_terminal()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} images, {per_sec}, {eta} left") {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::wanted;

    #[test]
    fn a_bar_only_on_a_terminal_and_never_with_json() {
        assert!(wanted(false, true, true));
        assert!(!wanted(true, true, true));
        assert!(!wanted(false, false, true));
        assert!(!wanted(false, true, false));
    }
}
