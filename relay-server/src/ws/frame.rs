//! RFC 6455 framing shared by the reader and the writer: opcodes, the server's frame heads,
//! and the parsing and unmasking of a client's frame heads.
//!
//! Pure functions on byte slices: nothing here reads a socket or allocates.

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Longest client frame head: 2 bytes, 8 of extended length, 4 of mask key.
pub const MAX_HEAD: usize = 14;

/// A client frame's head (RFC 6455 §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub fin: bool,
    pub opcode: u8,
    pub mask: [u8; 4],
    /// Payload length.
    pub len: u64,
    /// Bytes of the head itself (6, 8 or 14).
    pub head_len: usize,
}

impl Head {
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// A head no server may accept (each closes the connection 1002).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("reserved bits set")]
    Reserved,
    #[error("reserved opcode")]
    Opcode,
    #[error("client frame not masked")]
    Unmasked,
    #[error("control frame fragmented or longer than 125 bytes")]
    Control,
    #[error("64-bit length with the top bit set")]
    Length,
}

/// Parses the head at the start of `buf`: `Ok(None)` if `buf` does not hold all of it yet.
/// Checks everything a head alone can break: reserved bits (no extension is negotiated),
/// opcodes, the client mask (§5.1: a server closes on an unmasked frame), control frames.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(HeadError::Reserved);
    }
    let opcode = b0 & 0x0f;
    if !matches!(
        opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(HeadError::Opcode);
    }
    if b1 & 0x80 == 0 {
        return Err(HeadError::Unmasked);
    }
    let fin = b0 & 0x80 != 0;
    let short = b1 & 0x7f;
    let ext = match short {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    if opcode & 0x8 != 0 && (!fin || short > 125) {
        return Err(HeadError::Control);
    }
    let head_len = 2 + ext + 4;
    if buf.len() < head_len {
        return Ok(None);
    }
    let len = match short {
        126 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return Err(HeadError::Length);
            }
            len
        }
        n => u64::from(n),
    };
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[2 + ext..head_len]);
    Ok(Some(Head {
        fin,
        opcode,
        mask,
        len,
        head_len,
    }))
}

/// XORs `payload` with the mask key, `offset` bytes into the payload (for a payload unmasked
/// in pieces). Eight bytes at a time; the compiler vectorises the loop.
pub fn unmask(payload: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut key = [0u8; 8];
    for (i, k) in key.iter_mut().enumerate() {
        *k = mask[(offset + i) % 4];
    }
    let wide = u64::from_ne_bytes(key);
    let mut words = payload.chunks_exact_mut(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    for (b, k) in words.into_remainder().iter_mut().zip(key) {
        *b ^= k;
    }
}

/// An unmasked server frame head (RFC 6455 §5.2) with FIN set, for a payload of `len` bytes.
pub fn frame_head(opcode: u8, len: usize, out: &mut [u8]) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(fin: bool, opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        let len = payload.len();
        if len < 126 {
            f.push(0x80 | len as u8);
        } else if len < 65536 {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    #[test]
    fn heads_of_every_length_form_parse_and_need_all_their_bytes() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 300_000] {
            let payload = vec![7u8; len];
            let f = masked(true, OP_BINARY, &payload, [1, 2, 3, 4]);
            let head = parse_head(&f).unwrap().unwrap();
            assert_eq!(head.len, len as u64);
            assert_eq!(head.opcode, OP_BINARY);
            assert!(head.fin);
            assert_eq!(head.mask, [1, 2, 3, 4]);
            for cut in 0..head.head_len {
                assert_eq!(parse_head(&f[..cut]), Ok(None), "len {len} cut {cut}");
            }
            let mut body = f[head.head_len..].to_vec();
            unmask(&mut body, head.mask, 0);
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn heads_a_server_must_refuse() {
        let ok = masked(true, OP_TEXT, b"hi", [9, 9, 9, 9]);
        let mut rsv = ok.clone();
        rsv[0] |= 0x40;
        assert_eq!(parse_head(&rsv), Err(HeadError::Reserved));
        let mut op = ok.clone();
        op[0] = 0x83;
        assert_eq!(parse_head(&op), Err(HeadError::Opcode));
        let mut unmasked = ok.clone();
        unmasked[1] &= 0x7f;
        assert_eq!(parse_head(&unmasked), Err(HeadError::Unmasked));
        let frag_ping = masked(false, OP_PING, b"", [0; 4]);
        assert_eq!(parse_head(&frag_ping), Err(HeadError::Control));
        let long_ping = masked(true, OP_PING, &[0; 126], [0; 4]);
        assert_eq!(parse_head(&long_ping), Err(HeadError::Control));
        let mut huge = vec![0x82, 0xff];
        huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(parse_head(&huge), Err(HeadError::Length));
    }

    #[test]
    fn unmasking_in_pieces_equals_unmasking_whole() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut whole = data.clone();
        unmask(&mut whole, key, 0);
        for split in [0, 1, 3, 7, 8, 9, 500, 999] {
            let mut pieces = data.clone();
            let (a, b) = pieces.split_at_mut(split);
            unmask(a, key, 0);
            unmask(b, key, split);
            assert_eq!(pieces, whole, "split {split}");
        }
        for (i, (w, d)) in whole.iter().zip(&data).enumerate() {
            assert_eq!(*w, d ^ key[i % 4]);
        }
    }

    #[test]
    fn frame_heads_use_the_shortest_length_form() {
        let mut h = [0u8; 10];
        assert_eq!(frame_head(OP_TEXT, 125, &mut h), 2);
        assert_eq!(&h[..2], &[0x81, 125]);
        assert_eq!(frame_head(OP_TEXT, 126, &mut h), 4);
        assert_eq!(&h[..4], &[0x81, 126, 0, 126]);
        assert_eq!(frame_head(OP_CLOSE, 65535, &mut h), 4);
        assert_eq!(&h[..4], &[0x88, 126, 0xff, 0xff]);
        assert_eq!(frame_head(OP_TEXT, 65536, &mut h), 10);
        assert_eq!(&h[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }
}
