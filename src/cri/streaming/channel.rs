//! Kubernetes' WebSocket channel protocols: every message carries one stream's
//! bytes, prefixed by the stream's channel number (binary protocols) or by that
//! number as an ASCII digit before base64 text (base64 protocols).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: the client closed the stream named by the message's one data byte.
pub const CLOSE: u8 = 255;

/// A negotiated channel protocol, as named in `Sec-WebSocket-Protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelProtocol {
    V5,
    V4,
    V4Base64,
    V1,
    V1Base64,
}

impl ChannelProtocol {
    /// The server's preference order when a client offers several.
    const SUPPORTED: [(&'static str, ChannelProtocol); 5] = [
        ("v5.channel.k8s.io", ChannelProtocol::V5),
        ("v4.channel.k8s.io", ChannelProtocol::V4),
        ("v4.base64.channel.k8s.io", ChannelProtocol::V4Base64),
        ("channel.k8s.io", ChannelProtocol::V1),
        ("base64.channel.k8s.io", ChannelProtocol::V1Base64),
    ];

    /// Picks from the comma-separated offers of `Sec-WebSocket-Protocol`. A
    /// client that offers none speaks the original binary protocol.
    pub fn negotiate(offered: Option<&str>) -> Option<ChannelProtocol> {
        let Some(offered) = offered else { return Some(ChannelProtocol::V1) };
        let offers: Vec<&str> = offered.split(',').map(str::trim).collect();
        Self::SUPPORTED.iter().find(|(name, _)| offers.contains(name)).map(|&(_, protocol)| protocol)
    }

    /// Port-forward speaks the v4 protocols only (each channel's first message
    /// names its port), or the binary one to a client that offers none.
    pub fn negotiate_port_forward(offered: Option<&str>) -> Option<ChannelProtocol> {
        let Some(offered) = offered else { return Some(ChannelProtocol::V1) };
        let offers: Vec<&str> = offered.split(',').map(str::trim).collect();
        [ChannelProtocol::V4, ChannelProtocol::V4Base64].into_iter().find(|protocol| offers.contains(&protocol.name()))
    }

    pub fn name(self) -> &'static str {
        Self::SUPPORTED.iter().find(|(_, protocol)| *protocol == self).map_or("channel.k8s.io", |(name, _)| name)
    }

    fn is_base64(self) -> bool {
        matches!(self, ChannelProtocol::V4Base64 | ChannelProtocol::V1Base64)
    }

    /// Whether the error channel carries a metav1.Status (v4 on) or plain text.
    pub fn structured_status(self) -> bool {
        !matches!(self, ChannelProtocol::V1 | ChannelProtocol::V1Base64)
    }

    pub fn has_close_signal(self) -> bool {
        self == ChannelProtocol::V5
    }

    pub fn encode(self, channel: u8, data: &[u8]) -> Message {
        if self.is_base64() {
            let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
            text.push(char::from(b'0' + channel));
            STANDARD.encode_string(data, &mut text);
            Message::text(text)
        } else {
            let mut frame = Vec::with_capacity(1 + data.len());
            frame.push(channel);
            frame.extend_from_slice(data);
            Message::binary(frame)
        }
    }

    /// A data message's channel and bytes. `None` for control messages and for
    /// data messages this protocol does not frame that way (empty, bad base64).
    pub fn decode(self, message: &Message) -> Option<(u8, Bytes)> {
        match message {
            Message::Binary(frame) if !self.is_base64() => {
                let (&channel, _) = frame.split_first()?;
                Some((channel, frame.slice(1..)))
            }
            Message::Text(text) if self.is_base64() => {
                let (&digit, rest) = text.as_bytes().split_first()?;
                let channel = digit.checked_sub(b'0').filter(|&c| c <= 9)?;
                Some((channel, Bytes::from(STANDARD.decode(rest).ok()?)))
            }
            _ => None,
        }
    }
}

/// Ends a stream's WebSocket the way Kubernetes clients take as the end of all
/// its channels: a Close frame with the normal-closure code (a bare Close frame
/// reads to them as an error).
pub async fn close_normally<S>(sink: &mut S) -> Result<(), S::Error>
where
    S: futures::Sink<Message> + Unpin,
{
    use futures::SinkExt;
    let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
    sink.send(Message::Close(Some(frame))).await?;
    sink.close().await
}

