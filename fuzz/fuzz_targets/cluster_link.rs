//! The cluster listener's header check (§11) on arbitrary bytes: never panics, never reads
//! past what it says it took, and accepts only what verifies. Headers built by `encode`
//! from fuzzer-chosen addresses and times round-trip exactly.
#![no_main]
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use relay_server::cluster::link::{self, LinkError, MAX_SKEW};
use relay_server::cluster::secret::ClusterSecret;

const NOW: u64 = 1_750_000_000_000;

fuzz_target!(|data: &[u8]| {
    let key = ClusterSecret::from_bytes(&[0x42; 32]).unwrap();
    // 1. Arbitrary bytes: refused (no valid MAC without the key) or, if the fuzzer found
    //    a valid header, consistent.
    match link::parse(&key, data, NOW) {
        Ok((_, used)) => assert!(used <= data.len()),
        Err(_) => {}
    }
    // 2. A real header from fuzzer-chosen fields, then mutated by the rest of the input.
    if data.len() >= 45 {
        let v6 = data[0] & 1 == 1;
        let ip = |b: &[u8]| -> IpAddr {
            if v6 {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[..16]);
                IpAddr::V6(Ipv6Addr::from(a))
            } else {
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
        };
        let src = SocketAddr::new(ip(&data[1..17]), u16::from_be_bytes([data[33], data[34]]));
        let dst = SocketAddr::new(ip(&data[17..33]), u16::from_be_bytes([data[35], data[36]]));
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&data[37..45]);
        let ts = u64::from_be_bytes(ts);
        let header = link::encode(&key, src, dst, ts);
        let fresh = NOW.abs_diff(ts) <= MAX_SKEW.as_millis() as u64;
        match link::parse(&key, &header, NOW) {
            Ok((addrs, used)) => {
                assert!(fresh);
                assert_eq!(used, header.len());
                assert_eq!((addrs.source, addrs.destination), (src, dst));
            }
            Err(e) => assert!(!fresh && e == LinkError::Stale, "{e:?}"),
        }
        // Any single changed byte is refused: the MAC covers command, family, addresses and
        // time, and every other byte is structure whose change breaks the parse.
        let rest = &data[45..];
        if let Some((&at, &x)) = rest.first().zip(rest.get(1)) {
            let mut t = header.clone();
            let i = usize::from(at) % t.len();
            t[i] ^= x | 1;
            assert!(link::parse(&key, &t, NOW).is_err(), "flipped byte {i} accepted");
        }
    }
});
