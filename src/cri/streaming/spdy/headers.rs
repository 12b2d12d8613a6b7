//! SPDY/3 name/value header blocks and their zlib compression with the spec's
//! preset dictionary (section 2.6.10). Each direction of a session owns one
//! compression context for its whole life: every block is a SYNC_FLUSH segment of a
//! single zlib stream, so blocks must be encoded and decoded in frame order.

use std::sync::LazyLock;

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// A decompressed block larger than this is refused: it bounds the memory a peer can
/// make us spend per frame.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;

/// Header names and values; a name may repeat, which the wire form carries as one
/// entry whose values are joined by NUL.
pub type HeaderList = Vec<(String, String)>;

/// Words of the SPDY/3 dictionary, each stored with a 4-byte big-endian length prefix.
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The dictionary's tail is stored raw, without length prefixes.
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

pub static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut dictionary = Vec::with_capacity(1423);
    for word in DICTIONARY_WORDS {
        dictionary.extend_from_slice(&(word.len() as u32).to_be_bytes());
        dictionary.extend_from_slice(word.as_bytes());
    }
    dictionary.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    dictionary
});

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("header block is not valid zlib data for this session: {0}")]
    Zlib(String),
    #[error("header block ends before its data does (truncated zlib segment)")]
    Truncated,
    #[error("header block decompresses to more than {MAX_HEADER_BLOCK} bytes")]
    TooLarge,
    #[error("header block's zlib stream ended; later blocks could not be decoded")]
    StreamEnded,
    #[error("header block is cut short while reading {field}")]
    Short { field: &'static str },
    #[error("header block announces {0} pairs, more than its bytes can hold")]
    BadCount(u32),
    #[error("header block has {0} trailing bytes after its last pair")]
    TrailingBytes(usize),
    #[error("header block has an empty header name")]
    EmptyName,
    #[error("header name {0:?} is not lowercase")]
    UppercaseName(String),
    #[error("header name {0:?} appears twice in one block")]
    DuplicateName(String),
    #[error("header {name:?} has a value that is not UTF-8")]
    NonUtf8Value { name: String },
    #[error("header name is not UTF-8")]
    NonUtf8Name,
    #[error("header {name:?} has an empty value between NUL separators")]
    EmptyValuePart { name: String },
    #[error("header {name:?} or its value is longer than 2^32-1 bytes")]
    TooLong { name: String },
}

/// The sending side of one direction: compresses blocks in the order frames go out.
pub struct HeaderEncoder {
    compress: Compress,
}

impl Default for HeaderEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderEncoder {
    pub fn new() -> Self {
        let mut compress = Compress::new(Compression::default(), true);
        // deflateSetDictionary right after init cannot fail for a valid stream.
        if let Err(error) = compress.set_dictionary(&DICTIONARY) {
            tracing::error!(%error, "zlib refused the SPDY dictionary");
        }
        Self { compress }
    }

    /// Serialises and compresses `headers`; names are lowercased and repeated names
    /// merged into one NUL-separated value, as the wire form requires.
    pub fn encode(&mut self, headers: &[(String, String)]) -> Result<Bytes, HeaderError> {
        let raw = serialise_block(headers)?;
        let mut out = Vec::with_capacity(raw.len() / 2 + 64);
        let mut consumed = 0usize;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(raw.len() / 2 + 64);
            }
            let before_in = self.compress.total_in();
            self.compress
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|error| HeaderError::Zlib(error.to_string()))?;
            consumed += (self.compress.total_in() - before_in) as usize;
            // Free space left after a sync flush means the flush completed.
            if consumed >= raw.len() && out.len() < out.capacity() {
                return Ok(Bytes::from(out));
            }
        }
    }
}

