//! The CRI container log format, as kubelet reads it:
//! `<RFC3339Nano timestamp> <stdout|stderr> <F|P> <message>\n`.
//!
//! The splitting follows containerd's CRI log writer so that kubelet and log
//! collectors see the same lines from berth as from containerd: a line ends at
//! `\n` (a `\r` right before it is dropped), a line longer than the limit is cut
//! into `P` (partial) entries of exactly the limit followed by an `F` (full) entry
//! with the rest, and data still unterminated when the stream ends is written as
//! a `P` entry.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest message of one log entry; containerd's default `max_container_log_line_size`.
pub const MAX_LOG_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTag {
    Full,
    Partial,
}

impl LogTag {
    fn as_str(self) -> &'static str {
        match self {
            LogTag::Full => "F",
            LogTag::Partial => "P",
        }
    }
}

/// Cuts one output stream into log entries. It holds the unterminated tail of the
/// stream between reads, never more than `max_line` bytes of it.
pub struct LineSplitter {
    pending: Vec<u8>,
    max_line: usize,
}

impl LineSplitter {
    pub fn new(max_line: usize) -> Self {
        LineSplitter { pending: Vec::new(), max_line: max_line.max(1) }
    }

    /// Feeds the next bytes of the stream; `emit` receives every entry completed by them.
    pub fn feed(&mut self, mut data: &[u8], emit: &mut impl FnMut(LogTag, &[u8])) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(newline) => {
                    let mut line = &data[..newline];
                    // containerd drops the `\r` of a `\r\n` ending, even when the
                    // `\r` arrived in an earlier read than the `\n`.
                    if let Some(stripped) = line.strip_suffix(b"\r") {
                        line = stripped;
                    } else if line.is_empty() && self.pending.last() == Some(&b'\r') {
                        self.pending.pop();
                    }
                    self.append(line, emit);
                    emit(LogTag::Full, &self.pending);
                    self.pending.clear();
                    data = &data[newline + 1..];
                }
                None => {
                    self.append(data, emit);
                    data = &[];
                }
            }
        }
    }

    /// Ends the stream: an unterminated tail becomes a partial entry.
    pub fn finish(&mut self, emit: &mut impl FnMut(LogTag, &[u8])) {
        if !self.pending.is_empty() {
            emit(LogTag::Partial, &self.pending);
            self.pending.clear();
        }
    }

    fn append(&mut self, mut data: &[u8], emit: &mut impl FnMut(LogTag, &[u8])) {
        while self.pending.len() + data.len() > self.max_line {
            let take = self.max_line - self.pending.len();
            self.pending.extend_from_slice(&data[..take]);
            emit(LogTag::Partial, &self.pending);
            self.pending.clear();
            data = &data[take..];
        }
        self.pending.extend_from_slice(data);
    }
}

