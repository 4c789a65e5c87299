//! The server side of a WebSocket (RFC 6455) as the kubelet API needs it: the handshake's accept key,
//! reading the client's (masked) frames with continuations joined, and writing unmasked frames.

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// The largest message accepted from a client.
const MAX_MESSAGE: usize = 16 << 20;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.trim().as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// One message: its opcode and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub opcode: u8,
    pub data: Vec<u8>,
}

/// Reads a client's messages; fragments are joined across control frames that arrive between them.
#[derive(Debug, Default)]
pub struct Reader {
    data: Vec<u8>,
    opcode: Option<u8>,
}

impl Reader {
    /// The next message (a control frame comes back as it arrives, between fragments too).
    pub async fn next<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> std::io::Result<Message> {
        loop {
            let mut h = [0u8; 2];
            r.read_exact(&mut h).await?;
            let fin = h[0] & 0x80 != 0;
            let opcode = h[0] & 0x0f;
            let masked = h[1] & 0x80 != 0;
            let len = match h[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    r.read_exact(&mut b).await?;
                    u16::from_be_bytes(b) as usize
                }
                127 => {
                    let mut b = [0u8; 8];
                    r.read_exact(&mut b).await?;
                    usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX)
                }
                n => n as usize,
            };
            if len > MAX_MESSAGE || self.data.len() + len > MAX_MESSAGE {
                return Err(std::io::Error::other("websocket message too large"));
            }
            let mut mask = [0u8; 4];
            if masked {
                r.read_exact(&mut mask).await?;
            }
            let mut payload = vec![0u8; len];
            r.read_exact(&mut payload).await?;
            if masked {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= mask[i % 4];
                }
            }
            if opcode >= 0x8 {
                return Ok(Message {
                    opcode,
                    data: payload,
                });
            }
            if opcode != 0 {
                self.opcode = Some(opcode);
            }
            self.data.extend_from_slice(&payload);
            if fin {
                return Ok(Message {
                    opcode: self.opcode.take().unwrap_or(BINARY),
                    data: std::mem::take(&mut self.data),
                });
            }
        }
    }
}

/// Encodes one unmasked frame.
pub fn frame(opcode: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 10);
    out.push(0x80 | opcode);
    match data.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(data);
    out
}

/// Writes one unmasked frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    opcode: u8,
    data: &[u8],
) -> std::io::Result<()> {
    w.write_all(&frame(opcode, data)).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[tokio::test]
    async fn masked_fragments_are_joined() {
        let mask = [1u8, 2, 3, 4];
        let enc = |fin: bool, op: u8, d: &[u8]| {
            let mut f = vec![if fin { 0x80 } else { 0 } | op, 0x80 | d.len() as u8];
            f.extend_from_slice(&mask);
            f.extend(d.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            f
        };
        let mut wire = enc(false, BINARY, b"\x00hel");
        wire.extend(enc(true, PING, b"p"));
        wire.extend(enc(true, 0, b"lo"));
        let mut r = &wire[..];
        let mut reader = Reader::default();
        assert_eq!(
            reader.next(&mut r).await.unwrap(),
            Message {
                opcode: PING,
                data: b"p".to_vec()
            }
        );
        assert_eq!(
            reader.next(&mut r).await.unwrap(),
            Message {
                opcode: BINARY,
                data: b"\x00hello".to_vec()
            }
        );
        assert_eq!(frame(BINARY, &[7u8; 200])[..4], [0x82, 126, 0, 200]);
    }
}
