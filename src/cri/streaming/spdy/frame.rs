//! SPDY/3 frame layout: parsing from a growing byte buffer and serialisation.
//!
//! Header blocks stay compressed here; decompressing them needs the per-direction
//! zlib context a session owns (see `headers`), so a frame can be parsed without it.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const SPDY_VERSION: u16 = 3;

/// The control/data frame header is 8 bytes in both kinds.
pub const FRAME_HEADER_LEN: usize = 8;
/// The length field has 24 bits; a data payload cannot be larger.
pub const MAX_DATA_PAYLOAD: usize = (1 << 24) - 1;
/// Control frames carry at most a compressed header block; a compressed block larger
/// than the decompressed cap could only be an attack, so the same cap bounds them.
pub const MAX_CONTROL_PAYLOAD: usize = super::headers::MAX_HEADER_BLOCK + 16;
pub const MAX_STREAM_ID: u32 = 0x7fff_ffff;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
pub const FLAG_SETTINGS_CLEAR_PERSISTED: u8 = 0x01;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes (SPDY/3 section 2.6.3).
pub mod rst_status {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const UNSUPPORTED_VERSION: u32 = 4;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    pub const STREAM_IN_USE: u32 = 8;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
    pub const FRAME_TOO_LARGE: u32 = 11;
}

/// GOAWAY status codes (SPDY/3 section 2.6.6).
pub mod goaway_status {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
}

/// SETTINGS ids this implementation acts on (SPDY/3 section 2.6.4).
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        /// 3 bits, 0 is the highest priority.
        priority: u8,
        slot: u8,
        fin: bool,
        unidirectional: bool,
        header_block: Bytes,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        header_block: Bytes,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        clear_persisted: bool,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        header_block: Bytes,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("control frame has SPDY version {0}, only version 3 is spoken")]
    UnsupportedVersion(u16),
    #[error("{kind} frame payload length {length} is out of bounds (expected {expected})")]
    BadLength {
        kind: &'static str,
        length: usize,
        expected: &'static str,
    },
    #[error("{kind} frame payload length {length} exceeds the cap of {max} bytes")]
    TooLarge {
        kind: &'static str,
        length: usize,
        max: usize,
    },
    #[error("{kind} frame carries stream id 0, which is reserved")]
    ZeroStreamId { kind: &'static str },
    #[error("{kind} frame field {field} is {value}, above 2^31-1")]
    Above31Bits {
        kind: &'static str,
        field: &'static str,
        value: u32,
    },
    #[error("WINDOW_UPDATE for stream {0} has a delta of 0")]
    ZeroWindowDelta(u32),
    #[error("SETTINGS frame announces {count} entries but its payload holds {length} bytes")]
    BadSettingsCount { count: u32, length: usize },
    #[error("priority {0} does not fit in 3 bits")]
    BadPriority(u8),
}

/// Parses one frame from the front of `buf`, consuming it. Returns `Ok(None)` when the
/// buffer does not yet hold a complete frame; control frames of unknown types are
/// consumed and skipped, as SPDY/3 section 2.2.1 requires.
pub fn parse(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    loop {
        let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
            return Ok(None);
        };
        let first = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let flags = header[4];
        let length = u32::from_be_bytes([0, header[5], header[6], header[7]]) as usize;
        let is_control = first & 0x8000_0000 != 0;
        if is_control {
            let version = ((first >> 16) & 0x7fff) as u16;
            let frame_type = (first & 0xffff) as u16;
            if version != SPDY_VERSION {
                return Err(FrameError::UnsupportedVersion(version));
            }
            if length > MAX_CONTROL_PAYLOAD {
                return Err(FrameError::TooLarge {
                    kind: control_kind(frame_type),
                    length,
                    max: MAX_CONTROL_PAYLOAD,
                });
            }
            if buf.len() < FRAME_HEADER_LEN + length {
                buf.reserve(FRAME_HEADER_LEN + length - buf.len());
                return Ok(None);
            }
            buf.advance(FRAME_HEADER_LEN);
            let payload = buf.split_to(length).freeze();
            if let Some(frame) = parse_control(frame_type, flags, payload)? {
                return Ok(Some(frame));
            }
        } else {
            if buf.len() < FRAME_HEADER_LEN + length {
                buf.reserve(FRAME_HEADER_LEN + length - buf.len());
                return Ok(None);
            }
            let stream_id = first & MAX_STREAM_ID;
            if stream_id == 0 {
                return Err(FrameError::ZeroStreamId { kind: "data" });
            }
            buf.advance(FRAME_HEADER_LEN);
            let data = buf.split_to(length).freeze();
            return Ok(Some(Frame::Data {
                stream_id,
                fin: flags & FLAG_FIN != 0,
                data,
            }));
        }
    }
}