fn serialise_block(headers: &[(String, String)]) -> Result<Vec<u8>, HeaderError> {
    let mut merged: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        match merged.iter_mut().find(|(existing, _)| *existing == name) {
            Some((_, joined)) => {
                joined.push('\0');
                joined.push_str(value);
            }
            None => merged.push((name, value.clone())),
        }
    }
    let mut raw = BytesMut::new();
    raw.put_u32(merged.len() as u32);
    for (name, value) in &merged {
        if name.is_empty() {
            return Err(HeaderError::EmptyName);
        }
        let (Ok(name_len), Ok(value_len)) = (u32::try_from(name.len()), u32::try_from(value.len()))
        else {
            return Err(HeaderError::TooLong { name: name.clone() });
        };
        raw.put_u32(name_len);
        raw.put_slice(name.as_bytes());
        raw.put_u32(value_len);
        raw.put_slice(value.as_bytes());
    }
    if raw.len() > MAX_HEADER_BLOCK {
        return Err(HeaderError::TooLarge);
    }
    Ok(raw.to_vec())
}

/// The receiving side of one direction: decompresses blocks in arrival order.
pub struct HeaderDecoder {
    decompress: Decompress,
}

impl Default for HeaderDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderDecoder {
    pub fn new() -> Self {
        Self {
            decompress: Decompress::new(true),
        }
    }

    /// Decompresses and parses one header block. After an error the context is out of
    /// step with the peer's, so the session must end.
    pub fn decode(&mut self, block: &[u8]) -> Result<HeaderList, HeaderError> {
        let raw = self.inflate(block)?;
        parse_block(&raw)
    }

    fn inflate(&mut self, block: &[u8]) -> Result<Vec<u8>, HeaderError> {
        let mut out = Vec::with_capacity(block.len().saturating_mul(4).clamp(256, 64 * 1024));
        let mut consumed = 0usize;
        loop {
            if out.capacity() - out.len() < 256 {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(HeaderError::TooLarge);
                }
                out.reserve(out.capacity().max(1024));
            }
            let before_in = self.decompress.total_in();
            let before_out = out.len();
            let result =
                self.decompress
                    .decompress_vec(&block[consumed..], &mut out, FlushDecompress::Sync);
            consumed += (self.decompress.total_in() - before_in) as usize;
            match result {
                Ok(Status::StreamEnd) => return Err(HeaderError::StreamEnded),
                Ok(Status::Ok | Status::BufError) => {}
                Err(error) => match error.needs_dictionary() {
                    Some(_) => {
                        self.decompress
                            .set_dictionary(&DICTIONARY)
                            .map_err(|error| HeaderError::Zlib(error.to_string()))?;
                        continue;
                    }
                    None => return Err(HeaderError::Zlib(error.to_string())),
                },
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(HeaderError::TooLarge);
            }
            if consumed >= block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if consumed >= block.len() && out.len() == before_out {
                return Err(HeaderError::Truncated);
            }
            if out.len() == before_out && self.decompress.total_in() == before_in {
                return Err(HeaderError::Truncated);
            }
        }
    }
}

struct BlockReader<'a> {
    rest: &'a [u8],
}

impl<'a> BlockReader<'a> {
    fn u32(&mut self, field: &'static str) -> Result<u32, HeaderError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<4>()
            .ok_or(HeaderError::Short { field })?;
        self.rest = rest;
        Ok(u32::from_be_bytes(*head))
    }

    fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], HeaderError> {
        let len = self.u32(field)? as usize;
        if len > self.rest.len() {
            return Err(HeaderError::Short { field });
        }
        let (head, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(head)
    }
}

