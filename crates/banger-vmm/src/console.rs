//! Bounds on a guest's serial console log. The VMM writes the file itself
//! (QEMU's `-chardev file,append=on`, Firecracker's stdout, both
//! `O_APPEND`), so a guest that writes `/dev/zero` to its console would
//! fill the host's disk. The daemon's watcher calls [`cap`] every half
//! second: past [`CONSOLE_CAP`] the file keeps only its last
//! [`CONSOLE_KEEP`] bytes, moved to the front in place (the VMM's next
//! append lands after them: `O_APPEND` writes go to the current end).
//! Readers ([`tail`]) read only the end, never the whole file.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Size at which the console log is trimmed.
pub const CONSOLE_CAP: u64 = 8 << 20;
/// What a trim keeps: the newest bytes.
pub const CONSOLE_KEEP: u64 = 2 << 20;
/// Most bytes `vm logs` and crash reports read.
pub const TAIL_MAX: u64 = 1 << 20;

/// Trim `path` to its last `keep` bytes if it is larger than `cap`;
/// returns whether it was trimmed. A missing file is not an error.
pub fn cap(path: &Path, cap: u64, keep: u64) -> std::io::Result<bool> {
    let f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len <= cap {
        return Ok(false);
    }
    let keep = keep.min(cap);
    let mut buf = vec![0u8; keep as usize];
    f.read_exact_at(&mut buf, len - keep)?;
    f.write_all_at(&buf, 0)?;
    // What the VMM appended since `len` is lost; the tail before it stays.
    f.set_len(keep)?;
    Ok(true)
}

/// The last `max` bytes of `path` (all of it when shorter).
pub fn tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut out = Vec::new();
    f.take(max).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_console_flood_stays_under_the_cap_on_disk() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("console.log");
        let (cap_at, keep) = (1 << 20, 256 << 10);
        let p = path.clone();
        // The "VMM": appends as fast as it can for a while, numbered lines
        // so the kept tail can be checked.
        let writer = std::thread::spawn(move || {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .expect("open");
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
            let mut i = 0u64;
            while std::time::Instant::now() < deadline {
                writeln!(f, "line {i:012} {}", "z".repeat(100)).expect("write");
                i += 1;
            }
            i
        });
        let mut biggest = 0;
        let mut trims = 0;
        while !writer.is_finished() {
            if cap(&path, cap_at, keep).expect("cap") {
                trims += 1;
            }
            biggest = biggest.max(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let lines = writer.join().expect("writer");
        cap(&path, cap_at, keep).expect("cap");
        let len = std::fs::metadata(&path).expect("m").len();
        assert!(len <= cap_at, "{len} bytes after the flood");
        assert!(trims > 0, "the flood ({lines} lines) was never trimmed");
        // Between two looks the writer adds at most what it writes in 20 ms.
        assert!(biggest < 64 << 20, "peaked at {biggest} bytes");
        let text = String::from_utf8_lossy(&tail(&path, TAIL_MAX).expect("tail")).into_owned();
        let last = format!("line {:012} ", lines - 1);
        assert!(text.contains(&last), "the newest line is kept");
    }

    #[test]
    fn tail_reads_only_the_end() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("c");
        std::fs::write(&path, b"0123456789").expect("write");
        assert_eq!(tail(&path, 4).expect("tail"), b"6789");
        assert_eq!(tail(&path, 100).expect("tail"), b"0123456789");
        assert!(!cap(&dir.path().join("missing"), 1, 1).expect("missing is fine"));
    }
}
