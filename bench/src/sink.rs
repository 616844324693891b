//! A trace collector that takes everything: an HTTP/1.1 server on
//! 127.0.0.1 answering each POST with 200 and an empty body (an empty
//! OTLP response), keeping connections alive, and counting the requests
//! and bytes. The `traces` mode points the host's OTLP/HTTP export at it,
//! so what tracing costs the host is measured without a collector's own
//! work on the same cores.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the sink took.
#[derive(Debug, Default)]
pub struct Taken {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
}

/// Starts the sink; its base URL (for `OTEL_EXPORTER_OTLP_ENDPOINT`) and
/// its counts. It serves until the process ends.
pub fn start() -> Result<(String, Arc<Taken>), String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot listen for spans: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("the sink's address: {e}"))?
        .port();
    let taken = Arc::new(Taken::default());
    let counts = taken.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counts = counts.clone();
            std::thread::spawn(move || serve(stream, &counts));
        }
    });
    Ok((format!("http://127.0.0.1:{port}"), taken))
}

/// Answers requests on one connection until it closes.
fn serve(stream: TcpStream, taken: &Taken) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        taken.requests.fetch_add(1, Ordering::Relaxed);
        taken.bytes.fetch_add(length as u64, Ordering::Relaxed);
        let answer =
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}