fn parse_block(raw: &[u8]) -> Result<HeaderList, HeaderError> {
    let mut reader = BlockReader { rest: raw };
    let count = reader.u32("pair count")?;
    // Each pair takes at least 8 bytes of length fields.
    if count as usize > reader.rest.len() / 8 {
        return Err(HeaderError::BadCount(count));
    }
    let mut headers = HeaderList::with_capacity(count as usize);
    let mut names: Vec<&str> = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name = reader.bytes("header name")?;
        let name = std::str::from_utf8(name).map_err(|_| HeaderError::NonUtf8Name)?;
        if name.is_empty() {
            return Err(HeaderError::EmptyName);
        }
        if name.bytes().any(|byte| byte.is_ascii_uppercase()) {
            return Err(HeaderError::UppercaseName(name.to_owned()));
        }
        if names.contains(&name) {
            return Err(HeaderError::DuplicateName(name.to_owned()));
        }
        names.push(name);
        let value = reader.bytes("header value")?;
        let value = std::str::from_utf8(value).map_err(|_| HeaderError::NonUtf8Value {
            name: name.to_owned(),
        })?;
        if value.is_empty() {
            headers.push((name.to_owned(), String::new()));
            continue;
        }
        for part in value.split('\0') {
            if part.is_empty() {
                return Err(HeaderError::EmptyValuePart {
                    name: name.to_owned(),
                });
            }
            headers.push((name.to_owned(), part.to_owned()));
        }
    }
    if !reader.rest.is_empty() {
        return Err(HeaderError::TrailingBytes(reader.rest.len()));
    }
    Ok(headers)
}

/// First value of `name` in `headers` (names compared case-insensitively).
pub fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

