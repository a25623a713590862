//! A reader between an untrusted tar stream and the `tar` crate that
//! refuses oversized extension headers before anything reads them. Used by
//! every reader of untrusted tar: OCI layers (banger-oci's flattener) and
//! `vm cp` archives (banger-agent's transfer module). Here, in the crate
//! both share, because it is a rule about a wire format; pure std.
//!
//! Why: the `tar` crate reads a PAX extended header (`x`) or a GNU long
//! name/link (`L`/`K`) whole into memory to apply it to the next entry. A
//! layer that declares a 20 GiB PAX header would make the daemon allocate
//! until it dies, long before the total-size cap notices. So this reader
//! follows the archive's structure as the bytes pass (header blocks, entry
//! data rounded to 512, the PAX `size` override, GNU sparse extension
//! blocks — the same rules the `tar` crate applies) and fails the read that
//! would deliver such a header to the parser: no byte of its data is read.
//!
//! It never changes a byte. When the stream stops looking like a tar
//! archive (a zero block ends it, a bad checksum), it stops tracking and
//! passes everything through: the `tar` crate then ends or errors itself.

use std::io::{self, Read};

/// Largest PAX or GNU long name/link header accepted.
pub const MAX_EXTENSION_HEADER: u64 = 1 << 20;

const BLOCK: u64 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting the next 512-byte header.
    Header,
    /// `left` bytes of entry data (padding included); `pax` when it is a
    /// PAX local header whose text is kept to find its `size` record.
    Data { left: u64, pax: bool },
    /// Collecting GNU sparse extension blocks.
    SparseExt,
    /// Not tracking any more.
    Through,
}

/// See the module comment.
pub struct TarGuard<R> {
    inner: R,
    state: State,
    block: Vec<u8>,
    /// Text of the pending PAX local header (at most the cap), and its
    /// length without the block padding.
    pax: Vec<u8>,
    pax_len: usize,
    /// `size` from the pending PAX header, for the next real entry.
    pax_size: Option<u64>,
    /// Data of the sparse entry whose extension blocks are being read.
    sparse_data: u64,
}

impl<R: Read> TarGuard<R> {
    pub fn new(inner: R) -> Self {
        TarGuard {
            inner,
            state: State::Header,
            block: Vec::with_capacity(512),
            pax: Vec::new(),
            pax_len: 0,
            pax_size: None,
            sparse_data: 0,
        }
    }
}

fn octal_or_binary(field: &[u8]) -> Option<u64> {
    if field.first()? & 0x80 != 0 {
        // base-256: the remaining bytes big-endian, the last 8 count.
        let tail = &field[field.len().saturating_sub(8)..];
        return Some(tail.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)));
    }
    let text = field.split(|b| *b == 0).next()?;
    let text = std::str::from_utf8(text).ok()?.trim();
    u64::from_str_radix(text, 8).ok()
}

/// The `size` record of PAX header text, if any.
fn pax_size(text: &[u8]) -> Option<u64> {
    let mut rest = text;
    let mut size = None;
    while !rest.is_empty() {
        let sp = rest.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
        let rec = rest.get(sp + 1..len)?;
        if let Some(v) = rec.strip_prefix(b"size=") {
            let v = v.strip_suffix(b"\n").unwrap_or(v);
            size = std::str::from_utf8(v).ok()?.parse().ok();
        }
        rest = &rest[len..];
    }
    size
}

fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK).saturating_mul(BLOCK)
}

impl<R> TarGuard<R> {
    /// A header block is complete: decide what follows it.
    fn header(&mut self) -> io::Result<()> {
        let h = std::mem::take(&mut self.block);
        if h.iter().all(|b| *b == 0) {
            self.state = State::Through;
            return Ok(());
        }
        let sum: u32 = h
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(*b)
                }
            })
            .sum();
        let (Some(size), Some(cksum)) =
            (octal_or_binary(&h[124..136]), octal_or_binary(&h[148..156]))
        else {
            self.state = State::Through;
            return Ok(());
        };
        if u64::from(sum) != cksum {
            self.state = State::Through;
            return Ok(());
        }
        let ty = h[156];
        let gnu = &h[257..265] == b"ustar  \0";
        match ty {
            b'x' | b'L' | b'K' => {
                if size > MAX_EXTENSION_HEADER {
                    let what = if ty == b'x' {
                        "PAX extended"
                    } else {
                        "GNU long name/link"
                    };
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "a {what} header of {size} bytes is over the {MAX_EXTENSION_HEADER} \
                             byte cap (a memory bomb?)"
                        ),
                    ));
                }
                if ty == b'x' {
                    self.pax.clear();
                    // Bounded by the cap just checked.
                    self.pax_len = size as usize;
                }
                self.state = State::Data {
                    left: padded(size),
                    pax: ty == b'x',
                };
            }
            b'g' => {
                // Takes the pending PAX header but not its size (the tar
                // crate applies that to real entries only).
                self.pax_size = None;
                self.pax.clear();
                self.state = State::Data {
                    left: padded(size),
                    pax: false,
                };
            }
            _ => {
                let size = self.pax_size.take().unwrap_or(size);
                self.pax.clear();
                if ty == b'S' && gnu && h[482] == 1 {
                    self.sparse_data = size;
                    self.state = State::SparseExt;
                } else {
                    self.state = State::Data {
                        left: padded(size),
                        pax: false,
                    };
                }
            }
        }
        Ok(())
    }

    /// Account for `buf` (what the inner reader just delivered).
    fn track(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.state {
                State::Through => return Ok(()),
                State::Header | State::SparseExt => {
                    let take = (512 - self.block.len()).min(buf.len());
                    self.block.extend_from_slice(&buf[..take]);
                    buf = &buf[take..];
                    if self.block.len() == 512 {
                        if self.state == State::SparseExt {
                            let more = self.block[504] == 1;
                            self.block.clear();
                            if !more {
                                self.state = State::Data {
                                    left: padded(self.sparse_data),
                                    pax: false,
                                };
                            }
                        } else {
                            self.header()?;
                        }
                    }
                }
                State::Data { left, pax } => {
                    let take = left.min(buf.len() as u64) as usize;
                    if pax {
                        self.pax.extend_from_slice(&buf[..take]);
                    }
                    buf = &buf[take..];
                    let left = left - take as u64;
                    if left == 0 {
                        if pax {
                            self.pax.truncate(self.pax_len);
                            self.pax_size = pax_size(&self.pax);
                        }
                        self.state = State::Header;
                    } else {
                        self.state = State::Data { left, pax };
                    }
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Never deliver past the end of a header block, so a refused header
        // reaches the parser as an error, not as the start of its data.
        let want = match self.state {
            State::Header | State::SparseExt => buf.len().min(512 - self.block.len()),
            _ => buf.len(),
        };
        let n = self.inner.read(&mut buf[..want])?;
        self.track(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
#[path = "tar_guard_tests.rs"]
mod tests;
