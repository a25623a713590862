//! Host ↔ guest agent protocol (`banger-vsock-agent`).
//!
//! Transport-agnostic: the same bytes flow over AF_VSOCK inside the guest and
//! Firecracker's hybrid-vsock Unix socket on the host, over one stream each of
//! the serial channel's multiplexer under QEMU (virtio-serial port
//! [`AGENT_SERIAL_PORT`]; see `banger_agent::mux`), and over plain Unix
//! sockets in tests.
//!
//! # Framing
//!
//! Every frame is a 5-byte header followed by a payload:
//!
//! ```text
//! +----------------------+-----------+------------------+
//! | payload length (u32, | kind (u8) | payload          |
//! | big endian)          |           | (length bytes)   |
//! +----------------------+-----------+------------------+
//! ```
//!
//! The length counts the payload only and may not exceed [`MAX_FRAME_PAYLOAD`];
//! a decoder rejects a larger length *before* allocating anything. `Control`
//! payloads are one JSON object ([`HostMsg`] or [`GuestMsg`]); the other kinds
//! carry raw bytes, and an empty data frame marks the end of that stream.
//!
//! # Sessions
//!
//! One connection carries one session: the host sends [`HostMsg::Hello`] then
//! exactly one request; the agent answers `Hello` (or an error naming both
//! versions), serves the request and closes. Several sessions run at once on
//! separate connections. Backpressure is the transport's own: each side stops
//! reading when its sink is full, so memory stays bounded by one chunk per
//! stream.
//!
//! # Readiness
//!
//! At boot the agent connects out to the host (CID 2) on [`READY_PORT`] and
//! sends a single [`GuestMsg::Hello`] frame. On the serial channel the host
//! speaks first: the agent's answer to the multiplexer's `Hello` carries the
//! same [`GuestHello`], and is the readiness announcement.

/// Where images install the agent binary, in the guest (its systemd
/// unit's `ExecStart`): the one home of this path.
pub const AGENT_INSTALL_PATH: &str = "/usr/local/bin/banger-vsock-agent";

use serde::{Deserialize, Serialize};

/// Version of this protocol. Host and agent must agree exactly; a mismatch is
/// refused with an error that names both versions.
pub const PROTOCOL_VERSION: u32 = 1;

/// Vsock port the agent listens on inside the guest.
pub const AGENT_PORT: u32 = 10789;

/// Vsock port on the host (CID 2) the agent connects to at boot to announce
/// readiness. Firecracker delivers it to `<uds_path>_10790` on the host.
pub const READY_PORT: u32 = 10790;

/// Name of the virtio-serial port that carries the agent channel under QEMU
/// (`/dev/virtio-ports/banger.agent` in the guest).
pub const AGENT_SERIAL_PORT: &str = "banger.agent";

/// The host's vsock context id.
pub const HOST_CID: u32 = 2;

/// Largest payload of one frame (1 MiB). Anything larger is refused.
pub const MAX_FRAME_PAYLOAD: usize = 1 << 20;

/// Size of the data chunks senders cut streams into (64 KiB).
pub const DATA_CHUNK: usize = 64 * 1024;

/// Length of a frame header: 4-byte big-endian payload length + 1-byte kind.
pub const FRAME_HEADER_LEN: usize = 5;

/// Exit code reported when the command to exec does not exist, as a shell does.
pub const EXIT_COMMAND_NOT_FOUND: i32 = 127;

/// Exit code reported when the command exists but cannot be executed.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;

/// What a frame's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// One JSON-encoded [`HostMsg`] or [`GuestMsg`].
    Control = 1,
    /// Bytes for the exec'd process's stdin (host → guest). Empty = EOF.
    Stdin = 2,
    /// Bytes from the process's stdout, or from the pty in tty mode. Empty = EOF.
    Stdout = 3,
    /// Bytes from the process's stderr. Empty = EOF.
    Stderr = 4,
    /// A chunk of a tar stream (upload or download). Empty = end of stream.
    Data = 5,
}

impl FrameKind {
    pub fn from_u8(b: u8) -> Result<Self, FrameError> {
        Ok(match b {
            1 => FrameKind::Control,
            2 => FrameKind::Stdin,
            3 => FrameKind::Stdout,
            4 => FrameKind::Stderr,
            5 => FrameKind::Data,
            other => return Err(FrameError::UnknownKind(other)),
        })
    }
}

