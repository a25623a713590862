//! Stopping a VMM, gentlest first: the one escalation both drivers share.
//! Each driver says only how it asks the guest to shut down (Firecracker:
//! Ctrl-Alt-Del once; QEMU: ACPI powerdown, repeated because a press before
//! logind watches the button is lost) and whether the VMM itself can be
//! asked to exit (QEMU's `quit`); the waits, the SIGKILL, the helper
//! processes and the control socket are handled here the same way for both.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::process::RunningVmm;
use crate::{StopMethod, StopOutcome};

/// How often the guest is asked to shut down within the grace period.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ask {
    /// Once, even with no grace at all, then wait out the rest.
    Once,
    /// Again every interval while the grace lasts (none with no grace).
    Every(Duration),
}

/// The VMM's own exit request (QEMU's `quit`): the request (true when the
/// VMM accepted it) and how long to wait for the exit afterwards.
pub(crate) struct Quit<F> {
    pub request: F,
    pub wait: Duration,
}

/// A [`Quit`] that is never built: the type of "no quit step".
type NoQuit = Quit<fn() -> std::future::Ready<bool>>;

/// No `quit` step (Firecracker has none).
pub(crate) fn no_quit() -> Option<NoQuit> {
    None
}

/// Stops `vm`: already exited → nothing to do; else `ask` the guest (per
/// `how`) until `grace` ends, then `quit` if given, then SIGKILL. Helper
/// processes are stopped and `control_socket` removed whatever happened.
pub(crate) async fn stop_escalating<A, AF, Q, QF>(
    vm: &mut RunningVmm,
    control_socket: &Path,
    grace: Duration,
    how: Ask,
    ask: A,
    quit: Option<Quit<Q>>,
) -> StopOutcome
where
    A: Fn() -> AF,
    AF: Future<Output = ()>,
    Q: FnOnce() -> QF,
    QF: Future<Output = bool>,
{
    let t0 = Instant::now();
    let outcome = |method, exit| StopOutcome {
        method,
        exit,
        elapsed: t0.elapsed(),
    };
    let result = if let Some(exit) = vm.wait_exit(Duration::ZERO).await {
        outcome(StopMethod::AlreadyExited, Some(exit))
    } else {
        let mut exited = None;
        match how {
            Ask::Once => {
                ask().await;
                exited = vm.wait_exit(grace.saturating_sub(t0.elapsed())).await;
            }
            Ask::Every(repeat) => {
                while exited.is_none() && t0.elapsed() < grace {
                    ask().await;
                    exited = vm
                        .wait_exit(repeat.min(grace.saturating_sub(t0.elapsed())))
                        .await;
                }
            }
        }
        match exited {
            Some(exit) => outcome(StopMethod::Graceful, Some(exit)),
            None => {
                let mut quit_exit = None;
                if let Some(q) = quit
                    && (q.request)().await
                {
                    quit_exit = vm.wait_exit(q.wait).await;
                }
                match quit_exit {
                    Some(exit) => outcome(StopMethod::Quit, Some(exit)),
                    None => {
                        let exit = vm.kill().await;
                        outcome(StopMethod::Killed, exit)
                    }
                }
            }
        }
    };
    vm.stop_helpers().await;
    let _ = std::fs::remove_file(control_socket);
    result
}