fn control_kind(frame_type: u16) -> &'static str {
    match frame_type {
        TYPE_SYN_STREAM => "SYN_STREAM",
        TYPE_SYN_REPLY => "SYN_REPLY",
        TYPE_RST_STREAM => "RST_STREAM",
        TYPE_SETTINGS => "SETTINGS",
        TYPE_PING => "PING",
        TYPE_GOAWAY => "GOAWAY",
        TYPE_HEADERS => "HEADERS",
        TYPE_WINDOW_UPDATE => "WINDOW_UPDATE",
        _ => "unknown control",
    }
}

fn exact_len(
    kind: &'static str,
    payload: &Bytes,
    want: usize,
    text: &'static str,
) -> Result<(), FrameError> {
    if payload.len() == want {
        Ok(())
    } else {
        Err(FrameError::BadLength {
            kind,
            length: payload.len(),
            expected: text,
        })
    }
}

fn min_len(
    kind: &'static str,
    payload: &Bytes,
    want: usize,
    text: &'static str,
) -> Result<(), FrameError> {
    if payload.len() >= want {
        Ok(())
    } else {
        Err(FrameError::BadLength {
            kind,
            length: payload.len(),
            expected: text,
        })
    }
}

/// Reads a 31-bit stream id, ignoring the reserved top bit as the spec asks.
fn stream_id(kind: &'static str, payload: &mut Bytes) -> Result<u32, FrameError> {
    let id = payload.get_u32() & MAX_STREAM_ID;
    if id == 0 {
        return Err(FrameError::ZeroStreamId { kind });
    }
    Ok(id)
}

fn parse_control(
    frame_type: u16,
    flags: u8,
    mut payload: Bytes,
) -> Result<Option<Frame>, FrameError> {
    let kind = control_kind(frame_type);
    let frame = match frame_type {
        TYPE_SYN_STREAM => {
            min_len(kind, &payload, 10, "at least 10")?;
            let stream_id = stream_id(kind, &mut payload)?;
            let associated_to = payload.get_u32() & MAX_STREAM_ID;
            let priority = payload.get_u8() >> 5;
            let slot = payload.get_u8();
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                fin: flags & FLAG_FIN != 0,
                unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                header_block: payload,
            }
        }
        TYPE_SYN_REPLY => {
            min_len(kind, &payload, 4, "at least 4")?;
            let stream_id = stream_id(kind, &mut payload)?;
            Frame::SynReply {
                stream_id,
                fin: flags & FLAG_FIN != 0,
                header_block: payload,
            }
        }
        TYPE_HEADERS => {
            min_len(kind, &payload, 4, "at least 4")?;
            let stream_id = stream_id(kind, &mut payload)?;
            Frame::Headers {
                stream_id,
                fin: flags & FLAG_FIN != 0,
                header_block: payload,
            }
        }
        TYPE_RST_STREAM => {
            exact_len(kind, &payload, 8, "exactly 8")?;
            let stream_id = stream_id(kind, &mut payload)?;
            Frame::RstStream {
                stream_id,
                status: payload.get_u32(),
            }
        }
        TYPE_SETTINGS => {
            min_len(kind, &payload, 4, "at least 4")?;
            let count = payload.get_u32();
            let fits = (count as usize)
                .checked_mul(8)
                .is_some_and(|entries_len| entries_len == payload.len());
            if !fits {
                return Err(FrameError::BadSettingsCount {
                    count,
                    length: payload.len() + 4,
                });
            }
            let entries = (0..count)
                .map(|_| {
                    let flags_and_id = payload.get_u32();
                    Setting {
                        flags: (flags_and_id >> 24) as u8,
                        id: flags_and_id & 0x00ff_ffff,
                        value: payload.get_u32(),
                    }
                })
                .collect();
            Frame::Settings {
                clear_persisted: flags & FLAG_SETTINGS_CLEAR_PERSISTED != 0,
                entries,
            }
        }
        TYPE_PING => {
            exact_len(kind, &payload, 4, "exactly 4")?;
            Frame::Ping {
                id: payload.get_u32(),
            }
        }
        TYPE_GOAWAY => {
            exact_len(kind, &payload, 8, "exactly 8")?;
            Frame::GoAway {
                last_good_stream_id: payload.get_u32() & MAX_STREAM_ID,
                status: payload.get_u32(),
            }
        }
        TYPE_WINDOW_UPDATE => {
            exact_len(kind, &payload, 8, "exactly 8")?;
            // Stream id 0 is SPDY/3.1's session-level window, so it is allowed here.
            let stream_id = payload.get_u32() & MAX_STREAM_ID;
            let delta = payload.get_u32() & 0x7fff_ffff;
            if delta == 0 {
                return Err(FrameError::ZeroWindowDelta(stream_id));
            }
            Frame::WindowUpdate { stream_id, delta }
        }
        _ => return Ok(None),
    };
    Ok(Some(frame))
}

