//! Child processes: `rowcast serve` for tests that read the server's memory
//! from /proc, limit its descriptors or kill it; the output of any child.

use crate::common::wait_ready;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

/// A child process, killed (and reaped) when dropped.
pub(crate) struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port (free when asked: another process may take it before use).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `rowcast serve` in a child process, killed when dropped.
pub(crate) struct ServeProcess {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl ServeProcess {
    /// `rowcast serve --database-url url --listen 127.0.0.1:<free port> args…`
    /// (warnings logged to stderr), ready.
    pub(crate) async fn start(url: &str, args: &[&str]) -> ServeProcess {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        ServeProcess::start_at(url, addr, args).await
    }

    /// `start` on a given address: a node that comes back where it was.
    pub(crate) async fn start_at(url: &str, addr: SocketAddr, args: &[&str]) -> ServeProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_rowcast"))
            .args(["serve", "--database-url", url])
            .args(["--listen", &addr.to_string()])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn rowcast serve");
        let server = ServeProcess {
            proc: Proc(child),
            addr,
        };
        wait_ready(&server.base_url()).await;
        server
    }

    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.proc.0.id()
    }
}

/// Sends SIGINT to `child` (Ctrl-C: a clean stop, unlike `Child::kill`).
pub(crate) fn interrupt(child: &Child) {
    send_signal(child, libc::SIGINT);
}

/// Sends `sig` to `child`.
pub(crate) fn send_signal(child: &Child, sig: libc::c_int) {
    #[allow(unsafe_code)]
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// The lines a child writes to `out` (its stdout or stderr), as they come,
/// read on a thread of their own.
pub(crate) fn lines_of(out: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    forward_lines(out, move |line| tx.send(line).is_ok());
    rx
}

/// `lines_of` for a test that awaits them (with a timeout) instead of blocking.
pub(crate) fn lines_of_async(
    out: impl Read + Send + 'static,
) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    forward_lines(out, move |line| tx.send(line).is_ok());
    rx
}

/// Hands each line of `out` to `send` on a thread of its own, until the
/// output ends or `send` answers false (nobody listens any more).
fn forward_lines(
    out: impl Read + Send + 'static,
    mut send: impl FnMut(String) -> bool + Send + 'static,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if !send(line) {
                return;
            }
        }
    });
}

/// Resident memory of process `pid` in KiB (0 if it is gone).
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