/// Why bytes could not be decoded into a frame or a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix exceeds the cap; the peer is broken or hostile.
    #[error(
        "agent frame of {len} bytes exceeds the {max}-byte limit; the peer is not speaking the banger agent protocol or is broken"
    )]
    TooLarge { len: usize, max: usize },
    /// The kind byte is not one this version knows.
    #[error("unknown agent frame kind {0}; host and guest agent versions probably differ")]
    UnknownKind(u8),
    /// The stream ended inside a frame.
    #[error("agent connection closed in the middle of a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    /// A control frame's JSON did not parse as a message.
    #[error("malformed agent control message: {0}")]
    BadMessage(String),
    /// A control message was expected but a data frame arrived (or vice versa).
    #[error("unexpected agent frame: expected {expected}, got {got:?}")]
    Unexpected {
        expected: &'static str,
        got: FrameKind,
    },
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A data-carrying frame. Fails if `payload` exceeds the cap.
    pub fn data(kind: FrameKind, payload: Vec<u8>) -> Result<Self, FrameError> {
        if payload.len() > MAX_FRAME_PAYLOAD {
            return Err(FrameError::TooLarge {
                len: payload.len(),
                max: MAX_FRAME_PAYLOAD,
            });
        }
        Ok(Frame { kind, payload })
    }

    /// A control frame carrying `msg` as JSON.
    pub fn control<M: Serialize>(msg: &M) -> Result<Self, FrameError> {
        let payload = serde_json::to_vec(msg).map_err(|e| FrameError::BadMessage(e.to_string()))?;
        Frame::data(FrameKind::Control, payload)
    }

    /// Decodes a control frame's JSON.
    pub fn message<M: for<'de> Deserialize<'de>>(&self) -> Result<M, FrameError> {
        if self.kind != FrameKind::Control {
            return Err(FrameError::Unexpected {
                expected: "a control message",
                got: self.kind,
            });
        }
        serde_json::from_slice(&self.payload).map_err(|e| FrameError::BadMessage(e.to_string()))
    }

    /// Whether this is the empty frame that ends a data stream.
    pub fn is_eof(&self) -> bool {
        self.kind != FrameKind::Control && self.payload.is_empty()
    }

    /// Header followed by payload, ready to write.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAME_HEADER_LEN + self.payload.len());
        out.extend_from_slice(&encode_header(self.kind, self.payload.len()));
        out.extend_from_slice(&self.payload);
        out
    }
}

/// Encodes a header. The caller guarantees `len <= MAX_FRAME_PAYLOAD`
/// (every `Frame` constructor checks it).
pub fn encode_header(kind: FrameKind, len: usize) -> [u8; FRAME_HEADER_LEN] {
    let l = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    [l[0], l[1], l[2], l[3], kind as u8]
}

/// Decodes a header, rejecting oversized lengths and unknown kinds.
pub fn decode_header(h: [u8; FRAME_HEADER_LEN]) -> Result<(FrameKind, usize), FrameError> {
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if len > MAX_FRAME_PAYLOAD {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_PAYLOAD,
        });
    }
    Ok((FrameKind::from_u8(h[4])?, len))
}

/// Incremental decoder for callers that receive bytes in arbitrary pieces.
/// After an error the decoder is poisoned: the stream cannot be resynchronised.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Returns the next complete frame, `Ok(None)` if more bytes are needed.
    /// The header is validated as soon as it is complete, so an oversized
    /// length fails without waiting for (or buffering) its payload.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let mut h = [0u8; FRAME_HEADER_LEN];
        h.copy_from_slice(&self.buf[..FRAME_HEADER_LEN]);
        let (kind, len) = match decode_header(h) {
            Ok(v) => v,
            Err(e) => {
                self.failed = Some(e.clone());
                self.buf = Vec::new();
                return Err(e);
            }
        };
        if self.buf.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len].to_vec();
        self.buf.drain(..FRAME_HEADER_LEN + len);
        Ok(Some(Frame { kind, payload }))
    }

    /// Call at end of stream: fails if a partial frame is left over.
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let want = if self.buf.len() < FRAME_HEADER_LEN {
            FRAME_HEADER_LEN
        } else {
            let l = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
            FRAME_HEADER_LEN + l as usize
        };
        Err(FrameError::Truncated {
            got: self.buf.len(),
            want,
        })
    }
}

/// Terminal window size for tty mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// The host's opening message on every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostHello {
    pub protocol_version: u32,
    /// Free text for the agent's log, e.g. `bangerd 0.1.0`.
    pub client: String,
}