/// A terminal size as the resize channel sends it: `{"Width":80,"Height":24}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// The error channel's final message about a command's end, in the form
/// Kubernetes' own streaming server sends it.
/// `structured`: a metav1.Status (protocol v4 on) rather than plain text.
pub fn exit_status(structured: bool, exit_code: i32) -> Option<Vec<u8>> {
    let message = format!("command terminated with non-zero exit code: exit status {exit_code}");
    if !structured {
        return (exit_code != 0).then(|| message.into_bytes());
    }
    let status = if exit_code == 0 {
        serde_json::json!({"metadata": {}, "status": "Success"})
    } else {
        serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": exit_code.to_string()}]},
        })
    };
    Some(status.to_string().into_bytes())
}

/// The error channel's message when the command could not run at all.
pub fn failure_status(structured: bool, message: &str) -> Vec<u8> {
    if !structured {
        return message.as_bytes().to_vec();
    }
    serde_json::json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_prefers_the_newest_offered_protocol() {
        let offers = "v4.channel.k8s.io, v5.channel.k8s.io,v3.channel.k8s.io";
        assert_eq!(ChannelProtocol::negotiate(Some(offers)), Some(ChannelProtocol::V5));
        assert_eq!(ChannelProtocol::negotiate(Some("base64.channel.k8s.io")), Some(ChannelProtocol::V1Base64));
        assert_eq!(ChannelProtocol::negotiate(Some("v4.channel.k8s.io")).map(ChannelProtocol::name), Some("v4.channel.k8s.io"));
        assert_eq!(ChannelProtocol::negotiate(Some("SPDY/3.1+portforward.k8s.io")), None);
        assert_eq!(ChannelProtocol::negotiate(None), Some(ChannelProtocol::V1));
        assert_eq!(ChannelProtocol::negotiate_port_forward(Some("v5.channel.k8s.io, v4.channel.k8s.io")), Some(ChannelProtocol::V4));
        assert_eq!(ChannelProtocol::negotiate_port_forward(Some("v4.base64.channel.k8s.io")), Some(ChannelProtocol::V4Base64));
        assert_eq!(ChannelProtocol::negotiate_port_forward(Some("v5.channel.k8s.io")), None);
        assert_eq!(ChannelProtocol::negotiate_port_forward(None), Some(ChannelProtocol::V1));
    }

    #[test]
    fn binary_frames_carry_the_channel_byte_first() {
        let message = ChannelProtocol::V5.encode(STDOUT, b"hi\n");
        assert_eq!(message, Message::binary(vec![1, b'h', b'i', b'\n']));
        assert_eq!(ChannelProtocol::V5.decode(&message), Some((STDOUT, Bytes::from_static(b"hi\n"))));
        assert_eq!(ChannelProtocol::V5.decode(&Message::binary(vec![CLOSE, STDIN])), Some((CLOSE, Bytes::from_static(&[STDIN]))));
        assert_eq!(ChannelProtocol::V4.decode(&Message::binary(Vec::new())), None);
        assert_eq!(ChannelProtocol::V4.decode(&Message::text("0aGk=")), None);
    }

    #[test]
    fn base64_frames_carry_the_channel_digit_and_base64_text() {
        let message = ChannelProtocol::V1Base64.encode(STDERR, b"hi");
        assert_eq!(message, Message::text("2aGk="));
        assert_eq!(ChannelProtocol::V1Base64.decode(&Message::text("0aGk=")), Some((STDIN, Bytes::from_static(b"hi"))));
        assert_eq!(ChannelProtocol::V1Base64.decode(&Message::text("0!!")), None);
        assert_eq!(ChannelProtocol::V1Base64.decode(&Message::text("x")), None);
        assert_eq!(ChannelProtocol::V1Base64.decode(&Message::text("")), None);
    }

    #[test]
    fn resize_messages_parse_as_kubernetes_sends_them() {
        let size: TerminalSize = serde_json::from_slice(br#"{"Width":120,"Height":40}"#).unwrap();
        assert_eq!(size, TerminalSize { width: 120, height: 40 });
        assert!(serde_json::from_slice::<TerminalSize>(br#"{"Width":-1}"#).is_err());
    }

    #[test]
    fn exit_statuses_match_kubernetes() {
        let success: serde_json::Value = serde_json::from_slice(&exit_status(true, 0).unwrap()).unwrap();
        assert_eq!(success, serde_json::json!({"metadata": {}, "status": "Success"}));
        let failure: serde_json::Value = serde_json::from_slice(&exit_status(true, 3).unwrap()).unwrap();
        assert_eq!(failure["status"], "Failure");
        assert_eq!(failure["reason"], "NonZeroExitCode");
        assert_eq!(failure["details"]["causes"], serde_json::json!([{"reason": "ExitCode", "message": "3"}]));
        assert_eq!(exit_status(false, 0), None);
        assert_eq!(exit_status(false, 2).unwrap(), b"command terminated with non-zero exit code: exit status 2");
    }
}
