//! Raw TCP sockets: clients that stop reading, or send half a request.

use crate::common::ARRIVAL;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection with a 4 KiB receive buffer: once it stops reading, the
/// server's writes to it stall quickly.
pub(crate) async fn small_window(addr: SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    sock.connect(addr).await.expect("connect")
}

/// Sends `GET path` on a `small_window` connection and never reads the answer.
pub(crate) async fn stalled_get(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = small_window(addr).await;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("send the request");
    s
}

/// Reads until the server closes the connection (EOF or reset) and returns
/// what it sent; panics if it does not close within the arrival bound.
pub(crate) async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    tokio::time::timeout(ARRIVAL, async {
        let mut chunk = vec![0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the server closes the connection");
    buf
}