fn check_31(kind: &'static str, field: &'static str, value: u32) -> Result<(), FrameError> {
    if value > MAX_STREAM_ID {
        return Err(FrameError::Above31Bits { kind, field, value });
    }
    Ok(())
}

fn check_stream_id(kind: &'static str, value: u32) -> Result<(), FrameError> {
    if value == 0 {
        return Err(FrameError::ZeroStreamId { kind });
    }
    check_31(kind, "stream id", value)
}

fn put_control_header(
    out: &mut BytesMut,
    frame_type: u16,
    flags: u8,
    length: usize,
) -> Result<(), FrameError> {
    if length > MAX_CONTROL_PAYLOAD {
        return Err(FrameError::TooLarge {
            kind: control_kind(frame_type),
            length,
            max: MAX_CONTROL_PAYLOAD,
        });
    }
    out.reserve(FRAME_HEADER_LEN + length);
    out.put_u16(0x8000 | SPDY_VERSION);
    out.put_u16(frame_type);
    out.put_u32((u32::from(flags) << 24) | length as u32);
    Ok(())
}

fn fin_flag(fin: bool) -> u8 {
    if fin { FLAG_FIN } else { 0 }
}

impl Frame {
    /// Appends the wire form of this frame to `out`. Fails, leaving `out` untouched, if a
    /// field does not fit the wire format.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), FrameError> {
        match self {
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                fin,
                unidirectional,
                header_block,
            } => {
                check_stream_id("SYN_STREAM", *stream_id)?;
                check_31("SYN_STREAM", "associated-to stream id", *associated_to)?;
                if *priority > 7 {
                    return Err(FrameError::BadPriority(*priority));
                }
                let flags = fin_flag(*fin)
                    | if *unidirectional {
                        FLAG_UNIDIRECTIONAL
                    } else {
                        0
                    };
                put_control_header(out, TYPE_SYN_STREAM, flags, 10 + header_block.len())?;
                out.put_u32(*stream_id);
                out.put_u32(*associated_to);
                out.put_u8(priority << 5);
                out.put_u8(*slot);
                out.put_slice(header_block);
            }
            Frame::SynReply {
                stream_id,
                fin,
                header_block,
            } => {
                check_stream_id("SYN_REPLY", *stream_id)?;
                put_control_header(out, TYPE_SYN_REPLY, fin_flag(*fin), 4 + header_block.len())?;
                out.put_u32(*stream_id);
                out.put_slice(header_block);
            }
            Frame::Headers {
                stream_id,
                fin,
                header_block,
            } => {
                check_stream_id("HEADERS", *stream_id)?;
                put_control_header(out, TYPE_HEADERS, fin_flag(*fin), 4 + header_block.len())?;
                out.put_u32(*stream_id);
                out.put_slice(header_block);
            }
            Frame::RstStream { stream_id, status } => {
                check_stream_id("RST_STREAM", *stream_id)?;
                put_control_header(out, TYPE_RST_STREAM, 0, 8)?;
                out.put_u32(*stream_id);
                out.put_u32(*status);
            }
            Frame::Settings {
                clear_persisted,
                entries,
            } => {
                for entry in entries {
                    if entry.id > 0x00ff_ffff {
                        return Err(FrameError::Above31Bits {
                            kind: "SETTINGS",
                            field: "entry id (24 bits)",
                            value: entry.id,
                        });
                    }
                }
                let length = entries
                    .len()
                    .checked_mul(8)
                    .and_then(|len| len.checked_add(4))
                    .unwrap_or(usize::MAX);
                let flags = if *clear_persisted {
                    FLAG_SETTINGS_CLEAR_PERSISTED
                } else {
                    0
                };
                put_control_header(out, TYPE_SETTINGS, flags, length)?;
                out.put_u32(entries.len() as u32);
                for entry in entries {
                    out.put_u32((u32::from(entry.flags) << 24) | entry.id);
                    out.put_u32(entry.value);
                }
            }
            Frame::Ping { id } => {
                put_control_header(out, TYPE_PING, 0, 4)?;
                out.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                check_31("GOAWAY", "last-good-stream-id", *last_good_stream_id)?;
                put_control_header(out, TYPE_GOAWAY, 0, 8)?;
                out.put_u32(*last_good_stream_id);
                out.put_u32(*status);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                check_31("WINDOW_UPDATE", "stream id", *stream_id)?;
                check_31("WINDOW_UPDATE", "delta", *delta)?;
                if *delta == 0 {
                    return Err(FrameError::ZeroWindowDelta(*stream_id));
                }
                put_control_header(out, TYPE_WINDOW_UPDATE, 0, 8)?;
                out.put_u32(*stream_id);
                out.put_u32(*delta);
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                check_stream_id("data", *stream_id)?;
                if data.len() > MAX_DATA_PAYLOAD {
                    return Err(FrameError::TooLarge {
                        kind: "data",
                        length: data.len(),
                        max: MAX_DATA_PAYLOAD,
                    });
                }
                out.reserve(FRAME_HEADER_LEN + data.len());
                out.put_u32(*stream_id);
                out.put_u32((u32::from(fin_flag(*fin)) << 24) | data.len() as u32);
                out.put_slice(data);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn encoded(frame: &Frame) -> BytesMut {
        let mut out = BytesMut::new();
        frame.encode(&mut out).expect("encodable frame");
        out
    }

    fn every_frame_type() -> Vec<Frame> {
        vec![
            Frame::SynStream {
                stream_id: 5,
                associated_to: 2,
                priority: 7,
                slot: 9,
                fin: true,
                unidirectional: true,
                header_block: Bytes::from_static(b"compressed"),
            },
            Frame::SynReply {
                stream_id: MAX_STREAM_ID,
                fin: false,
                header_block: Bytes::from_static(b"xyz"),
            },
            Frame::RstStream {
                stream_id: 3,
                status: rst_status::CANCEL,
            },
            Frame::Settings {
                clear_persisted: true,
                entries: vec![
                    Setting {
                        flags: 1,
                        id: SETTINGS_INITIAL_WINDOW_SIZE,
                        value: 1 << 20,
                    },
                    Setting {
                        flags: 0,
                        id: 4,
                        value: 100,
                    },
                ],
            },
            Frame::Ping { id: 0xffff_ffff },
            Frame::GoAway {
                last_good_stream_id: 11,
                status: goaway_status::INTERNAL_ERROR,
            },
            Frame::Headers {
                stream_id: 1,
                fin: true,
                header_block: Bytes::new(),
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: MAX_STREAM_ID,
            },
            Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::new(),
            },
            Frame::Data {
                stream_id: 7,
                fin: false,
                data: Bytes::from(vec![0xab; 70_000]),
            },
        ]
    }

