//! What both WebSocket transports (rowcast's own, `transport::ws`, and
//! Socket.IO's, `transport::socketio::ws`) are built on: `handshake` (the
//! RFC 6455 upgrade, keeping the TCP socket), `stream` (the socket as
//! tungstenite sees it, written through `transport::wire`, the writer shared
//! with the publisher) and their settings (`config`).

pub(in crate::transport) mod handshake;
pub(in crate::transport) mod stream;

use super::App;

/// The WebSocket settings of both WebSocket transports (raw and Socket.IO's):
/// `--max-frame` for frames and messages, and small explicit buffers, since
/// tungstenite's defaults reserve 128 KiB per connection. The read buffer
/// (`read_buffer` bytes) is zero-filled to its capacity on the first read, so
/// all of it is resident; clients send only small control messages (a larger
/// frame grows it on demand): at 4 KiB it was a third of an idle connection's
/// RSS. No write buffer: every frame tungstenite writes goes whole to `wire`.
pub(crate) fn config(app: &App, read_buffer: usize) -> tungstenite::protocol::WebSocketConfig {
    let max = app.gate.limits().max_frame;
    tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}
