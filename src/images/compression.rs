//! Layer codecs: which compression a layer blob uses (from its media type, or from
//! its first bytes when the media type is not trusted) and the streaming decoder
//! that turns the blob back into the tar stream the diff id is computed over.

use std::io::{self, Read};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

impl Compression {
    /// The compression a layer media type announces, or `None` when the media type
    /// is not a layer type berth can unpack.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            // Written by tools that save uncompressed Docker layers (docker save, crane).
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The compression whose magic number starts `prefix`; anything else is taken
    /// to be a plain tar (whose first block is a header, never one of these magics).
    pub fn detect(prefix: &[u8]) -> Compression {
        if prefix.starts_with(&GZIP_MAGIC) {
            Compression::Gzip
        } else if prefix.starts_with(&ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// Wraps the compressed stream `r` into a reader of the uncompressed bytes.
    ///
    /// Gzip is read as a sequence of members: parallel compressors (pigz, and the
    /// Go registries' tooling) emit several concatenated members, and stopping after
    /// the first would silently truncate the layer. Zstd frames are likewise read
    /// until the stream ends. The zstd window limit stays at the library default
    /// (128 MiB): a frame header asking for more is refused rather than letting a
    /// hostile blob make us allocate gigabytes.
    pub fn decoder<'a, R: Read + Send + 'a>(self, r: R) -> io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Compression::None => Box::new(r),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
        })
    }

    /// The suffix an OCI layer media type carries for this compression.
    pub fn media_type_suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => "+gzip",
            Compression::Zstd => "+zstd",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn sample_tar() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let data = b"layer contents ".repeat(1000);
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, "etc/motd", &data[..]).unwrap();
        builder.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn decode_all(compression: Compression, compressed: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        compression.decoder(compressed).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn gzip_round_trip_and_detection() {
        let tar = sample_tar();
        let compressed = gzip(&tar);
        assert_eq!(Compression::detect(&compressed), Compression::Gzip);
        assert_eq!(decode_all(Compression::Gzip, &compressed), tar);
    }

    #[test]
    fn multi_member_gzip_is_read_to_the_end() {
        let tar = sample_tar();
        let (first, second) = tar.split_at(tar.len() / 3);
        let mut compressed = gzip(first);
        compressed.extend(gzip(second));
        assert_eq!(decode_all(Compression::Gzip, &compressed), tar);
    }

    #[test]
    fn zstd_round_trip_and_detection_including_several_frames() {
        let tar = sample_tar();
        let compressed = zstd::encode_all(&tar[..], 3).unwrap();
        assert_eq!(Compression::detect(&compressed), Compression::Zstd);
        assert_eq!(decode_all(Compression::Zstd, &compressed), tar);

        let (first, second) = tar.split_at(tar.len() / 2);
        let mut framed = zstd::encode_all(first, 1).unwrap();
        framed.extend(zstd::encode_all(second, 19).unwrap());
        assert_eq!(decode_all(Compression::Zstd, &framed), tar);
    }

    #[test]
    fn plain_tar_is_detected_as_uncompressed_and_passed_through() {
        let tar = sample_tar();
        assert_eq!(Compression::detect(&tar), Compression::None);
        assert_eq!(Compression::detect(&[]), Compression::None);
        assert_eq!(Compression::detect(&[0x1f]), Compression::None);
        assert_eq!(decode_all(Compression::None, &tar), tar);
    }

    #[test]
    fn corrupt_gzip_is_an_error_not_a_short_stream() {
        let mut compressed = gzip(&sample_tar());
        let len = compressed.len();
        compressed[len - 6] ^= 0xff; // inside the CRC32 trailer
        let mut out = Vec::new();
        assert!(Compression::Gzip.decoder(&compressed[..]).unwrap().read_to_end(&mut out).is_err());
    }

    #[test]
    fn media_types_map_to_their_compression() {
        let cases = [
            ("application/vnd.oci.image.layer.v1.tar", Some(Compression::None)),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Some(Compression::Gzip)),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Some(Compression::Zstd)),
            ("application/vnd.oci.image.layer.nondistributable.v1.tar", Some(Compression::None)),
            ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", Some(Compression::Gzip)),
            ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", Some(Compression::Zstd)),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", Some(Compression::Gzip)),
            ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", Some(Compression::Gzip)),
            ("application/vnd.docker.image.rootfs.diff.tar", Some(Compression::None)),
            ("application/vnd.oci.image.config.v1+json", None),
            ("application/vnd.oci.image.layer.v1.tar+bzip2", None),
            ("", None),
        ];
        for (media_type, expected) in cases {
            assert_eq!(Compression::from_media_type(media_type), expected, "{media_type}");
        }
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let media_type = format!("application/vnd.oci.image.layer.v1.tar{}", compression.media_type_suffix());
            assert_eq!(Compression::from_media_type(&media_type), Some(compression));
        }
    }
}
