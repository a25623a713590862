//! HTTP/1.1 over Firecracker's API socket: one request per connection, a
//! JSON body, the status and body of the answer. Firecracker's API needs no
//! more than this, so the VMM layer (and the daemon core above it) carries
//! no HTTP library.

use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Largest answer read (Firecracker's are a few hundred bytes).
const MAX_BODY: usize = 1 << 20;
/// Largest status line or header line read.
const MAX_LINE: usize = 8 << 10;

/// Sends `method path` with `body` (JSON, when given) to the Unix socket
/// and returns the status and body. Errors are plain text for the caller
/// to wrap.
pub(crate) async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<(u16, Vec<u8>), String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect {}: {e}", socket.display()))?;
    let (rd, mut wr) = stream.into_split();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    wr.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    if let Some(b) = body {
        wr.write_all(b).await.map_err(|e| format!("send: {e}"))?;
    }
    wr.flush().await.map_err(|e| format!("send: {e}"))?;
    let mut rd = BufReader::new(rd);
    let status_line = read_line(&mut rd).await?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("read response: not an HTTP status line: {status_line:?}"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    loop {
        let line = read_line(&mut rd).await?;
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("content-length") {
                length = Some(v.parse().map_err(|_| format!("bad Content-Length {v:?}"))?);
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.eq_ignore_ascii_case("chunked");
            }
        }
    }
    let body = if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if chunked {
        read_chunked(&mut rd).await?
    } else {
        match length {
            Some(n) if n > MAX_BODY => return Err(format!("answer of {n} bytes is too large")),
            Some(n) => {
                let mut b = vec![0; n];
                rd.read_exact(&mut b)
                    .await
                    .map_err(|e| format!("read response: {e}"))?;
                b
            }
            None => {
                let mut b = Vec::new();
                (&mut rd)
                    .take(MAX_BODY as u64)
                    .read_to_end(&mut b)
                    .await
                    .map_err(|e| format!("read response: {e}"))?;
                b
            }
        }
    };
    Ok((status, body))
}

async fn read_line<R: AsyncBufReadExt + Unpin>(rd: &mut R) -> Result<String, String> {
    let mut line = Vec::new();
    let n = rd
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("read response: {e}"))?;
    if n == 0 {
        return Err("read response: the VMM closed the connection".into());
    }
    let text = String::from_utf8_lossy(&line);
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

async fn read_chunked<R: AsyncBufReadExt + Unpin>(rd: &mut R) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let size = read_line(rd).await?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size:?}"))?;
        if size == 0 {
            let _ = read_line(rd).await; // the final CRLF
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err("answer too large".into());
        }
        let mut chunk = vec![0; size + 2];
        rd.read_exact(&mut chunk)
            .await
            .map_err(|e| format!("read response: {e}"))?;
        body.extend_from_slice(&chunk[..size]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot server on a Unix socket that answers with `answer` and
    /// hands back the request it read.
    async fn serve_once(dir: &Path, answer: &'static [u8]) -> tokio::task::JoinHandle<Vec<u8>> {
        let sock = dir.join("api.sock");
        let l = tokio::net::UnixListener::bind(&sock).expect("bind");
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut got = vec![0; 4096];
            let n = s.read(&mut got).await.expect("read");
            got.truncate(n);
            s.write_all(answer).await.expect("write");
            got
        })
    }

    #[tokio::test]
    async fn requests_carry_the_body_and_answers_are_parsed() {
        let dir = tempfile::tempdir().expect("tmp");
        let srv = serve_once(
            dir.path(),
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 24\r\n\r\n{\"fault_message\":\"nope\"}",
        )
        .await;
        let (status, body) = request(
            &dir.path().join("api.sock"),
            "PUT",
            "/actions",
            Some(br#"{"action_type":"InstanceStart"}"#),
        )
        .await
        .expect("request");
        assert_eq!(status, 400);
        assert_eq!(body, br#"{"fault_message":"nope"}"#);
        let req = String::from_utf8(srv.await.expect("server")).expect("utf8");
        assert!(req.starts_with("PUT /actions HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Content-Length: 31\r\n"), "{req}");
        assert!(
            req.ends_with("\r\n\r\n{\"action_type\":\"InstanceStart\"}"),
            "{req}"
        );
    }

    #[tokio::test]
    async fn no_content_and_chunked_answers() {
        let dir = tempfile::tempdir().expect("tmp");
        let _srv = serve_once(dir.path(), b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let r = request(&dir.path().join("api.sock"), "PUT", "/x", None).await;
        assert_eq!(r.expect("204"), (204, Vec::new()));
        let dir = tempfile::tempdir().expect("tmp");
        let _srv = serve_once(
            dir.path(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .await;
        let r = request(&dir.path().join("api.sock"), "GET", "/", None).await;
        assert_eq!(r.expect("chunked"), (200, b"abcde".to_vec()));
        let dir = tempfile::tempdir().expect("tmp");
        let _srv = serve_once(dir.path(), b"garbage\r\n\r\n").await;
        let r = request(&dir.path().join("api.sock"), "GET", "/", None).await;
        assert!(r.expect_err("not HTTP").contains("not an HTTP status line"));
    }
}