/// A container's CRI log file, shared by its stdout and stderr copiers. Each entry
/// is one `write` on an `O_APPEND` descriptor, so entries of the two streams never
/// interleave inside a line.
pub struct CriLogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl CriLogFile {
    pub fn open(path: &Path) -> io::Result<CriLogFile> {
        Ok(CriLogFile { path: path.to_path_buf(), file: Mutex::new(open_log(path)?) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the path again, for after kubelet rotated (renamed) the file; entries
    /// written from now on go to the new file.
    pub fn reopen(&self) -> io::Result<()> {
        let fresh = open_log(&self.path)?;
        *self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
        Ok(())
    }

    pub fn write_entry(&self, stream: LogStream, tag: LogTag, message: &[u8]) -> io::Result<()> {
        let entry = format_entry(SystemTime::now(), stream, tag, message);
        self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).write_all(&entry)
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

pub fn format_entry(time: SystemTime, stream: LogStream, tag: LogTag, message: &[u8]) -> Vec<u8> {
    let timestamp = rfc3339_nano(time);
    let mut entry = Vec::with_capacity(timestamp.len() + message.len() + 12);
    entry.extend_from_slice(timestamp.as_bytes());
    entry.push(b' ');
    entry.extend_from_slice(stream.as_str().as_bytes());
    entry.push(b' ');
    entry.extend_from_slice(tag.as_str().as_bytes());
    entry.push(b' ');
    entry.extend_from_slice(message);
    entry.push(b'\n');
    entry
}

/// Formats a time in UTC as Go's `time.RFC3339Nano` does (the layout containerd
/// writes): trailing zeros of the fraction are dropped, and so is a zero fraction.
pub fn rfc3339_nano(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let of_day = seconds % 86_400;
    let mut text = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    );
    let nanos = since_epoch.subsec_nanos();
    if nanos != 0 {
        let fraction = format!("{nanos:09}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    text.push('Z');
    text
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day),
/// counting in 400-year eras so that every era has the same shape.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn split(max_line: usize, chunks: &[&[u8]]) -> Vec<(LogTag, String)> {
        let mut splitter = LineSplitter::new(max_line);
        let mut entries = Vec::new();
        let mut emit = |tag: LogTag, message: &[u8]| entries.push((tag, String::from_utf8_lossy(message).into_owned()));
        for chunk in chunks {
            splitter.feed(chunk, &mut emit);
        }
        splitter.finish(&mut emit);
        entries
    }

    fn full(message: &str) -> (LogTag, String) {
        (LogTag::Full, message.to_string())
    }

    fn partial(message: &str) -> (LogTag, String) {
        (LogTag::Partial, message.to_string())
    }

    #[test]
    fn lines_are_full_entries_and_an_unterminated_tail_is_partial() {
        assert_eq!(split(16, &[b"one\ntwo\n\nthr", b"ee\nfour"]), [full("one"), full("two"), full(""), full("three"), partial("four")]);
    }

    #[test]
    fn carriage_return_before_newline_is_dropped_even_across_reads() {
        assert_eq!(split(16, &[b"dos\r\n", b"split\r", b"\n", b"keep\rme\n"]), [full("dos"), full("split"), full("keep\rme")]);
    }

    #[test]
    fn long_lines_are_cut_at_the_limit_into_partials_ending_with_a_full() {
        assert_eq!(split(4, &[b"abcd\n"]), [full("abcd")]);
        assert_eq!(split(4, &[b"abcde\n"]), [partial("abcd"), full("e")]);
        assert_eq!(split(4, &[b"ab", b"cdefgh", b"ij\n"]), [partial("abcd"), partial("efgh"), full("ij")]);
        assert_eq!(split(4, &[b"abcdefgh\n"]), [partial("abcd"), full("efgh")]);
        assert_eq!(split(4, &[b"abcdefg"]), [partial("abcd"), partial("efg")]);
    }

    #[test]
    fn entry_layout_matches_the_cri_format() {
        let time = UNIX_EPOCH + Duration::new(1_700_000_000, 120_000_000);
        let entry = format_entry(time, LogStream::Stderr, LogTag::Partial, b"hello world");
        assert_eq!(String::from_utf8(entry).unwrap(), "2023-11-14T22:13:20.12Z stderr P hello world\n");
    }

    #[test]
    fn timestamps_follow_go_rfc3339_nano() {
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_nano(UNIX_EPOCH + Duration::new(951_782_400, 1)), "2000-02-29T00:00:00.000000001Z");
        assert_eq!(rfc3339_nano(UNIX_EPOCH + Duration::new(4_107_542_399, 999_999_999)), "2100-02-28T23:59:59.999999999Z");
        assert_eq!(rfc3339_nano(UNIX_EPOCH + Duration::new(1_709_251_199, 500_000_000)), "2024-02-29T23:59:59.5Z");
    }

    #[test]
    fn reopen_follows_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctr.log");
        let log = CriLogFile::open(&path).unwrap();
        log.write_entry(LogStream::Stdout, LogTag::Full, b"before").unwrap();
        std::fs::rename(&path, dir.path().join("ctr.log.1")).unwrap();
        log.reopen().unwrap();
        log.write_entry(LogStream::Stdout, LogTag::Full, b"after").unwrap();
        let rotated = std::fs::read_to_string(dir.path().join("ctr.log.1")).unwrap();
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(rotated.ends_with(" stdout F before\n"), "{rotated}");
        assert!(current.ends_with(" stdout F after\n"), "{current}");
    }
}
