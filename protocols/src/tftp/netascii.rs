//! Netascii (RFC 764 as used by RFC 1350): on the wire a line ends in CR LF and a bare
//! CR is sent as CR NUL. The server translates a Unix file on the way out; the client
//! and the upload path translate back, across block boundaries.
//!
//! This is what tftp-hpa does too: a file that already holds CR LF goes out as
//! CR NUL CR LF and comes back byte-identical.

/// Translates local text to netascii.
pub fn encode(local: &[u8]) -> Vec<u8> {
    let extra = local.iter().filter(|&&b| b == b'\n' || b == b'\r').count();
    let mut out = Vec::with_capacity(local.len() + extra);
    for &b in local {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            b => out.push(b),
        }
    }
    out
}

/// Translates netascii back to local text, one block at a time (a CR may end one
/// block and its LF or NUL start the next).
#[derive(Debug, Default, Clone)]
pub struct Decoder {
    pending_cr: bool,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the local form of `wire` to `out`.
    pub fn decode(&mut self, wire: &[u8], out: &mut Vec<u8>) {
        for &b in wire {
            if self.pending_cr {
                self.pending_cr = false;
                match b {
                    b'\n' => out.push(b'\n'),
                    b'\0' => out.push(b'\r'),
                    b'\r' => {
                        // Malformed (CR CR): keep the first, the second may pair up.
                        out.push(b'\r');
                        self.pending_cr = true;
                    }
                    b => {
                        out.push(b'\r');
                        out.push(b);
                    }
                }
            } else if b == b'\r' {
                self.pending_cr = true;
            } else {
                out.push(b);
            }
        }
    }

    /// Flushes a CR left dangling at the end of the stream.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            out.push(b'\r');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn translates_line_ends() {
        assert_eq!(encode(b"a\nb\rc\r\n"), b"a\r\nb\r\0c\r\0\r\n");
        let mut d = Decoder::new();
        let mut out = Vec::new();
        d.decode(b"a\r", &mut out);
        d.decode(b"\nb\r", &mut out);
        d.decode(b"\0c", &mut out);
        d.finish(&mut out);
        assert_eq!(out, b"a\nb\rc");
    }

    proptest! {
        #[test]
        fn roundtrips_across_any_block_split(data in prop::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(0u8), any::<u8>()], 0..300), split in 1usize..20) {
            let wire = encode(&data);
            let mut d = Decoder::new();
            let mut out = Vec::new();
            for chunk in wire.chunks(split) {
                d.decode(chunk, &mut out);
            }
            d.finish(&mut out);
            prop_assert_eq!(out, data);
        }
    }
}
