//! Two links joined back to back in memory: streams, flow control, close
//! and reset semantics.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::*;

/// Pumps `a`'s outgoing frames into `b` (decoding them as the real reader
/// does) until the queue closes.
fn pump(from: Arc<Link>, mut rx: mpsc::UnboundedReceiver<Outgoing>, to: Arc<Link>) {
    tokio::spawn(async move {
        let mut d = Decoder::new();
        while let Some(o) = rx.recv().await {
            if !from.current(o.epoch) {
                continue;
            }
            d.feed(&o.bytes, |f| {
                to.deliver(f);
            });
        }
    });
}

fn pair() -> (Arc<Link>, Arc<Link>) {
    let (a, arx) = Link::new();
    let (b, brx) = Link::new();
    pump(a.clone(), arx, b.clone());
    pump(b.clone(), brx, a.clone());
    (a, b)
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out")
}

#[tokio::test]
async fn bytes_flow_both_ways_with_half_close() {
    let (a, b) = pair();
    let mut sa = a.add_stream(1, false, 8).expect("a");
    let mut sb = b.add_stream(1, false, 8).expect("b");
    bounded(async {
        sa.write_all(b"ping").await.expect("write");
        sa.shutdown().await.expect("fin");
        let mut got = Vec::new();
        sb.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"ping");
        sb.write_all(b"pong")
            .await
            .expect("write back after the peer's fin");
        sb.shutdown().await.expect("fin");
        let mut got = Vec::new();
        sa.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"pong");
        assert!(sa.write_all(b"x").await.is_err(), "write after own fin");
    })
    .await;
}

#[tokio::test]
async fn a_slow_reader_bounds_the_sender_and_other_streams_still_flow() {
    let (a, b) = pair();
    let mut big_a = a.add_stream(1, false, 8).expect("a1");
    let mut big_b = b.add_stream(1, false, 8).expect("b1");
    let mut small_a = a.add_stream(2, false, 8).expect("a2");
    let mut small_b = b.add_stream(2, false, 8).expect("b2");
    let total = 3 * WINDOW + 12345;
    let writer = tokio::spawn(async move {
        let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        big_a.write_all(&data).await.expect("write big");
        big_a.shutdown().await.expect("fin");
        big_a
    });
    // Nobody reads stream 1 yet: the writer stalls at one window.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!writer.is_finished(), "the sender ignored the window");
    // Stream 2 is not blocked behind stream 1.
    bounded(async {
        small_a.write_all(b"hello").await.expect("small write");
        let mut buf = [0u8; 5];
        small_b.read_exact(&mut buf).await.expect("small read");
        assert_eq!(&buf, b"hello");
    })
    .await;
    let got = bounded(async {
        let mut got = Vec::new();
        big_b.read_to_end(&mut got).await.expect("read big");
        got
    })
    .await;
    assert_eq!(got.len(), total);
    assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    bounded(writer).await.expect("writer");
}

#[tokio::test]
async fn dropping_a_stream_closes_it_for_the_peer() {
    let (a, b) = pair();
    let sa = a.add_stream(9, false, 8).expect("a");
    let mut sb = b.add_stream(9, false, 8).expect("b");
    drop(sa);
    bounded(async {
        let mut got = Vec::new();
        sb.read_to_end(&mut got).await.expect("eof, not an error");
        assert!(got.is_empty());
        // Writes to a closed stream fail instead of vanishing.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(sb.write_all(b"late").await.is_err());
    })
    .await;
    assert_eq!(a.streams(), 0);
}

#[tokio::test]
async fn a_reset_fails_old_streams_and_drops_their_queued_frames() {
    let (link, mut rx) = Link::new();
    let mut s = link.add_stream(3, true, 8).expect("stream");
    s.write_all(b"old session").await.expect("queued");
    assert_eq!(link.reset(true), 1);
    let err = s.read(&mut [0u8; 8]).await.expect_err("reset stream");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(s.write_all(b"more").await.is_err());
    drop(s);
    // What a writer would put on the wire: only the new epoch's Close.
    let mut written = Vec::new();
    while let Ok(o) = rx.try_recv() {
        if link.current(o.epoch) {
            Decoder::new().feed(&o.bytes, |f| written.push(f));
        }
    }
    assert_eq!(written, vec![Frame::new(Kind::Close, 3, vec![])]);
    // The id may be used again in the new session.
    assert!(link.add_stream(3, true, 8).is_some());
}

#[tokio::test]
async fn stream_limits_and_dead_links() {
    let (link, _rx) = Link::new();
    let _a = link.add_stream(1, false, 2).expect("1");
    assert!(link.add_stream(1, false, 2).is_none(), "duplicate id");
    let _b = link.add_stream(2, false, 2).expect("2");
    assert!(link.add_stream(3, false, 2).is_none(), "over the limit");
    link.kill("socket closed");
    assert_eq!(link.dead().as_deref(), Some("socket closed"));
    assert!(link.add_stream(4, false, 8).is_none());
}

#[test]
fn hello_payloads_parse() {
    let p = hello_payload(0xdead_beef_0123_4567);
    assert_eq!(
        parse_hello(&p),
        Some((MUX_VERSION, 0xdead_beef_0123_4567, &[][..]))
    );
    assert_eq!(parse_hello(&p[..7]), None);
    assert_ne!(random_u64(), random_u64());
}