    #[test]
    fn every_frame_type_round_trips_whole_and_byte_by_byte() {
        for frame in every_frame_type() {
            let mut whole = encoded(&frame);
            assert_eq!(parse(&mut whole).unwrap(), Some(frame.clone()));
            assert!(whole.is_empty(), "{frame:?} left bytes behind");

            let bytes = encoded(&frame);
            let mut partial = BytesMut::new();
            for (index, byte) in bytes.iter().enumerate() {
                partial.extend_from_slice(&[*byte]);
                let parsed = parse(&mut partial).unwrap();
                if index + 1 < bytes.len() {
                    assert_eq!(parsed, None, "{frame:?} parsed early at byte {index}");
                } else {
                    assert_eq!(parsed, Some(frame.clone()));
                }
            }
        }
    }

    #[test]
    fn several_frames_in_one_buffer_come_out_in_order() {
        let mut buf = BytesMut::new();
        for frame in every_frame_type() {
            frame.encode(&mut buf).unwrap();
        }
        for frame in every_frame_type() {
            assert_eq!(parse(&mut buf).unwrap(), Some(frame));
        }
        assert_eq!(parse(&mut buf).unwrap(), None);
    }

    // Derived by hand from SPDY/3 section 2.2.1 and 2.6.1: word 0 is the control bit
    // (0x8000) | version 3, then type 1; byte 4 is the flags (FIN = 0x01); bytes 5-7 the
    // payload length 10 + 3 = 0x0d; then stream id 1, associated-to 0, priority 5 in the
    // top 3 bits (5 << 5 = 0xa0), slot 0, and the (here uncompressed) header block.
    #[test]
    fn syn_stream_layout_matches_the_spec() {
        let frame = Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 5,
            slot: 0,
            fin: true,
            unidirectional: false,
            header_block: Bytes::from_static(b"ABC"),
        };
        let expected: &[u8] = &[
            0x80, 0x03, 0x00, 0x01, 0x01, 0x00, 0x00, 0x0d, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
            0x00, 0x00, 0xa0, 0x00, b'A', b'B', b'C',
        ];
        assert_eq!(&encoded(&frame)[..], expected);
        assert_eq!(parse(&mut BytesMut::from(expected)).unwrap(), Some(frame));
    }

    // PING (2.6.5): control|version 3, type 6, flags 0, length 4, 32-bit id.
    // GOAWAY (2.6.6): type 7, length 8, last-good-stream-id, status (0 = OK).
    // Data (2.2.2): top bit 0, stream id, flags (FIN), 24-bit length, payload.
    #[test]
    fn ping_goaway_and_data_layouts_match_the_spec() {
        let cases: Vec<(Frame, &[u8])> = vec![
            (
                Frame::Ping { id: 1 },
                &[
                    0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01,
                ],
            ),
            (
                Frame::GoAway {
                    last_good_stream_id: 3,
                    status: goaway_status::OK,
                },
                &[
                    0x80, 0x03, 0x00, 0x07, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x03, 0x00,
                    0x00, 0x00, 0x00,
                ],
            ),
            (
                Frame::Data {
                    stream_id: 3,
                    fin: true,
                    data: Bytes::from_static(b"hi"),
                },
                &[0x00, 0x00, 0x00, 0x03, 0x01, 0x00, 0x00, 0x02, b'h', b'i'],
            ),
        ];
        for (frame, expected) in cases {
            assert_eq!(&encoded(&frame)[..], expected, "{frame:?}");
            assert_eq!(parse(&mut BytesMut::from(expected)).unwrap(), Some(frame));
        }
    }

    #[test]
    fn unknown_control_types_are_skipped() {
        // Type 10 (CREDENTIAL) and type 0xbeef carry payloads this side ignores.
        let mut buf = BytesMut::from(
            &[
                0x80, 0x03, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x02, 0xaa, 0xbb, 0x80, 0x03, 0xbe, 0xef,
                0xff, 0x00, 0x00, 0x00,
            ][..],
        );
        Frame::Ping { id: 7 }.encode(&mut buf).unwrap();
        assert_eq!(parse(&mut buf).unwrap(), Some(Frame::Ping { id: 7 }));
        assert!(buf.is_empty());
    }

    fn parse_error(bytes: &[u8]) -> FrameError {
        parse(&mut BytesMut::from(bytes)).expect_err("malformed frame accepted")
    }

    #[test]
    fn malformed_frames_are_protocol_errors() {
        assert_eq!(
            parse_error(&[0x80, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 1]),
            FrameError::UnsupportedVersion(2)
        );
        assert!(matches!(
            parse_error(&[
                0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x05, 0, 0, 0, 1, 0
            ]),
            FrameError::BadLength {
                kind: "PING",
                length: 5,
                ..
            }
        ));
        assert!(matches!(
            parse_error(&[0x80, 0x03, 0x00, 0x03, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 1]),
            FrameError::BadLength {
                kind: "RST_STREAM",
                ..
            }
        ));
        assert!(matches!(
            parse_error(&[0x80, 0x03, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00]),
            FrameError::BadLength { kind: "GOAWAY", .. }
        ));
        assert!(matches!(
            parse_error(&[
                0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x06, 0, 0, 0, 1, 0, 0
            ]),
            FrameError::BadLength {
                kind: "SYN_STREAM",
                ..
            }
        ));
        assert_eq!(
            parse_error(&[
                0x80, 0x03, 0x00, 0x04, 0x00, 0x00, 0x00, 0x0c, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 1
            ]),
            FrameError::BadSettingsCount {
                count: 2,
                length: 12
            }
        );
        assert_eq!(
            parse_error(&[
                0x80, 0x03, 0x00, 0x04, 0x00, 0x00, 0x00, 0x04, 0xff, 0xff, 0xff, 0xff
            ]),
            FrameError::BadSettingsCount {
                count: u32::MAX,
                length: 4
            }
        );
        assert_eq!(
            parse_error(&[
                0x80, 0x03, 0x00, 0x09, 0x00, 0x00, 0x00, 0x08, 0, 0, 0, 1, 0, 0, 0, 0
            ]),
            FrameError::ZeroWindowDelta(1)
        );
        assert_eq!(
            parse_error(&[
                0x80, 0x03, 0x00, 0x02, 0x00, 0x00, 0x00, 0x04, 0x80, 0, 0, 0
            ]),
            FrameError::ZeroStreamId { kind: "SYN_REPLY" }
        );
        assert_eq!(
            parse_error(&[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
            FrameError::ZeroStreamId { kind: "data" }
        );
        // A control frame announcing 16 MiB is refused from its header alone, before
        // the peer can make this side buffer it.
        assert!(matches!(
            parse_error(&[0x80, 0x03, 0x00, 0x01, 0x00, 0xff, 0xff, 0xff]),
            FrameError::TooLarge {
                kind: "SYN_STREAM",
                ..
            }
        ));
    }

    #[test]
    fn truncated_frames_wait_for_more_bytes() {
        for frame in every_frame_type() {
            let bytes = encoded(&frame);
            for cut in 0..bytes.len().min(64) {
                assert_eq!(parse(&mut BytesMut::from(&bytes[..cut])).unwrap(), None);
            }
        }
    }

    #[test]
    fn encoding_refuses_fields_the_wire_cannot_carry() {
        let mut out = BytesMut::new();
        assert!(
            Frame::RstStream {
                stream_id: 1 << 31,
                status: 1
            }
            .encode(&mut out)
            .is_err()
        );
        assert!(
            Frame::Data {
                stream_id: 1,
                fin: false,
                data: Bytes::from(vec![0; MAX_DATA_PAYLOAD + 1]),
            }
            .encode(&mut out)
            .is_err()
        );
        assert!(
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 0
            }
            .encode(&mut out)
            .is_err()
        );
        assert!(out.is_empty());
    }

    /// Random and mutated input, fixed seed so failures reproduce: the parser must
    /// return frames, `None` or errors, never panic, and always make progress.
    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut rng = StdRng::seed_from_u64(0x5bd1_e995);
        let valid: Vec<BytesMut> = every_frame_type().iter().map(encoded).collect();
        for case in 0..20_000 {
            let mut bytes: Vec<u8> = if case % 2 == 0 {
                let len = rng.random_range(0..64);
                (0..len).map(|_| rng.random()).collect()
            } else {
                let mut bytes = valid[rng.random_range(0..valid.len())].to_vec();
                bytes.truncate(4096);
                for _ in 0..rng.random_range(1..4) {
                    let index = rng.random_range(0..bytes.len());
                    bytes[index] = rng.random();
                }
                bytes
            };
            if case % 5 == 0 {
                // Make it a control frame of version 3 so deeper paths are reached.
                bytes.extend_from_slice(&[0; 8]);
                bytes[0] = 0x80;
                bytes[1] = 0x03;
                bytes[2] = 0;
                bytes[3] = rng.random_range(0..12);
            }
            let mut buf = BytesMut::from(&bytes[..]);
            loop {
                let before = buf.len();
                match parse(&mut buf) {
                    Ok(Some(frame)) => {
                        assert!(buf.len() < before, "a parsed frame consumed nothing");
                        let mut again = BytesMut::new();
                        if frame.encode(&mut again).is_ok() {
                            assert_eq!(parse(&mut again).unwrap(), Some(frame));
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
