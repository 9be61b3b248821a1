//! Stream framings for TCP channels: how a byte stream is cut into packets and how packets are
//! written to one. Pure code (no sockets, no clock), so every framing is unit-tested and fuzzed.
//!
//! - `slip`: OSC 1.1. Each packet ends with END (0xC0); END and ESC (0xDB) inside are escaped as
//!   ESC 0xDC and ESC 0xDD. A leading END and empty frames (double ENDs) are accepted; we write a
//!   leading END too, which flushes whatever line noise came before (RFC 1055).
//! - `length`: OSC 1.0. A big-endian int32 size, then that many bytes.
//! - `auto` (servers): decided per connection from the first byte: END, `/` or `#` is SLIP
//!   (OSC packets start with `/` or `#bundle`, so an unescaped first frame is SLIP too), anything
//!   else a length prefix (whose first byte is 0 for any packet under 16 MiB).
//! - `lines` / `raw`: devices that do not speak OSC; text lines with a terminator, or chunks as read.
//!
//! Hand-written: the codec crates we looked at frame one way each and stop at the first error
//! without saying what the stream looks like, and mismatched framing is the interop bug operators
//! meet most, so the errors here name what the bytes look like and what the channel expects.

use serde::{Deserialize, Serialize};

const END: u8 = 0xC0;
const ESC: u8 = 0xDB;
const ESC_END: u8 = 0xDC;
const ESC_ESC: u8 = 0xDD;

/// `framing:` of a TCP channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    Slip,
    Length,
    Auto,
    Lines,
    Raw,
}

impl Framing {
    pub fn name(self) -> &'static str {
        match self {
            Framing::Slip => "slip",
            Framing::Length => "length",
            Framing::Auto => "auto",
            Framing::Lines => "lines",
            Framing::Raw => "raw",
        }
    }

    /// Whether frames are OSC packets (as opposed to text lines or raw chunks).
    pub fn is_osc(self) -> bool {
        matches!(self, Framing::Slip | Framing::Length | Framing::Auto)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error(
        "the stream does not parse as {expected} framing: it looks like {looks_like}; the channel \
         expects {expected}"
    )]
    Mismatch {
        expected: &'static str,
        looks_like: &'static str,
    },
    #[error("a frame of {size} bytes is larger than max_frame ({max} bytes)")]
    TooLarge { size: u64, max: usize },
    #[error("a line longer than max_frame ({max} bytes) has no terminator")]
    LineTooLong { max: usize },
    #[error("bad SLIP escape: 0xDB followed by {byte:#04X} (only 0xDC and 0xDD may follow it)")]
    BadEscape { byte: u8 },
}

/// Cuts one connection's byte stream into frames.
#[derive(Debug)]
pub struct Decoder {
    mode: Mode,
    max_frame: usize,
    terminator: Vec<u8>,
    /// SLIP / lines: how far the unconsumed input has been searched for the end of a frame, so a
    /// large frame arriving in many reads is scanned once.
    scanned: usize,
    /// SLIP frames with escapes are unescaped here.
    scratch: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Undecided,
    Slip,
    Length,
    Lines,
    Raw,
}

impl Decoder {
    pub fn new(framing: Framing, max_frame: usize, terminator: &[u8]) -> Self {
        let mode = match framing {
            Framing::Slip => Mode::Slip,
            Framing::Length => Mode::Length,
            Framing::Auto => Mode::Undecided,
            Framing::Lines => Mode::Lines,
            Framing::Raw => Mode::Raw,
        };
        Decoder {
            mode,
            max_frame,
            terminator: if terminator.is_empty() {
                b"\n".to_vec()
            } else {
                terminator.to_vec()
            },
            scanned: 0,
            scratch: Vec::new(),
        }
    }

    /// The framing in use: for `auto`, what the first byte decided (`None` before any byte).
    pub fn framing(&self) -> Option<Framing> {
        match self.mode {
            Mode::Undecided => None,
            Mode::Slip => Some(Framing::Slip),
            Mode::Length => Some(Framing::Length),
            Mode::Lines => Some(Framing::Lines),
            Mode::Raw => Some(Framing::Raw),
        }
    }

