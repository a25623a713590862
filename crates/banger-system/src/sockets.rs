//! "Does the socket answer?": a connect() that succeeds.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The state of one daemon socket, for `banger system status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SocketProbe {
    pub path: std::path::PathBuf,
    pub answering: bool,
    /// Why it does not answer (absent, refused, permission denied, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn probe(path: &Path) -> SocketProbe {
    match UnixStream::connect(path) {
        Ok(_) => SocketProbe {
            path: path.to_path_buf(),
            answering: true,
            error: None,
        },
        Err(e) => SocketProbe {
            path: path.to_path_buf(),
            answering: false,
            error: Some(match e.kind() {
                std::io::ErrorKind::NotFound => "no socket at this path".to_owned(),
                std::io::ErrorKind::ConnectionRefused => {
                    "socket exists but nothing is listening".to_owned()
                }
                std::io::ErrorKind::PermissionDenied => {
                    "permission denied (only its owner, or root, can connect)".to_owned()
                }
                _ => e.to_string(),
            }),
        },
    }
}

pub fn answers(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}

/// Poll until every path answers or `timeout` passes; returns the first path
/// still silent at the deadline. `still_alive` lets the caller abort early
/// when the process that should listen has died.
pub fn wait_all(
    paths: &[&Path],
    timeout: Duration,
    mut still_alive: impl FnMut() -> std::result::Result<(), String>,
) -> std::result::Result<(), WaitFailure> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(10);
    loop {
        let silent = paths.iter().position(|p| !answers(p));
        let Some(i) = silent else { return Ok(()) };
        if let Err(why) = still_alive() {
            return Err(WaitFailure::Died(why));
        }
        if Instant::now() >= deadline {
            return Err(WaitFailure::Timeout(i));
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

#[derive(Debug)]
pub enum WaitFailure {
    /// Index into the paths of the first one that never answered.
    Timeout(usize),
    Died(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn probe_reports_absent_refused_and_answering() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("s.sock");
        let absent = probe(&p);
        assert!(!absent.answering);
        assert_eq!(absent.error.as_deref(), Some("no socket at this path"));

        let l = UnixListener::bind(&p).expect("bind");
        assert!(probe(&p).answering);
        drop(l);
        let refused = probe(&p);
        assert!(!refused.answering);
        assert_eq!(
            refused.error.as_deref(),
            Some("socket exists but nothing is listening")
        );
    }

    #[test]
    fn wait_all_sees_a_late_listener_and_times_out_on_a_missing_one() {
        let d = tempfile::tempdir().expect("tempdir");
        let a = d.path().join("a.sock");
        let b = d.path().join("b.sock");
        let _la = UnixListener::bind(&a).expect("bind a");
        let b2 = b.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            UnixListener::bind(&b2).expect("bind b")
        });
        let start = Instant::now();
        wait_all(&[&a, &b], Duration::from_secs(5), || Ok(())).expect("both answer");
        assert!(start.elapsed() >= Duration::from_millis(100));
        let _lb = t.join().expect("thread");

        let c = d.path().join("c.sock");
        let start = Instant::now();
        match wait_all(&[&a, &c], Duration::from_millis(300), || Ok(())) {
            Err(WaitFailure::Timeout(1)) => {}
            other => panic!("expected timeout on c, got {other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(matches!(
            wait_all(&[&c], Duration::from_secs(5), || Err("gone".into())),
            Err(WaitFailure::Died(_))
        ));
    }
}
