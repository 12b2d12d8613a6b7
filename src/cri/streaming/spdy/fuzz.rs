//! Property runs over the parsers that read what a client sends: arbitrary bytes,
//! cut at arbitrary points, and valid frames with bytes changed. Each property
//! gets a fixed number of cases so that the run stays bounded in CI; the
//! properties are that nothing panics, every call makes progress or asks for
//! more, and what was encoded decodes unchanged.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::frame::{self, Frame, Setting};
use super::headers::{HeaderDecoder, HeaderEncoder};

fn config() -> ProptestConfig {
    ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() }
}

/// Feeds `input` to the frame parser in pieces of the given sizes, as a socket
/// would deliver it, and returns what it made of it. Stops at the first error,
/// as a session does.
fn parse_in_pieces(input: &[u8], pieces: &[usize]) -> (Vec<Frame>, Option<frame::FrameError>) {
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = input;
    let mut sizes = pieces.iter().copied().cycle();
    while !rest.is_empty() {
        let take = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        buffer.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        loop {
            let before = buffer.len();
            match frame::parse(&mut buffer) {
                Ok(Some(frame)) => {
                    assert!(buffer.len() < before, "a parsed frame consumes bytes");
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(error) => return (frames, Some(error)),
            }
        }
    }
    (frames, None)
}

fn stream_id() -> impl Strategy<Value = u32> {
    1..=frame::MAX_STREAM_ID
}

fn any_frame() -> impl Strategy<Value = Frame> {
    let block = proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from);
    prop_oneof![
        (stream_id(), 0..=frame::MAX_STREAM_ID, 0u8..8, any::<u8>(), any::<bool>(), any::<bool>(), block.clone()).prop_map(
            |(stream_id, associated_to, priority, slot, fin, unidirectional, header_block)| Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                fin,
                unidirectional,
                header_block
            }
        ),
        (stream_id(), any::<bool>(), block.clone()).prop_map(|(stream_id, fin, header_block)| Frame::SynReply { stream_id, fin, header_block }),
        (stream_id(), any::<u32>()).prop_map(|(stream_id, status)| Frame::RstStream { stream_id, status }),
        (any::<bool>(), proptest::collection::vec((any::<u8>(), 0u32..(1 << 24), any::<u32>()), 0..8)).prop_map(|(clear_persisted, entries)| {
            Frame::Settings { clear_persisted, entries: entries.into_iter().map(|(flags, id, value)| Setting { flags, id, value }).collect() }
        }),
        any::<u32>().prop_map(|id| Frame::Ping { id }),
        (0..=frame::MAX_STREAM_ID, any::<u32>()).prop_map(|(last_good_stream_id, status)| Frame::GoAway { last_good_stream_id, status }),
        (stream_id(), any::<bool>(), block).prop_map(|(stream_id, fin, header_block)| Frame::Headers { stream_id, fin, header_block }),
        (0..=frame::MAX_STREAM_ID, 1..=0x7fff_ffffu32).prop_map(|(stream_id, delta)| Frame::WindowUpdate { stream_id, delta }),
        (stream_id(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..256))
            .prop_map(|(stream_id, fin, data)| Frame::Data { stream_id, fin, data: Bytes::from(data) }),
    ]
}

fn pieces() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(1usize..64, 1..8)
}

/// Lowercase names without NUL, as SPDY/3 requires; values may hold NUL-free text.
fn header_list() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = proptest::collection::vec(prop_oneof![b'a'..=b'z', Just(b'-'), Just(b':')], 1..16);
    let value = proptest::collection::vec(prop_oneof![b' '..=b'~'], 1..32);
    proptest::collection::btree_map(name, value, 0..8).prop_map(|pairs| {
        pairs.into_iter().map(|(name, value)| (String::from_utf8(name).unwrap(), String::from_utf8(value).unwrap())).collect()
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_the_frame_parser(input in proptest::collection::vec(any::<u8>(), 0..2048), pieces in pieces()) {
        parse_in_pieces(&input, &pieces);
    }

    #[test]
    fn frames_survive_encoding_and_any_split(frames in proptest::collection::vec(any_frame(), 1..6), pieces in pieces()) {
        let mut wire = BytesMut::new();
        for frame in &frames {
            frame.encode(&mut wire).unwrap();
        }
        let (parsed, error) = parse_in_pieces(&wire, &pieces);
        prop_assert!(error.is_none(), "{error:?}");
        prop_assert_eq!(parsed, frames);
    }

    #[test]
    fn changed_bytes_in_valid_frames_never_panic(frame in any_frame(), changes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let mut wire = BytesMut::new();
        frame.encode(&mut wire).unwrap();
        let mut wire = wire.to_vec();
        for (index, byte) in changes {
            let at = index.index(wire.len());
            wire[at] = byte;
        }
        parse_in_pieces(&wire, &[wire.len()]);
    }

    #[test]
    fn arbitrary_header_blocks_never_panic_the_decoder(blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..512), 1..4)) {
        let mut decoder = HeaderDecoder::new();
        for block in blocks {
            if decoder.decode(&block).is_err() {
                break;
            }
        }
    }

    #[test]
    fn header_blocks_round_trip_through_one_compression_context(lists in proptest::collection::vec(header_list(), 1..4), change in any::<Option<(prop::sample::Index, u8)>>()) {
        let (mut encoder, mut decoder) = (HeaderEncoder::new(), HeaderDecoder::new());
        for list in &lists {
            let mut block = encoder.encode(list).unwrap().to_vec();
            match change {
                // A changed byte may still decode (to other headers), but must not panic.
                Some((index, byte)) => {
                    let at = index.index(block.len());
                    block[at] = byte;
                    if decoder.decode(&block).is_err() {
                        break;
                    }
                }
                None => prop_assert_eq!(&decoder.decode(&block).unwrap(), list),
            }
        }
    }
}