    /// For `auto`: decides the framing from the first byte of `input` (no-op once decided). Call
    /// before [`decode`](Self::decode) when replies sent while frames are routed must already use it.
    pub fn decide(&mut self, input: &[u8]) -> Option<Framing> {
        if self.mode == Mode::Undecided {
            match input.first() {
                None => return None,
                Some(&(END | b'/' | b'#')) => self.mode = Mode::Slip,
                Some(_) => self.mode = Mode::Length,
            }
        }
        self.framing()
    }

    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Takes every complete frame from `input`, calling `frame` for each, and returns how many
    /// bytes were consumed; the rest (the start of a frame) must be offered again with more bytes
    /// after it. An error means the stream cannot be followed any further: close the connection.
    pub fn decode(
        &mut self,
        input: &[u8],
        frame: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, FramingError> {
        if self.decide(input).is_none() {
            return Ok(0);
        }
        match self.mode {
            Mode::Length => self.length(input, frame),
            Mode::Slip => self.slip(input, frame),
            Mode::Lines => self.lines(input, frame),
            Mode::Raw => {
                for chunk in input.chunks(self.max_frame.max(1)) {
                    frame(chunk);
                }
                Ok(input.len())
            }
            Mode::Undecided => unreachable!("decided above"),
        }
    }

    fn length(
        &mut self,
        input: &[u8],
        frame: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, FramingError> {
        let mut at = 0;
        while input.len() - at >= 4 {
            let head = &input[at..at + 4];
            let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
            if size > self.max_frame {
                return Err(match head[0] {
                    END => FramingError::Mismatch {
                        expected: "length",
                        looks_like: "SLIP (first byte 0xC0)",
                    },
                    b'/' | b'#' => FramingError::Mismatch {
                        expected: "length",
                        looks_like:
                            "SLIP or bare OSC without a length prefix (first byte '/' or '#')",
                    },
                    _ => FramingError::TooLarge {
                        size: size as u64,
                        max: self.max_frame,
                    },
                });
            }
            if input.len() - at - 4 < size {
                break;
            }
            // An empty frame carries nothing; some senders use it as a keep-alive.
            if size > 0 {
                frame(&input[at + 4..at + 4 + size]);
            }
            at += 4 + size;
        }
        Ok(at)
    }

    fn slip(&mut self, input: &[u8], frame: &mut dyn FnMut(&[u8])) -> Result<usize, FramingError> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            let Some(offset) = rest[self.scanned..].iter().position(|&b| b == END) else {
                looks_length_prefixed(rest)?;
                self.scanned = rest.len();
                // Escaped, a frame takes at most twice its size.
                if rest.len() > self.max_frame.saturating_mul(2) {
                    return Err(FramingError::TooLarge {
                        size: rest.len() as u64,
                        max: self.max_frame,
                    });
                }
                return Ok(at);
            };
            let end = self.scanned + offset;
            self.scanned = 0;
            let escaped = &rest[..end];
            looks_length_prefixed(escaped)?;
            at += end + 1;
            if escaped.is_empty() {
                continue;
            }
            if !escaped.contains(&ESC) {
                if escaped.len() > self.max_frame {
                    return Err(FramingError::TooLarge {
                        size: escaped.len() as u64,
                        max: self.max_frame,
                    });
                }
                frame(escaped);
                continue;
            }
            self.scratch.clear();
            let mut bytes = escaped.iter();
            while let Some(&b) = bytes.next() {
                if b == ESC {
                    match bytes.next() {
                        Some(&ESC_END) => self.scratch.push(END),
                        Some(&ESC_ESC) => self.scratch.push(ESC),
                        Some(&other) => return Err(FramingError::BadEscape { byte: other }),
                        None => return Err(FramingError::BadEscape { byte: END }),
                    }
                } else {
                    self.scratch.push(b);
                }
            }
            if self.scratch.len() > self.max_frame {
                return Err(FramingError::TooLarge {
                    size: self.scratch.len() as u64,
                    max: self.max_frame,
                });
            }
            frame(&self.scratch);
        }
    }

    fn lines(&mut self, input: &[u8], frame: &mut dyn FnMut(&[u8])) -> Result<usize, FramingError> {
        let term = self.terminator.as_slice();
        let mut at = 0;
        loop {
            let rest = &input[at..];
            // Restart the search a terminator's length back: it may have been cut by a read.
            let from = self.scanned.saturating_sub(term.len() - 1);
            let Some(offset) = rest[from..].windows(term.len()).position(|w| w == term) else {
                self.scanned = rest.len();
                // The tail may be the start of a terminator that a later read completes.
                if rest.len() > self.max_frame + term.len() - 1 {
                    return Err(FramingError::LineTooLong {
                        max: self.max_frame,
                    });
                }
                return Ok(at);
            };
            let end = from + offset;
            self.scanned = 0;
            let mut line = &rest[..end];
            if term == b"\n" {
                line = line.strip_suffix(b"\r").unwrap_or(line);
            }
            if line.len() > self.max_frame {
                return Err(FramingError::LineTooLong {
                    max: self.max_frame,
                });
            }
            frame(line);
            at += end + term.len();
        }
    }
}