/// What the agent says about itself and its guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestHello {
    pub protocol_version: u32,
    pub agent_version: String,
    /// `uname -r`.
    pub kernel: String,
    pub hostname: String,
    /// Guest uptime in milliseconds, from /proc/uptime.
    pub uptime_ms: u64,
}

/// Run a process in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments, exec'd directly (no shell). `argv[0]` is
    /// searched in `PATH` when it has no slash.
    pub argv: Vec<String>,
    /// Added to (and overriding) the agent's base environment, which has
    /// `PATH`, `HOME=/root` and, in tty mode, `TERM`.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory; the agent's (`/`) when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Run on a fresh pty of this size instead of pipes. stdout and stderr
    /// are then one stream (`Stdout` frames).
    #[serde(default)]
    pub tty: Option<TtySize>,
    /// Run as this user instead of root: `name`, `uid`, `name:group` or
    /// `uid:gid` (an OCI image config's `User`), resolved in the guest.
    #[serde(default)]
    pub user: Option<String>,
}

impl ExecRequest {
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
            tty: None,
            user: None,
        }
    }
}

/// How an exec'd process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum ExitStatus {
    Exited { code: i32 },
    Signaled { signal: i32 },
}

impl ExitStatus {
    /// The status a shell would report: the code, or 128 + signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Exited { code } => code,
            ExitStatus::Signaled { signal } => 128 + signal,
        }
    }

    pub fn success(self) -> bool {
        self == ExitStatus::Exited { code: 0 }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Exited { code } => write!(f, "exit status {code}"),
            ExitStatus::Signaled { signal } => write!(f, "killed by signal {signal}"),
        }
    }
}

/// Result of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadSummary {
    /// Tar entries unpacked.
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
}

/// Machine-readable kind of an agent error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentErrorKind {
    /// Host and agent protocol versions differ.
    VersionMismatch,
    /// The request was malformed or arrived out of order.
    BadRequest,
    /// An upload entry would escape its target directory or is not allowed.
    PathRejected,
    /// The named path does not exist.
    NotFound,
    /// An I/O error inside the guest.
    Io,
    /// The agent cannot do this here (e.g. not root for sync-time).
    Unsupported,
}

/// An error reported by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("guest agent: {message}")]
pub struct AgentErrorMsg {
    pub kind: AgentErrorKind,
    pub message: String,
}

impl AgentErrorMsg {
    pub fn new(kind: AgentErrorKind, message: impl Into<String>) -> Self {
        AgentErrorMsg {
            kind,
            message: message.into(),
        }
    }
}

/// Text of the version mismatch error; both sides use it so the user always
/// sees both numbers.
pub fn version_mismatch_message(host: u32, guest: u32) -> String {
    format!(
        "agent protocol version mismatch: host speaks v{host}, guest agent speaks v{guest}; \
         rebuild or update the image so its banger-vsock-agent matches this banger"
    )
}

/// Control messages from host to guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMsg {
    /// First message of every connection.
    Hello(HostHello),
    /// Answered with `Pong`.
    Ping,
    /// Start a process; then `Stdin` frames, `Resize`, `Signal` may follow.
    Exec(ExecRequest),
    /// Window size change of the tty (tty mode only).
    Resize(TtySize),
    /// Send this signal number to the exec'd process's process group.
    Signal { signal: i32 },
    /// Unpack the tar stream that follows as `Data` frames under
    /// `target_dir` (created if missing). Ends with an empty `Data` frame.
    Upload { target_dir: String },
    /// Send `path` (file or directory) as a tar stream whose single top-level
    /// entry is the path's last component.
    Download { path: String },
    /// Power the guest off cleanly. Answered with `ShutdownStarted`.
    Shutdown,
    /// Set the guest's wall clock to this time (Unix epoch).
    SyncTime { unix_secs: i64, nanos: u32 },
    /// Report what the user's next step needs. Answered with `Readiness`.
    /// Agents older than this request answer an error (the host then
    /// judges readiness without it).
    Readiness,
}

/// Control messages from guest to host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestMsg {
    /// Answer to `HostMsg::Hello`, and the readiness announcement.
    Hello(GuestHello),
    Pong,
    /// The process started.
    Started {
        pid: u32,
    },
    /// The process ended; sent after both output streams reached EOF.
    Exited(ExitStatus),
    UploadDone(UploadSummary),
    /// The download's tar stream is complete.
    DownloadDone {
        bytes: u64,
    },
    ShutdownStarted,
    /// The clock was set; `offset_ms` is guest minus host before the change.
    TimeSynced {
        offset_ms: i64,
    },
    /// Answer to `HostMsg::Readiness`.
    Readiness(ReadinessReport),
    /// The request failed; the connection closes after this.
    Error(AgentErrorMsg),
}

