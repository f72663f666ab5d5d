//! Heap bytes one idle upgraded TLS connection keeps on the relay's side: rustls' connection
//! state and its receive buffer, in the relay's own split (docs/performance.md, "TLS").
//!
//! A counting allocator wraps the system one; 200 connections are handshaken over loopback
//! (after 20 to warm up), each gets a few bytes of application data, is split the way the
//! relay splits it, and is kept; dropping the kept server halves tells what they held.
//!
//! ```sh
//! cargo run --release -p relay-server --example tls_conn_mem
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Read;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use relay_server::listen::{split, tls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - layout.size() as isize, Ordering::Relaxed);
        System.realloc(ptr, layout, new)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Lets rustls shrink its receive buffer without reading anything.
struct NothingYet;

impl Read for NothingYet {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    const WARMUP: usize = 20;
    const N: usize = 200;
    let cert = relay_testkit::tls::test_certificate(&["127.0.0.1"]);
    let key = tls::certified(vec![cert.der.clone()], cert.key_der()).expect("test key");
    let config = tls::server_config(Arc::new(tls::CertResolver::fixed(key)), &[tls::ALPN_HTTP1]);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let connector = tokio_rustls::TlsConnector::from(relay_testkit::tls::client_config(
        std::slice::from_ref(&cert.der),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    let mut state = 0isize;
    for i in 0..WARMUP + N {
        let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let (c, s) = tokio::join!(
            connector.connect(name, c.unwrap()),
            acceptor.accept(s.unwrap().0)
        );
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        c.write_all(b"hello").await.unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).await.unwrap();
        let (tcp, mut conn) = s.into_inner();
        let _ = conn.read_tls(&mut NothingYet);
        if i >= WARMUP {
            let before = LIVE.load(Ordering::Relaxed);
            let halves = split::split(tcp, conn);
            servers.push(halves);
            state += LIVE.load(Ordering::Relaxed) - before;
        }
        clients.push(c);
    }
    let before = LIVE.load(Ordering::Relaxed);
    drop(servers);
    let held = before - LIVE.load(Ordering::Relaxed);
    // rustls keeps a receive buffer of at least 4 KiB (READ_SIZE in its deframer) once a
    // connection has read anything; the rest is the connection's state and keys.
    println!(
        "per idle TLS connection: {} B on the heap; the split added {} B; \
         size_of::<ServerConnection>() = {} B",
        held / N as isize,
        state / N as isize,
        std::mem::size_of::<tokio_rustls::rustls::ServerConnection>()
    );
}
