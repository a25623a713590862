//! The local terminal: raw mode for tty sessions, its size and the
//! window-size changes forwarded to a guest pty, and the progress the CLI
//! draws on stderr (phase lines and timings, pull progress bars). Kept apart
//! so the commands themselves hold no termios or drawing code.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use banger_core::size::format_size;
use banger_proto::PullProgress;
use banger_proto::agent::TtySize;

/// Phase timings for `--timings`, and progress lines on a terminal.
pub struct Phases {
    start: Instant,
    last: Instant,
    done: Vec<(&'static str, Duration, Option<String>)>,
    show: bool,
}

impl Phases {
    pub fn new() -> Self {
        let now = Instant::now();
        Phases {
            start: now,
            last: now,
            done: Vec::new(),
            show: std::io::stderr().is_terminal(),
        }
    }
    pub fn begin(&mut self, what: &str) {
        if self.show {
            eprintln!("{} {what}…", crate::output::paint_err("▸", "36"));
        }
        self.last = Instant::now();
    }
    pub fn end(&mut self, phase: &'static str) {
        self.done.push((phase, self.last.elapsed(), None));
        self.last = Instant::now();
    }
    /// A line printed after the phase just ended (e.g. how a restore made the disks).
    pub fn note(&mut self, text: String) {
        if let Some((_, _, n)) = self.done.last_mut() {
            *n = Some(text);
        }
    }
    pub fn print(&self) {
        for (p, d, note) in &self.done {
            match note {
                Some(n) => eprintln!("timing: {p:<8} {:>7.2}s  ({n})", d.as_secs_f64()),
                None => eprintln!("timing: {p:<8} {:>7.2}s", d.as_secs_f64()),
            }
        }
        eprintln!(
            "timing: {:<8} {:>7.2}s",
            "total",
            self.start.elapsed().as_secs_f64()
        );
    }
}

/// The local terminal in raw mode for the life of a tty session, so keys
/// (Ctrl-C included) reach the guest's pty unchanged; restored on drop.
pub struct RawTerminal(libc::termios);

impl RawTerminal {
    pub fn enter() -> Option<RawTerminal> {
        // SAFETY: tcgetattr/tcsetattr on stdin with a termios we own.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
                return None;
            }
            let orig = t;
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(RawTerminal(orig))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter`.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0);
        }
    }
}

/// The local terminal's size (24x80 when stdout is not a terminal).
pub fn terminal_size() -> TtySize {
    // SAFETY: TIOCGWINSZ fills a winsize struct we own.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_row > 0 {
        TtySize {
            rows: ws.ws_row,
            cols: ws.ws_col,
        }
    } else {
        TtySize { rows: 24, cols: 80 }
    }
}

/// Sends the terminal's new size on every SIGWINCH until the receiver goes.
pub fn forward_window_size(
    tx: tokio::sync::mpsc::Sender<banger_agent::client::ExecControl>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut winch) = signal(SignalKind::window_change()) else {
            return;
        };
        while winch.recv().await.is_some() {
            let size = terminal_size();
            if tx
                .send(banger_agent::client::ExecControl::Resize(size))
                .await
                .is_err()
            {
                return;
            }
        }
    })
}

/// Draws pull progress: an indicatif bar when stderr is a terminal, plain
/// lines (one per phase and file) otherwise.
pub(crate) struct ProgressView {
    bar: Option<indicatif::ProgressBar>,
    last: String,
}

impl ProgressView {
    pub(crate) fn new(name: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:30} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_message(format!("pulling {name}"));
            b
        });
        ProgressView {
            bar,
            last: String::new(),
        }
    }

    pub(crate) fn update(&mut self, p: &PullProgress) {
        let key = format!("{} {}", p.phase, p.file);
        match &self.bar {
            Some(b) => {
                b.set_length(p.total);
                b.set_position(p.done);
                if key != self.last {
                    b.set_message(key.clone());
                }
            }
            None if key != self.last => eprintln!(
                "{key} ({} of {})",
                format_size(p.done),
                format_size(p.total)
            ),
            None => {}
        }
        self.last = key;
    }

    pub(crate) fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Drop for ProgressView {
    fn drop(&mut self) {
        self.finish();
    }
}
