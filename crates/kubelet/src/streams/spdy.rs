//! Just enough of a SPDY/3.1 client (the framing Kubernetes' streaming servers speak, via Go's
//! spdystream) to drive a CRI exec/attach session: SYN_STREAM with a header block, data frames with
//! FIN, PING answered, SYN_REPLY/SETTINGS/WINDOW_UPDATE read and set aside, RST_STREAM and GOAWAY seen.
//!
//! Header blocks are zlib streams primed with SPDY/3's dictionary. Ours are written as stored
//! (uncompressed) deflate blocks, each ended by a sync flush's empty stored block as zlib's
//! `Z_SYNC_FLUSH` writes it — valid zlib that any reader inflates — so no compressor is needed; the
//! stream header names the dictionary by its Adler-32, which the reader checks. The server's header
//! blocks are not needed (a SYN_REPLY only acknowledges), so nothing here inflates.

use tokio::io::{AsyncRead, AsyncReadExt};

const VERSION: u16 = 3;
pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const SETTINGS: u16 = 4;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const FLAG_FIN: u8 = 0x01;
/// Adler-32 of SPDY/3's header dictionary, as a zlib stream names it (`FDICT`).
const DICTIONARY_ID: [u8; 4] = [0xe3, 0xc6, 0xa7, 0xc2];
/// Largest frame payload accepted.
const MAX_FRAME: usize = 16 << 20;

/// One frame read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        fin: bool,
        data: Vec<u8>,
    },
    Control {
        kind: u16,
        flags: u8,
        data: Vec<u8>,
    },
}

/// Writes frames for one session (the header-block zlib stream spans the session).
#[derive(Debug, Default)]
pub struct Writer {
    zlib_started: bool,
}

impl Writer {
    /// A header block: the pairs, as one stored deflate block of the session's zlib stream.
    fn header_block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.to_ascii_lowercase().as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 16);
        if !self.zlib_started {
            self.zlib_started = true;
            // CMF 0x78 (deflate, 32K window), FLG 0xf9 (FDICT; header check divisible by 31).
            out.extend_from_slice(&[0x78, 0xf9]);
            out.extend_from_slice(&DICTIONARY_ID);
        }
        for chunk in raw.chunks(0xffff) {
            // BFINAL=0, BTYPE=00 (stored), then LEN and its complement, little-endian.
            out.push(0x00);
            let n = chunk.len() as u16;
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&(!n).to_le_bytes());
            out.extend_from_slice(chunk);
        }
        // A sync flush's empty stored block: it makes the reader hand the block over without waiting
        // for input that belongs to the next frame.
        out.extend_from_slice(&[0x00, 0x00, 0x00, 0xff, 0xff]);
        out
    }

    fn control(kind: u16, flags: u8, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + data.len());
        out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.push(flags);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(data);
        out
    }

    /// SYN_STREAM opening `stream` with `headers`.
    pub fn syn_stream(&mut self, stream: u32, headers: &[(&str, &str)], fin: bool) -> Vec<u8> {
        let mut data = Vec::new();
        data.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        data.extend_from_slice(&0u32.to_be_bytes());
        data.extend_from_slice(&[0, 0]);
        data.extend(self.header_block(headers));
        Self::control(SYN_STREAM, if fin { FLAG_FIN } else { 0 }, &data)
    }

    /// A data frame (an empty one with `fin` half-closes the stream).
    pub fn data(stream: u32, data: &[u8], fin: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + data.len());
        out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        out.push(if fin { FLAG_FIN } else { 0 });
        out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(data);
        out
    }

    /// The answer to a server's PING (same payload).
    pub fn ping(payload: &[u8]) -> Vec<u8> {
        Self::control(PING, 0, payload)
    }
}

/// Reads the next frame.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Frame> {
    let mut h = [0u8; 8];
    r.read_exact(&mut h).await?;
    let flags = h[4];
    let len = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other("SPDY frame too large"));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).await?;
    if h[0] & 0x80 != 0 {
        let kind = u16::from_be_bytes([h[2], h[3]]);
        Ok(Frame::Control { kind, flags, data })
    } else {
        let stream = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) & 0x7fff_ffff;
        Ok(Frame::Data {
            stream,
            fin: flags & FLAG_FIN != 0,
            data,
        })
    }
}

/// The stream a control frame is about (SYN_REPLY, RST_STREAM), if any.
pub fn control_stream(data: &[u8]) -> Option<u32> {
    data.get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_header_block_names_the_dictionary_then_stored_blocks() {
        let mut w = Writer::default();
        let f = w.syn_stream(1, &[("streamType", "error")], false);
        // Control frame, version 3, SYN_STREAM, no flags.
        assert_eq!(&f[..4], &[0x80, 0x03, 0x00, 0x01]);
        assert_eq!(
            u32::from_be_bytes([0, f[5], f[6], f[7]]) as usize,
            f.len() - 8
        );
        assert_eq!(&f[18..24], &[0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2]);
        assert_eq!((0x78u32 << 8 | 0xf9) % 31, 0);
        // A stored block holding one pair, the name lowercased.
        assert_eq!(f[24], 0);
        let n = u16::from_le_bytes([f[25], f[26]]) as usize;
        assert_eq!(u16::from_le_bytes([f[27], f[28]]), !(n as u16));
        assert_eq!(&f[29..33], &1u32.to_be_bytes());
        assert!(f[29..].windows(10).any(|x| x == b"streamtype"));
        // The next block continues the same zlib stream: no second header.
        let g = w.syn_stream(3, &[("streamType", "stdout")], false);
        assert_eq!(g[18], 0);
        assert_eq!(Writer::data(5, b"", true), [0, 0, 0, 5, 1, 0, 0, 0]);
    }
}