#[cfg(test)]
mod tests {
    use super::super::frame::{self, Frame};
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn pairs(list: &[(&str, &str)]) -> HeaderList {
        list.iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for byte in data {
            a = (a + u32::from(*byte)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    /// Compresses an arbitrary raw block in a fresh context, to forge malformed blocks.
    fn compress_raw(raw: &[u8]) -> Vec<u8> {
        let mut compress = Compress::new(Compression::default(), true);
        compress.set_dictionary(&DICTIONARY).unwrap();
        let mut out = Vec::with_capacity(raw.len() + 1024);
        compress
            .compress_vec(raw, &mut out, FlushCompress::Sync)
            .unwrap();
        assert_eq!(compress.total_in() as usize, raw.len());
        out
    }

    // The zlib header of a block made with a preset dictionary carries the
    // dictionary's Adler-32 (RFC 1950: CMF 0x78, FLG with FDICT set, then DICTID).
    // moby/spdystream's first block on a connection starts 78 f9 e3 c6 a7 c2 (f9: its
    // compression level; the DICTID follows) (see the
    // captured frames below), so this pins the dictionary bytes to the real one.
    #[test]
    fn dictionary_matches_the_one_kubernetes_clients_use() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(adler32(&DICTIONARY), 0xe3c6_a7c2);
        let block = HeaderEncoder::new()
            .encode(&pairs(&[("streamtype", "error")]))
            .unwrap();
        assert_eq!(block[0], 0x78);
        assert_ne!(block[1] & 0x20, 0, "FDICT flag");
        assert_eq!(&block[2..6], &[0xe3, 0xc6, 0xa7, 0xc2]);
    }

    /// Frames written by moby/spdystream v0.5.1's framer (the SPDY code kubectl and
    /// crictl link), captured once with a small Go program: SYN_STREAM 1
    /// {Streamtype: error}, SYN_STREAM 3 {Streamtype: stdout, Multi: [a, b]}, data
    /// "hi" with FIN on 3, PING 1, GOAWAY(3, OK).
    const SPDYSTREAM_CAPTURE: &str = "80030001000000290000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851c29a0a0a6800000000ffff80030001000000270000000300000000000002651c0c29b6e292947c7019cd9a5b9a5392092e46199200000000ffff0000000301000002686980030006000000040000000180030007000000080000000300000000";

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|index| u8::from_str_radix(&text[index..index + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn frames_from_spdystream_decode() {
        let mut buf = BytesMut::from(&unhex(SPDYSTREAM_CAPTURE)[..]);
        let mut decoder = HeaderDecoder::new();
        let mut blocks = Vec::new();
        let mut others = Vec::new();
        while let Some(frame) = frame::parse(&mut buf).unwrap() {
            match frame {
                Frame::SynStream {
                    stream_id,
                    header_block,
                    fin: false,
                    ..
                } => {
                    let mut headers = decoder.decode(&header_block).unwrap();
                    headers.sort();
                    blocks.push((stream_id, headers));
                }
                other => others.push(other),
            }
        }
        assert!(buf.is_empty());
        assert_eq!(
            blocks,
            vec![
                (1, pairs(&[("streamtype", "error")])),
                (
                    3,
                    pairs(&[("multi", "a"), ("multi", "b"), ("streamtype", "stdout")])
                ),
            ]
        );
        assert_eq!(
            others,
            vec![
                Frame::Data {
                    stream_id: 3,
                    fin: true,
                    data: Bytes::from_static(b"hi")
                },
                Frame::Ping { id: 1 },
                Frame::GoAway {
                    last_good_stream_id: 3,
                    status: 0
                },
            ]
        );
    }

    #[test]
    fn blocks_share_one_context_per_direction() {
        let mut encoder = HeaderEncoder::new();
        let mut decoder = HeaderDecoder::new();
        let first = pairs(&[
            ("streamtype", "stdout"),
            ("requestid", "0"),
            ("port", "8080"),
        ]);
        let second = pairs(&[
            ("streamtype", "stdout"),
            ("requestid", "0"),
            ("port", "8080"),
        ]);
        let third = pairs(&[(":status", "200"), ("x", "")]);
        let blocks: Vec<Bytes> = [&first, &second, &third]
            .iter()
            .map(|headers| encoder.encode(headers).unwrap())
            .collect();
        // The repeat is coded as back-references into the earlier block.
        assert!(
            blocks[1].len() < blocks[0].len(),
            "{} vs {}",
            blocks[1].len(),
            blocks[0].len()
        );
        assert_eq!(decoder.decode(&blocks[0]).unwrap(), first);
        assert_eq!(decoder.decode(&blocks[1]).unwrap(), second);
        assert_eq!(decoder.decode(&blocks[2]).unwrap(), third);
        // A fresh context cannot read a later block: the state really carries over.
        assert!(HeaderDecoder::new().decode(&blocks[1]).is_err());
    }

    #[test]
    fn names_are_lowercased_and_repeats_joined_with_nul() {
        let mut encoder = HeaderEncoder::new();
        let block = encoder
            .encode(&pairs(&[
                ("StreamType", "data"),
                ("X-Multi", "a"),
                ("x-multi", "b"),
            ]))
            .unwrap();
        let mut decompress = Decompress::new(true);
        let mut raw = Vec::with_capacity(4096);
        let error = decompress
            .decompress_vec(&block, &mut raw, FlushDecompress::Sync)
            .unwrap_err();
        assert!(error.needs_dictionary().is_some());
        decompress.set_dictionary(&DICTIONARY).unwrap();
        let consumed = decompress.total_in() as usize;
        decompress
            .decompress_vec(&block[consumed..], &mut raw, FlushDecompress::Sync)
            .unwrap();
        let mut expected = Vec::new();
        expected.extend_from_slice(&2u32.to_be_bytes());
        for (name, value) in [("streamtype", &b"data"[..]), ("x-multi", &b"a\0b"[..])] {
            expected.extend_from_slice(&(name.len() as u32).to_be_bytes());
            expected.extend_from_slice(name.as_bytes());
            expected.extend_from_slice(&(value.len() as u32).to_be_bytes());
            expected.extend_from_slice(value);
        }
        assert_eq!(raw, expected);
        assert_eq!(
            HeaderDecoder::new().decode(&block).unwrap(),
            pairs(&[("streamtype", "data"), ("x-multi", "a"), ("x-multi", "b")])
        );
    }

    fn raw_block(entries: &[(&[u8], &[u8])], count: u32) -> Vec<u8> {
        let mut raw = count.to_be_bytes().to_vec();
        for (name, value) in entries {
            raw.extend_from_slice(&(name.len() as u32).to_be_bytes());
            raw.extend_from_slice(name);
            raw.extend_from_slice(&(value.len() as u32).to_be_bytes());
            raw.extend_from_slice(value);
        }
        raw
    }

    fn decode_raw(raw: &[u8]) -> Result<HeaderList, HeaderError> {
        HeaderDecoder::new().decode(&compress_raw(raw))
    }

    #[test]
    fn malformed_blocks_are_errors() {
        assert!(matches!(
            decode_raw(&raw_block(&[(b"a", b"b")], 1000)),
            Err(HeaderError::BadCount(1000))
        ));
        assert!(matches!(
            decode_raw(&raw_block(&[(b"a", b"b")], u32::MAX)),
            Err(HeaderError::BadCount(u32::MAX))
        ));
        assert!(matches!(
            decode_raw(&[0, 0]),
            Err(HeaderError::Short {
                field: "pair count"
            })
        ));
        let mut cut = raw_block(&[(b"name", b"")], 1);
        cut.truncate(cut.len() - 4);
        cut.extend_from_slice(&100u32.to_be_bytes());
        cut.extend_from_slice(b"value");
        assert!(matches!(
            decode_raw(&cut),
            Err(HeaderError::Short {
                field: "header value"
            })
        ));
        let mut long = raw_block(&[(b"name", b"value")], 1);
        long.extend_from_slice(b"junk");
        assert!(matches!(
            decode_raw(&long),
            Err(HeaderError::TrailingBytes(4))
        ));
        assert!(matches!(
            decode_raw(&raw_block(&[(b"", b"v")], 1)),
            Err(HeaderError::EmptyName)
        ));
        assert!(matches!(
            decode_raw(&raw_block(&[(b"Upper", b"v")], 1)),
            Err(HeaderError::UppercaseName(name)) if name == "Upper"
        ));
        assert!(matches!(
            decode_raw(&raw_block(&[(b"a", b"1"), (b"a", b"2")], 2)),
            Err(HeaderError::DuplicateName(name)) if name == "a"
        ));
        assert!(matches!(
            decode_raw(&raw_block(&[(b"a", b"x\0\0y")], 1)),
            Err(HeaderError::EmptyValuePart { .. })
        ));
        assert!(matches!(
            decode_raw(&raw_block(&[(b"a", b"\xff")], 1)),
            Err(HeaderError::NonUtf8Value { .. })
        ));
        assert!(matches!(
            decode_raw(&vec![0; 2 << 20]),
            Err(HeaderError::TooLarge)
        ));
    }

    #[test]
    fn broken_zlib_data_is_an_error() {
        assert!(HeaderDecoder::new().decode(b"not zlib at all").is_err());
        let block = HeaderEncoder::new()
            .encode(&pairs(&[("streamtype", "stdin")]))
            .unwrap();
        assert!(matches!(
            HeaderDecoder::new().decode(&block[..block.len() / 2]),
            Err(HeaderError::Truncated | HeaderError::Short { .. })
        ));
        let mut garbage = block.to_vec();
        garbage.extend_from_slice(&[0xff; 16]);
        assert!(HeaderDecoder::new().decode(&garbage).is_err());
        // An empty block is a segment with no data, not a header list.
        assert!(HeaderDecoder::new().decode(&[]).is_err());
    }

    #[test]
    fn random_blocks_never_panic() {
        let mut rng = StdRng::seed_from_u64(42);
        let valid = HeaderEncoder::new()
            .encode(&pairs(&[("streamtype", "data"), ("port", "80")]))
            .unwrap();
        for case in 0..5_000 {
            let block: Vec<u8> = if case % 2 == 0 {
                let len = rng.random_range(0..128);
                (0..len).map(|_| rng.random()).collect()
            } else {
                let mut block = valid.to_vec();
                let index = rng.random_range(0..block.len());
                block[index] = rng.random();
                block
            };
            let _ = HeaderDecoder::new().decode(&block);
        }
    }
}
