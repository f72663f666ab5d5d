//! The forwarding splice and the link header over real loopback sockets (§11): a client
//! connects to node A, A sends the link header and the request to B's cluster listener, B
//! verifies the header, then bytes flow both ways until both sides end.
//!
//! Both copy paths are driven: `splice_tcp` (splice(2) through a pipe, TCP on both sides)
//! and `splice_io` (a TLS client stands on the other side of a duplex stream).

use std::net::SocketAddr;
use std::time::Duration;

use relay_server::cluster::forward::{self, Spliced};
use relay_server::cluster::link::{self, LinkError};
use relay_server::cluster::secret::ClusterSecret;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

const REQUEST: &[u8] = b"GET /v1/client HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n\r\n";
const DEADLINE: Duration = Duration::from_secs(20);

fn secret() -> ClusterSecret {
    ClusterSecret::from_bytes(&[7u8; 32]).unwrap()
}

/// Deterministic bytes, different per stream.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A listener whose accepted sockets get small kernel buffers (`buf` bytes), so that
/// back-pressure shows after little data.
fn listener(buf: Option<u32>) -> TcpListener {
    let s = TcpSocket::new_v4().unwrap();
    if let Some(b) = buf {
        s.set_recv_buffer_size(b).unwrap();
        s.set_send_buffer_size(b).unwrap();
    }
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    s.listen(64).unwrap()
}

async fn dial(addr: SocketAddr, buf: Option<u32>) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    if let Some(b) = buf {
        s.set_recv_buffer_size(b).unwrap();
        s.set_send_buffer_size(b).unwrap();
    }
    s.connect(addr).await.unwrap()
}

struct Rig {
    client: TcpStream,
    /// B's end, after it verified the header and read the request.
    b: TcpStream,
    splice: JoinHandle<std::io::Result<Spliced>>,
}

/// Client → A (plain TCP) → B's cluster listener, with the splice running on A.
async fn rig(buf: Option<u32>) -> Rig {
    let a_public = listener(buf);
    let b_cluster = listener(buf);
    let client = dial(a_public.local_addr().unwrap(), buf).await;
    let (client_side, client_addr) = a_public.accept().await.unwrap();
    // Dialled like forward::connect does, with the rig's buffer sizes (tested below).
    let peer = dial(b_cluster.local_addr().unwrap(), buf).await;
    peer.set_nodelay(true).unwrap();
    let mut initial = link::encode(
        &secret(),
        client_addr,
        a_public.local_addr().unwrap(),
        link::unix_ms_now(),
    );
    initial.extend_from_slice(REQUEST);
    let splice =
        tokio::spawn(async move { forward::splice_tcp(client_side, peer, &initial).await });
    let (mut b, _) = b_cluster.accept().await.unwrap();
    let addrs = link::read_header(&mut b, &secret(), link::HEADER_DEADLINE)
        .await
        .unwrap();
    assert_eq!(
        addrs.source,
        client.local_addr().unwrap(),
        "B learns the client's address"
    );
    let mut req = vec![0u8; REQUEST.len()];
    b.read_exact(&mut req).await.unwrap();
    assert_eq!(req, REQUEST, "the request arrives exactly as sent");
    Rig { client, b, splice }
}

