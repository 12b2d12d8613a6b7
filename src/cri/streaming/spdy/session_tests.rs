//! Sessions driven by a minimal SPDY client written against the frame codec, over an
//! in-memory duplex pipe.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::time::timeout;

use super::super::frame::{self, Frame, goaway_status, rst_status};
use super::super::headers::{HeaderDecoder, HeaderEncoder};
use super::*;

const PATIENCE: Duration = Duration::from_secs(10);
/// How long "nothing happens" is watched for.
const QUIET: Duration = Duration::from_millis(300);

struct TestClient {
    reader: ReadHalf<DuplexStream>,
    writer: WriteHalf<DuplexStream>,
    buf: BytesMut,
    encoder: HeaderEncoder,
    decoder: HeaderDecoder,
}

impl TestClient {
    async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        frame.encode(&mut out).unwrap();
        self.writer.write_all(&out).await.unwrap();
    }

    async fn open(&mut self, stream_id: u32, stream_type: &str, fin: bool) {
        let header_block = self
            .encoder
            .encode(&[("streamtype".to_string(), stream_type.to_string())])
            .unwrap();
        self.send(Frame::SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin,
            unidirectional: false,
            header_block,
        })
        .await;
    }

    async fn data(&mut self, stream_id: u32, data: &[u8], fin: bool) {
        self.send(Frame::Data {
            stream_id,
            fin,
            data: Bytes::copy_from_slice(data),
        })
        .await;
    }

    /// The next frame, or `None` at end of connection.
    async fn try_next(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = frame::parse(&mut self.buf).unwrap() {
                return Some(frame);
            }
            if self.reader.read_buf(&mut self.buf).await.unwrap() == 0 {
                return None;
            }
        }
    }

    async fn next(&mut self) -> Frame {
        timeout(PATIENCE, self.try_next())
            .await
            .expect("no frame from the server in time")
            .expect("server closed the connection")
    }

    async fn expect_reply(&mut self, stream_id: u32) -> HeaderList {
        match self.next().await {
            Frame::SynReply {
                stream_id: id,
                header_block,
                ..
            } if id == stream_id => self.decoder.decode(&header_block).unwrap(),
            other => panic!("expected SYN_REPLY for {stream_id}, got {other:?}"),
        }
    }
}

fn start(
    config: SessionConfig,
) -> (
    SpdySession,
    tokio::task::JoinHandle<Result<(), SessionError>>,
    TestClient,
) {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let (session, driver) = SpdySession::server_with_config(server_io, config);
    let driver = tokio::spawn(driver);
    let (reader, writer) = tokio::io::split(client_io);
    let client = TestClient {
        reader,
        writer,
        buf: BytesMut::new(),
        encoder: HeaderEncoder::new(),
        decoder: HeaderDecoder::new(),
    };
    (session, driver, client)
}

async fn accept(session: &mut SpdySession) -> SpdyStream {
    timeout(PATIENCE, session.accept())
        .await
        .unwrap()
        .expect("stream")
}

async fn read_to_end(stream: &SpdyStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = timeout(PATIENCE, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            return all;
        }
        all.extend_from_slice(&buf[..n]);
    }
}