/// Ownership and mode of one path in the guest (`lstat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathFacts {
    pub path: String,
    /// `None`: the path does not exist.
    #[serde(default)]
    pub stat: Option<PathStat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathStat {
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    pub uid: u32,
}

/// Facts that decide whether a guest is ready for its user, collected by
/// the agent; the host judges them (`banger_agent::readiness`). Every field
/// defaults, so an agent and host one field apart still understand each
/// other.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadinessReport {
    /// Source of the filesystem mounted on `/root` (e.g. `/dev/vdb`);
    /// `None` when `/root` is not a mount point.
    #[serde(default)]
    pub root_source: Option<String>,
    /// `/root`, `/root/.ssh`, `/root/.ssh/authorized_keys`, in that order.
    #[serde(default)]
    pub home: Vec<PathFacts>,
    /// Contents of `/root/.ssh/authorized_keys` (public keys; first 64 KiB).
    #[serde(default)]
    pub authorized_keys: String,
    /// The image has an sshd binary.
    #[serde(default)]
    pub sshd_installed: bool,
    /// Something listens on TCP port 22 (v4 or v6).
    #[serde(default)]
    pub sshd_listening: bool,
    /// IPv4 addresses on interfaces other than `lo`.
    #[serde(default)]
    pub ipv4: Vec<std::net::Ipv4Addr>,
    /// An IPv4 default route exists.
    #[serde(default)]
    pub default_route: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_cap() {
        let h = encode_header(FrameKind::Stdout, 1234);
        assert_eq!(decode_header(h), Ok((FrameKind::Stdout, 1234)));
        let too_big = encode_header(FrameKind::Data, MAX_FRAME_PAYLOAD + 1);
        assert!(matches!(
            decode_header(too_big),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(
            decode_header([0, 0, 0, 0, 99]),
            Err(FrameError::UnknownKind(99))
        );
    }

    #[test]
    fn decoder_handles_split_input() {
        let a = Frame::control(&HostMsg::Ping).expect("encode");
        let b = Frame::data(FrameKind::Stdin, b"hello".to_vec()).expect("encode");
        let mut bytes = a.encode();
        bytes.extend(b.encode());
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        for byte in &bytes {
            d.push(std::slice::from_ref(byte));
            while let Some(f) = d.next_frame().expect("decode") {
                out.push(f);
            }
        }
        assert_eq!(out, vec![a, b]);
        d.finish().expect("no leftover");
    }

    #[test]
    fn decoder_reports_truncation() {
        let mut d = FrameDecoder::new();
        d.push(
            &Frame::data(FrameKind::Data, vec![1; 10])
                .expect("f")
                .encode()[..8],
        );
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated { got: 8, want: 15 }));
    }

    #[test]
    fn messages_round_trip() {
        let msgs = vec![
            HostMsg::Hello(HostHello {
                protocol_version: PROTOCOL_VERSION,
                client: "test".into(),
            }),
            HostMsg::Exec(ExecRequest {
                argv: vec!["sh".into(), "-c".into(), "exit 5".into()],
                env: vec![("A".into(), "b".into())],
                cwd: Some("/tmp".into()),
                tty: Some(TtySize { rows: 24, cols: 80 }),
                user: Some("nobody".into()),
            }),
            HostMsg::Signal { signal: 9 },
            HostMsg::Upload {
                target_dir: "/root/repo".into(),
            },
            HostMsg::SyncTime {
                unix_secs: 1_700_000_000,
                nanos: 5,
            },
        ];
        for m in msgs {
            let f = Frame::control(&m).expect("encode");
            assert_eq!(f.message::<HostMsg>().expect("decode"), m);
        }
        let g = GuestMsg::Exited(ExitStatus::Signaled { signal: 9 });
        let f = Frame::control(&g).expect("encode");
        assert_eq!(f.message::<GuestMsg>().expect("decode"), g);
        assert_eq!(ExitStatus::Signaled { signal: 9 }.shell_code(), 137);
    }

    #[test]
    fn mismatch_message_names_both_versions() {
        let m = version_mismatch_message(1, 7);
        assert!(m.contains("v1") && m.contains("v7"), "{m}");
    }
}
