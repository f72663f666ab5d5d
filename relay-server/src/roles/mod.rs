//! What each role does with its connection: a binary claims a server-id and routes envelopes
//! to phones (`binary`), a phone registers and sends its frames to the binary (`phone`).

pub mod binary;
pub mod phone;