/// A length-prefixed OSC packet at the start of a SLIP frame: 0, three more size bytes, then `/`
/// or `#`. Checked on a frame's first five bytes once they are there, complete frame or not, so
/// the verdict does not depend on how reads split the stream.
fn looks_length_prefixed(frame: &[u8]) -> Result<(), FramingError> {
    if frame.len() >= 5 && frame[0] == 0 && (frame[4] == b'/' || frame[4] == b'#') {
        return Err(FramingError::Mismatch {
            expected: "slip",
            looks_like: "length-prefixed OSC (a 4-byte size, then '/' or '#')",
        });
    }
    Ok(())
}

/// Appends `packet` framed for the wire to `out`. `auto` (a connection that has not sent anything
/// yet) writes SLIP, the OSC 1.1 framing.
pub fn encode(framing: Framing, terminator: &[u8], packet: &[u8], out: &mut Vec<u8>) {
    match framing {
        Framing::Slip | Framing::Auto => {
            out.reserve(packet.len() + 2);
            out.push(END);
            for &b in packet {
                match b {
                    END => out.extend_from_slice(&[ESC, ESC_END]),
                    ESC => out.extend_from_slice(&[ESC, ESC_ESC]),
                    _ => out.push(b),
                }
            }
            out.push(END);
        }
        Framing::Length => {
            out.extend_from_slice(&(packet.len() as u32).to_be_bytes());
            out.extend_from_slice(packet);
        }
        Framing::Lines => {
            out.extend_from_slice(packet);
            out.extend_from_slice(if terminator.is_empty() {
                b"\n"
            } else {
                terminator
            });
        }
        Framing::Raw => out.extend_from_slice(packet),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(decoder: &mut Decoder, input: &[u8]) -> (Vec<Vec<u8>>, Result<usize, FramingError>) {
        let mut frames = Vec::new();
        let result = decoder.decode(input, &mut |f| frames.push(f.to_vec()));
        (frames, result)
    }

    /// Feeds `input` in pieces of `step` bytes the way a reader does: unconsumed bytes stay in front.
    fn stepwise(framing: Framing, input: &[u8], step: usize) -> Vec<Vec<u8>> {
        let mut decoder = Decoder::new(framing, 1 << 20, b"\n");
        let mut buffer = Vec::new();
        let mut frames = Vec::new();
        for piece in input.chunks(step) {
            buffer.extend_from_slice(piece);
            let used = decoder
                .decode(&buffer, &mut |f| frames.push(f.to_vec()))
                .unwrap();
            buffer.drain(..used);
        }
        assert!(buffer.is_empty(), "left over: {buffer:?}");
        frames
    }

    const PACKETS: &[&[u8]] = &[
        b"/a\0\0,i\0\0\0\0\0\x01",
        b"/esc\0\0\0\0,b\0\0\0\0\0\x04\xC0\xDB\xC0\xDB",
        b"#bundle\0\0\0\0\0\0\0\0\x01",
    ];

    #[test]
    fn every_framing_round_trips_in_any_read_size() {
        for framing in [Framing::Slip, Framing::Length] {
            let mut wire = Vec::new();
            for p in PACKETS {
                encode(framing, b"", p, &mut wire);
            }
            for step in [1, 2, 3, 7, 64, wire.len()] {
                let got = stepwise(framing, &wire, step);
                assert_eq!(got, PACKETS, "{framing:?} step {step}");
                // auto recognises both from the first byte.
                assert_eq!(stepwise(Framing::Auto, &wire, step), PACKETS);
            }
        }
    }

    #[test]
    fn slip_accepts_no_leading_end_and_double_ends() {
        let mut d = Decoder::new(Framing::Slip, 1024, b"");
        let (frames, used) = all(&mut d, b"/a\0\0,\0\0\0\xC0\xC0\xC0/b\0\0,\0\0\0\xC0");
        assert_eq!(used.unwrap(), 20);
        assert_eq!(
            frames,
            vec![b"/a\0\0,\0\0\0".to_vec(), b"/b\0\0,\0\0\0".to_vec()]
        );
        let mut auto = Decoder::new(Framing::Auto, 1024, b"");
        let (frames, _) = all(&mut auto, b"/a\0\0,\0\0\0\xC0");
        assert_eq!(frames.len(), 1);
        assert_eq!(auto.framing(), Some(Framing::Slip));
    }

    #[test]
    fn slip_sent_to_a_length_channel_is_named() {
        let mut wire = Vec::new();
        encode(Framing::Slip, b"", PACKETS[0], &mut wire);
        let mut d = Decoder::new(Framing::Length, 1 << 20, b"");
        let err = all(&mut d, &wire).1.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("looks like SLIP") && text.contains("expects length"),
            "{text}"
        );
    }

    #[test]
    fn length_prefix_sent_to_a_slip_channel_is_named() {
        let mut wire = Vec::new();
        encode(Framing::Length, b"", PACKETS[0], &mut wire);
        let mut d = Decoder::new(Framing::Slip, 1 << 20, b"");
        let text = all(&mut d, &wire).1.unwrap_err().to_string();
        assert!(
            text.contains("looks like length-prefixed OSC") && text.contains("expects slip"),
            "{text}"
        );
    }

    #[test]
    fn oversize_frames_are_refused_before_they_are_buffered() {
        let mut d = Decoder::new(Framing::Length, 100, b"");
        assert_eq!(
            all(&mut d, &[0, 0, 0, 101]).1,
            Err(FramingError::TooLarge {
                size: 101,
                max: 100
            })
        );
        let mut d = Decoder::new(Framing::Slip, 100, b"");
        assert!(matches!(
            all(&mut d, &[b'x'; 201]).1,
            Err(FramingError::TooLarge { .. })
        ));
        let mut d = Decoder::new(Framing::Lines, 10, b"\n");
        assert_eq!(
            all(&mut d, b"0123456789ab").1,
            Err(FramingError::LineTooLong { max: 10 })
        );
    }

    #[test]
    fn a_bad_slip_escape_is_an_error() {
        let mut d = Decoder::new(Framing::Slip, 100, b"");
        assert_eq!(
            all(&mut d, b"/a\xDB\x01\xC0").1,
            Err(FramingError::BadEscape { byte: 1 })
        );
    }

    #[test]
    fn lines_strip_the_terminator_and_a_carriage_return() {
        assert_eq!(
            stepwise(Framing::Lines, b"PLAY 1\r\nSTOP\n\n", 1),
            vec![b"PLAY 1".to_vec(), b"STOP".to_vec(), b"".to_vec()]
        );
        let mut d = Decoder::new(Framing::Lines, 100, b"\r\n\r\n");
        let mut buffer = b"a\r\n\r".to_vec();
        let (frames, used) = all(&mut d, &buffer);
        assert!(frames.is_empty());
        buffer.drain(..used.unwrap());
        buffer.extend_from_slice(b"\nb");
        let (frames, used) = all(&mut d, &buffer);
        assert_eq!(frames, vec![b"a".to_vec()]);
        assert_eq!(used.unwrap(), 5);
    }

    #[test]
    fn raw_passes_chunks_through() {
        let mut d = Decoder::new(Framing::Raw, 4, b"");
        let (frames, used) = all(&mut d, b"abcdefg");
        assert_eq!(used.unwrap(), 7);
        assert_eq!(frames, vec![b"abcd".to_vec(), b"efg".to_vec()]);
    }

    proptest::proptest! {
        /// The fuzz target's property on random streams (and on streams built of framing bytes).
        #[test]
        fn frames_do_not_depend_on_read_sizes(
            data in proptest::collection::vec(proptest::prop_oneof![
                proptest::num::u8::ANY,
                proptest::sample::select(vec![0u8, END, ESC, ESC_END, ESC_ESC, b'\r', b'\n', b'/']),
            ], 0..300)
        ) {
            crate::fuzzing::check_framing(&data);
        }
    }

    #[test]
    fn empty_length_frames_are_skipped() {
        let mut d = Decoder::new(Framing::Length, 100, b"");
        let (frames, used) = all(&mut d, &[0, 0, 0, 0, 0, 0, 0, 1, b'x', 0, 0]);
        assert_eq!(frames, vec![b"x".to_vec()]);
        assert_eq!(used.unwrap(), 9);
    }
}