fn headers(list: &[(&str, &str)]) -> HeaderList {
    list.iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

#[tokio::test]
async fn three_streams_like_remotecommand_carry_data_both_ways() {
    let (mut session, driver, mut client) = start(SessionConfig::default());
    client.open(1, "error", false).await;
    client.open(3, "stdout", false).await;
    client.open(5, "stdin", false).await;

    let error = accept(&mut session).await;
    let stdout = accept(&mut session).await;
    let stdin = accept(&mut session).await;
    assert_eq!((error.id, stdout.id, stdin.id), (1, 3, 5));
    assert_eq!(stdout.header("StreamType"), Some("stdout"));
    assert_eq!(stdin.headers, headers(&[("streamtype", "stdin")]));

    for stream in [&error, &stdout, &stdin] {
        stream.reply(&[], false).await.unwrap();
    }
    for id in [1, 3, 5] {
        assert!(client.expect_reply(id).await.is_empty());
    }

    client.data(5, b"echo ", false).await;
    client.data(5, b"hello", true).await;
    assert_eq!(read_to_end(&stdin).await, b"echo hello");
    // After the client's FIN the stream stays readable as end-of-file.
    assert_eq!(stdin.read(&mut [0u8; 8]).await.unwrap(), 0);

    stdout.write(b"hello\n").await.unwrap();
    stdout.close().await.unwrap();
    assert!(stdout.write(b"late").await.is_err(), "write after FIN");
    error.write(br#"{"status":"Success"}"#).await.unwrap();
    error.close().await.unwrap();

    let mut got: Vec<(u32, Vec<u8>, bool)> = Vec::new();
    while got.iter().filter(|(_, _, fin)| *fin).count() < 2 {
        match client.next().await {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => got.push((stream_id, data.to_vec(), fin)),
            other => panic!("unexpected {other:?}"),
        }
    }
    let stream_bytes = |id: u32| -> Vec<u8> {
        got.iter()
            .filter(|(stream_id, _, _)| *stream_id == id)
            .flat_map(|(_, data, _)| data.clone())
            .collect()
    };
    assert_eq!(stream_bytes(3), b"hello\n");
    assert_eq!(stream_bytes(1), br#"{"status":"Success"}"#);

    // Every handle gone: the server says GOAWAY and the driver ends cleanly.
    drop((error, stdout, stdin, session));
    let mut saw_goaway = false;
    while let Some(frame) = timeout(PATIENCE, client.try_next()).await.unwrap() {
        match frame {
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                assert_eq!((last_good_stream_id, status), (5, goaway_status::OK));
                saw_goaway = true;
            }
            // Stdin was never written by the server, so dropping it cancels it.
            Frame::RstStream {
                stream_id: 5,
                status,
            } => assert_eq!(status, rst_status::CANCEL),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_goaway);
    driver.await.unwrap().unwrap();
}

#[tokio::test]
async fn writer_waits_for_the_peers_window_updates() {
    let (mut session, driver, mut client) = start(SessionConfig {
        enforce_peer_window: true,
    });
    client.open(1, "stdout", false).await;
    let stream = Arc::new(accept(&mut session).await);
    let payload: Vec<u8> = (0..1 << 20).map(|index: u32| (index % 251) as u8).collect();
    let writer = {
        let stream = Arc::clone(&stream);
        let payload = payload.clone();
        tokio::spawn(async move { stream.write(&payload).await })
    };

    let mut received = Vec::new();
    let mut credited = DEFAULT_WINDOW as usize;
    while received.len() < payload.len() {
        // Take everything the server may send within the current window...
        while received.len() < credited.min(payload.len()) {
            match client.next().await {
                Frame::Data {
                    stream_id: 1, data, ..
                } => received.extend_from_slice(&data),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            received.len(),
            credited.min(payload.len()),
            "server overran the window"
        );
        // ...then it must stall until the window opens again.
        if received.len() < payload.len() {
            assert!(
                timeout(QUIET, client.try_next()).await.is_err(),
                "data beyond the window"
            );
            assert!(!writer.is_finished());
            client
                .send(Frame::WindowUpdate {
                    stream_id: 1,
                    delta: 128 * 1024,
                })
                .await;
            credited += 128 * 1024;
        }
    }
    timeout(PATIENCE, writer).await.unwrap().unwrap().unwrap();
    assert_eq!(received, payload);
    drop((stream, session));
    drop(client);
    let _ = timeout(PATIENCE, driver).await.unwrap();
}

#[tokio::test]
async fn settings_initial_window_size_changes_the_send_window() {
    let (mut session, _driver, mut client) = start(SessionConfig {
        enforce_peer_window: true,
    });
    client
        .send(Frame::Settings {
            clear_persisted: false,
            entries: vec![frame::Setting {
                flags: 0,
                id: frame::SETTINGS_INITIAL_WINDOW_SIZE,
                value: 1000,
            }],
        })
        .await;
    client.open(1, "stdout", false).await;
    let stream = accept(&mut session).await;
    let write = tokio::spawn(async move {
        stream.write(&[7u8; 1500]).await.unwrap();
        stream
    });
    match client.next().await {
        Frame::Data { data, .. } => assert_eq!(data.len(), 1000),
        other => panic!("unexpected {other:?}"),
    }
    assert!(timeout(QUIET, client.try_next()).await.is_err());
    client
        .send(Frame::WindowUpdate {
            stream_id: 1,
            delta: 500,
        })
        .await;
    match client.next().await {
        Frame::Data { data, .. } => assert_eq!(data.len(), 500),
        other => panic!("unexpected {other:?}"),
    }
    timeout(PATIENCE, write).await.unwrap().unwrap();
}

/// A client that honours the 64 KiB window sends 1 MiB to a slow reader: the server
/// credits the window only as the application reads.
#[tokio::test]
async fn slow_reader_gets_window_updates_as_it_reads() {
    let (mut session, _driver, mut client) = start(SessionConfig::default());
    client.open(1, "stdin", false).await;
    let stream = accept(&mut session).await;
    let reader = tokio::spawn(async move {
        let mut total = 0usize;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                return total;
            }
            total += n;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });

    let total = 1 << 20;
    let mut sent = 0usize;
    let mut window = DEFAULT_WINDOW as i64;
    let mut updates = 0;
    while sent < total {
        if window == 0 {
            match client.next().await {
                Frame::WindowUpdate {
                    stream_id: 1,
                    delta,
                } => {
                    window += i64::from(delta);
                    updates += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
            continue;
        }
        let chunk = (window as usize).min(16 * 1024).min(total - sent);
        let fin = sent + chunk == total;
        client.data(1, &vec![1u8; chunk], fin).await;
        sent += chunk;
        window -= chunk as i64;
    }
    assert_eq!(timeout(PATIENCE, reader).await.unwrap().unwrap(), total);
    // 1 MiB through a 64 KiB window needs at least 15 credits.
    assert!(updates >= 15, "{updates} window updates");
}

/// kubectl and crictl (moby/spdystream) ignore windows; the session then stops reading
/// the socket instead of buffering, so memory stays bounded and the sender blocks.
#[tokio::test]
async fn peer_ignoring_the_window_is_pushed_back_by_the_socket() {
    let (mut session, _driver, mut client) = start(SessionConfig::default());
    client.open(1, "stdin", false).await;
    let stream = accept(&mut session).await;
    let TestClient { mut writer, .. } = client;
    let blast = tokio::spawn(async move {
        let mut out = BytesMut::new();
        for _ in 0..64 {
            Frame::Data {
                stream_id: 1,
                fin: false,
                data: Bytes::from(vec![2u8; 16 * 1024]),
            }
            .encode(&mut out)
            .unwrap();
        }
        Frame::Data {
            stream_id: 1,
            fin: true,
            data: Bytes::new(),
        }
        .encode(&mut out)
        .unwrap();
        writer.write_all(&out).await.unwrap();
        writer
    });
    tokio::time::sleep(QUIET).await;
    assert!(!blast.is_finished(), "1 MiB was swallowed without a reader");
    let buffered = stream.inner.lock().streams[&1].received_len;
    assert!(
        buffered <= DEFAULT_WINDOW as usize + 16 * 1024,
        "{buffered} bytes buffered"
    );
    assert_eq!(read_to_end(&stream).await.len(), 1 << 20);
    timeout(PATIENCE, blast).await.unwrap().unwrap();
}

#[tokio::test]
async fn pings_are_echoed() {
    let (_session, _driver, mut client) = start(SessionConfig::default());
    client.send(Frame::Ping { id: 1 }).await;
    client.send(Frame::Ping { id: 2 }).await;
    client.send(Frame::Ping { id: 3 }).await;
    assert_eq!(client.next().await, Frame::Ping { id: 1 });
    // Even ids answer pings of the server, which sends none: they get no echo.
    assert_eq!(client.next().await, Frame::Ping { id: 3 });
}

#[tokio::test]
async fn client_goaway_ends_accept_but_not_open_streams() {
    let (mut session, _driver, mut client) = start(SessionConfig::default());
    client.open(1, "stdout", false).await;
    client
        .send(Frame::GoAway {
            last_good_stream_id: 0,
            status: goaway_status::OK,
        })
        .await;
    let stream = accept(&mut session).await;
    assert!(timeout(PATIENCE, session.accept()).await.unwrap().is_none());
    stream.write(b"still open").await.unwrap();
    match client.next().await {
        Frame::Data {
            stream_id: 1, data, ..
        } => assert_eq!(&data[..], b"still open"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn server_goaway_refuses_later_streams() {
    let (mut session, _driver, mut client) = start(SessionConfig::default());
    client.open(1, "stdout", false).await;
    let _stream = accept(&mut session).await;
    session.goaway();
    assert_eq!(
        client.next().await,
        Frame::GoAway {
            last_good_stream_id: 1,
            status: goaway_status::OK
        }
    );
    client.open(3, "stdout", false).await;
    assert_eq!(
        client.next().await,
        Frame::RstStream {
            stream_id: 3,
            status: rst_status::REFUSED_STREAM
        }
    );
}

#[tokio::test]
async fn client_reset_fails_reads_and_writes() {
    let (mut session, _driver, mut client) = start(SessionConfig::default());
    client.open(1, "stdout", false).await;
    let stream = accept(&mut session).await;
    client
        .send(Frame::RstStream {
            stream_id: 1,
            status: rst_status::CANCEL,
        })
        .await;
    let error = timeout(PATIENCE, stream.read(&mut [0u8; 16]))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(
        stream.write(b"x").await.unwrap_err().kind(),
        io::ErrorKind::ConnectionReset
    );
}

#[tokio::test]
async fn server_reset_reaches_the_client() {
    let (mut session, _driver, mut client) = start(SessionConfig::default());
    client.open(1, "stdout", false).await;
    let stream = accept(&mut session).await;
    stream.reset(rst_status::INTERNAL_ERROR);
    assert_eq!(
        client.next().await,
        Frame::RstStream {
            stream_id: 1,
            status: rst_status::INTERNAL_ERROR
        }
    );
    assert!(stream.write(b"x").await.is_err());
}

#[tokio::test]
async fn protocol_errors_end_the_session_with_goaway() {
    let (mut session, driver, mut client) = start(SessionConfig::default());
    client.open(1, "stdout", false).await;
    let stream = accept(&mut session).await;
    // A SPDY/2 control frame.
    client
        .writer
        .write_all(&[0x80, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 1])
        .await
        .unwrap();
    assert_eq!(
        client.next().await,
        Frame::GoAway {
            last_good_stream_id: 1,
            status: goaway_status::PROTOCOL_ERROR
        }
    );
    let result = timeout(PATIENCE, driver).await.unwrap().unwrap();
    assert!(matches!(
        result,
        Err(SessionError::Frame(FrameError::UnsupportedVersion(2)))
    ));
    assert_eq!(
        stream.read(&mut [0u8; 4]).await.unwrap_err().kind(),
        io::ErrorKind::ConnectionAborted
    );
    assert!(session.accept().await.is_none());
}

#[tokio::test]
async fn reused_or_even_stream_ids_are_protocol_errors() {
    for ids in [[1u32, 1], [3, 1], [1, 2]] {
        let (mut session, driver, mut client) = start(SessionConfig::default());
        client.open(ids[0], "a", false).await;
        let _first = accept(&mut session).await;
        client.open(ids[1], "b", false).await;
        let result = timeout(PATIENCE, driver).await.unwrap().unwrap();
        assert!(
            matches!(result, Err(SessionError::Protocol(_))),
            "{ids:?}: {result:?}"
        );
    }
}

#[tokio::test]
async fn garbage_header_block_is_a_protocol_error() {
    let (_session, driver, mut client) = start(SessionConfig::default());
    client
        .send(Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            header_block: Bytes::from_static(b"\x78\xf9garbage"),
        })
        .await;
    let result = timeout(PATIENCE, driver).await.unwrap().unwrap();
    assert!(
        matches!(result, Err(SessionError::Headers(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn data_for_unknown_streams_is_reset() {
    let (_session, _driver, mut client) = start(SessionConfig::default());
    client.data(9, b"who?", false).await;
    assert_eq!(
        client.next().await,
        Frame::RstStream {
            stream_id: 9,
            status: rst_status::INVALID_STREAM
        }
    );
}

#[tokio::test]
async fn client_disconnect_ends_reads() {
    let (mut session, driver, mut client) = start(SessionConfig::default());
    client.open(1, "stdin", false).await;
    let stream = accept(&mut session).await;
    drop(client);
    let error = timeout(PATIENCE, stream.read(&mut [0u8; 4]))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
    timeout(PATIENCE, driver).await.unwrap().unwrap().unwrap();
}
