//! A TCP proxy in front of the test broker, for outages the tests switch
//! on and off without touching the broker: `cut` closes every connection
//! through it and refuses new ones (the port stops listening), `restore`
//! listens again on the same port, and `slow_down` makes it a slow broker
//! (each chunk, either way, waits before it is passed on).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: String,
    open: AtomicBool,
    ended: AtomicBool,
    /// How long each chunk waits before it is passed on, in ms.
    delay_ms: AtomicU64,
    /// Both sockets of every connection made through the proxy.
    sockets: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    /// A proxy on a free port of 127.0.0.1 to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            upstream: upstream.to_owned(),
            open: AtomicBool::new(true),
            ended: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            sockets: Mutex::new(Vec::new()),
        });
        let accepting = shared.clone();
        std::thread::spawn(move || accept_loop(listener, port, accepting));
        Proxy { port, shared }
    }

    /// An `amqp_url` through the proxy (guest, vhost `/`).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2F", self.port)
    }

    /// The broker is gone: every connection through the proxy is closed,
    /// on both sides, and new ones are refused.
    pub fn cut(&self) {
        self.shared.open.store(false, Ordering::SeqCst);
        for socket in self.shared.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// The broker is back.
    pub fn restore(&self) {
        self.shared.open.store(true, Ordering::SeqCst);
    }

    /// From now on each chunk, either way, waits `delay` before it is
    /// passed on: every request to the broker takes at least twice that.
    pub fn slow_down(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.delay_ms.store(millis, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.shared.ended.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(listener: TcpListener, port: u16, shared: Arc<Shared>) {
    let mut listener = Some(listener);
    while !shared.ended.load(Ordering::SeqCst) {
        let open = shared.open.load(Ordering::SeqCst);
        match (&listener, open) {
            // Refused while cut: nothing listens on the port.
            (Some(_), false) => listener = None,
            (None, true) => {
                listener = TcpListener::bind(("127.0.0.1", port)).ok();
                if listener.is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            _ => {}
        }
        let Some(active) = &listener else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        active.set_nonblocking(true).expect("nonblocking listener");
        match active.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                if let Ok(server) = TcpStream::connect(&shared.upstream) {
                    pipe(client, server, &shared);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn pipe(client: TcpStream, server: TcpStream, shared: &Arc<Shared>) {
    let mut sockets = shared.sockets.lock().unwrap();
    for socket in [&client, &server] {
        if let Ok(clone) = socket.try_clone() {
            sockets.push(clone);
        }
    }
    for (from, to) in [(&client, &server), (&server, &client)] {
        let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
            continue;
        };
        let shared = shared.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 16 * 1024];
            loop {
                match from.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(size) => {
                        let delay = shared.delay_ms.load(Ordering::SeqCst);
                        if delay > 0 {
                            std::thread::sleep(Duration::from_millis(delay));
                        }
                        if to.write_all(&buffer[..size]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        });
    }
}