async fn exchange<C, B>(client: C, b: B, up: usize, down: usize)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut br, mut bw) = tokio::io::split(b);
    let to_b = pattern(up, 1);
    let to_c = pattern(down, 2);
    let (w1, w2) = (to_b.clone(), to_c.clone());
    let writers = tokio::spawn(async move {
        let a = async {
            cw.write_all(&w1).await.unwrap();
            cw.shutdown().await.unwrap();
        };
        let b = async {
            bw.write_all(&w2).await.unwrap();
            bw.shutdown().await.unwrap();
        };
        tokio::join!(a, b);
    });
    let (got_b, got_c) = tokio::join!(
        async {
            let mut v = Vec::new();
            br.read_to_end(&mut v).await.unwrap();
            v
        },
        async {
            let mut v = Vec::new();
            cr.read_to_end(&mut v).await.unwrap();
            v
        }
    );
    writers.await.unwrap();
    assert!(
        got_b == to_b,
        "client → holder: {} of {} bytes, in order",
        got_b.len(),
        to_b.len()
    );
    assert!(
        got_c == to_c,
        "holder → client: {} of {} bytes, in order",
        got_c.len(),
        to_c.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_flow_both_ways_in_order_and_the_splice_ends_when_both_sides_have() {
    tokio::time::timeout(DEADLINE, async {
        let r = rig(None).await;
        exchange(r.client, r.b, 3 << 20, 5 << 20).await;
        let n = r.splice.await.unwrap().unwrap();
        assert_eq!(n.to_client, 5 << 20);
        assert!(n.to_peer > 3 << 20, "header and request counted too");
    })
    .await
    .expect("within the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transfer_arrives_whole() {
    tokio::time::timeout(DEADLINE, async {
        let r = rig(None).await;
        exchange(r.client, r.b, 64 << 20, 1).await;
        assert_eq!(r.splice.await.unwrap().unwrap().to_client, 1);
    })
    .await
    .expect("within the deadline");
}

/// Writes until a write makes no progress for `stall`, returns how much got in.
async fn write_until_stalled(w: &mut TcpStream, stall: Duration) -> usize {
    let chunk = vec![0x5a; 64 * 1024];
    let mut total = 0;
    loop {
        match tokio::time::timeout(stall, w.write(&chunk)).await {
            Ok(Ok(n)) => total += n,
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => return total,
        }
        assert!(
            total < 256 << 20,
            "no back-pressure: {total} bytes accepted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_stops_reading_stalls_the_client_instead_of_filling_memory() {
    tokio::time::timeout(DEADLINE, async {
        let mut r = rig(Some(64 * 1024)).await;
        let accepted = write_until_stalled(&mut r.client, Duration::from_millis(500)).await;
        // Only kernel buffers hold the bytes: six sockets' at 64 KiB asked (the kernel
        // doubles it) and one 64 KiB pipe. No queue of ours grows.
        let bound = 2 << 20;
        assert!(
            accepted < bound,
            "{accepted} bytes accepted by a non-reading path (bound {bound})"
        );
        // The same holds the other way.
        let back = write_until_stalled(&mut r.b, Duration::from_millis(500)).await;
        assert!(
            back < bound,
            "{back} bytes accepted by a non-reading path (bound {bound})"
        );
        // Once the holder reads again, everything arrives.
        let (mut cr, mut cw) = r.client.into_split();
        let (mut br, mut bw) = r.b.into_split();
        cw.shutdown().await.unwrap();
        bw.shutdown().await.unwrap();
        let (to_b, to_c) = tokio::join!(
            async {
                let mut v = Vec::new();
                br.read_to_end(&mut v).await.unwrap();
                v.len()
            },
            async {
                let mut v = Vec::new();
                cr.read_to_end(&mut v).await.unwrap();
                v.len()
            }
        );
        assert_eq!((to_b, to_c), (accepted, back));
        r.splice.await.unwrap().unwrap();
    })
    .await
    .expect("within the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_half_close_reaches_the_holder_which_can_still_answer() {
    tokio::time::timeout(DEADLINE, async {
        let mut r = rig(None).await;
        r.client.write_all(b"last words").await.unwrap();
        r.client.shutdown().await.unwrap();
        let mut got = Vec::new();
        r.b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
        r.b.write_all(b"reply after EOF").await.unwrap();
        drop(r.b);
        let mut back = Vec::new();
        r.client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"reply after EOF");
        r.splice.await.unwrap().unwrap();
    })
    .await
    .expect("within the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_closing_first_ends_the_client_connection() {
    tokio::time::timeout(DEADLINE, async {
        let mut r = rig(None).await;
        r.b.write_all(b"bye").await.unwrap();
        drop(r.b);
        let mut back = Vec::new();
        r.client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"bye");
        drop(r.client);
        r.splice.await.unwrap().unwrap();
    })
    .await
    .expect("within the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_on_one_side_ends_both() {
    tokio::time::timeout(DEADLINE, async {
        let mut r = rig(None).await;
        r.client.write_all(&[1u8; 1000]).await.unwrap();
        // Closing with unread bytes makes the kernel send RST.
        tokio::time::sleep(Duration::from_millis(50)).await;
        #[allow(deprecated)] // zero linger closes at once (RST): the point of this test
        r.b.set_linger(Some(Duration::ZERO)).unwrap();
        drop(r.b);
        let mut sink = Vec::new();
        let _ = r.client.read_to_end(&mut sink).await;
        // The splice ends (with the error) rather than hanging on the live side.
        let _ = r.splice.await.unwrap();
    })
    .await
    .expect("within the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_goes_through_the_bounded_copy() {
    tokio::time::timeout(DEADLINE, async {
        let b_cluster = listener(None);
        let peer = forward::connect(&b_cluster.local_addr().unwrap().to_string(), DEADLINE)
            .await
            .unwrap();
        // The decrypted side of a TLS stream is just a byte stream to the splice.
        let (client, client_side) = tokio::io::duplex(8 * 1024);
        let mut initial = link::encode(
            &secret(),
            "192.0.2.1:5000".parse().unwrap(),
            "192.0.2.2:443".parse().unwrap(),
            link::unix_ms_now(),
        );
        initial.extend_from_slice(REQUEST);
        let splice =
            tokio::spawn(async move { forward::splice_io(client_side, peer, &initial).await });
        let (mut b, _) = b_cluster.accept().await.unwrap();
        let addrs = link::read_header(&mut b, &secret(), link::HEADER_DEADLINE)
            .await
            .unwrap();
        assert_eq!(addrs.source, "192.0.2.1:5000".parse().unwrap());
        let mut req = vec![0u8; REQUEST.len()];
        b.read_exact(&mut req).await.unwrap();
        assert_eq!(req, REQUEST);
        exchange(client, b, 2 << 20, 2 << 20).await;
        assert_eq!(splice.await.unwrap().unwrap().to_client, 2 << 20);
    })
    .await
    .expect("within the deadline");
}

#[tokio::test]
async fn a_cluster_listener_connection_without_a_valid_header_gets_no_bytes() {
    let b_cluster = listener(None);
    let addr = b_cluster.local_addr().unwrap();
    let other = ClusterSecret::from_bytes(&[9u8; 32]).unwrap();
    for (bytes, want) in [
        (REQUEST.to_vec(), LinkError::NotProxyV2),
        (
            link::encode(&other, addr, addr, link::unix_ms_now()),
            LinkError::BadMac,
        ),
    ] {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&bytes).await.unwrap();
        let (mut b, _) = b_cluster.accept().await.unwrap();
        let r = link::read_header(&mut b, &secret(), link::HEADER_DEADLINE).await;
        assert_eq!(r, Err(want));
        // What the listener does with a refusal: drop the connection, writing nothing.
        drop(b);
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got).await;
        assert!(
            got.is_empty(),
            "{} bytes written to an unauthenticated peer",
            got.len()
        );
    }
}
