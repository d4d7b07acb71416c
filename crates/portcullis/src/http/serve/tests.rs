use super::*;
use axum::routing::get;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Sends one `Connection: close` request and reads the whole answer.
async fn request(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test]
async fn connections_take_turns_on_the_threads_and_finish_at_shutdown() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (entered_tx, mut entered_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (release_tx, release_rx) = watch::channel(false);
    let app = Router::new()
        .route(
            "/thread",
            get(|| async { std::thread::current().name().unwrap_or("").to_owned() }),
        )
        .route(
            "/slow",
            get(move || {
                let (entered, mut release) = (entered_tx.clone(), release_rx.clone());
                async move {
                    let _ = entered.send(());
                    let _ = release.wait_for(|r| *r).await;
                    "finished"
                }
            }),
        );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let options = ServeOptions {
        shutdown_grace: Duration::from_secs(20),
        ..ServeOptions::default()
    };
    let server = tokio::spawn(serve_on_threads(
        listener,
        2,
        move || app.clone(),
        options,
        async {
            let _ = stop_rx.await;
        },
    ));

    // Two connections in a row land on the two threads.
    let first = request(addr, "/thread").await;
    let second = request(addr, "/thread").await;
    let thread = |answer: &str| answer.rsplit("\r\n\r\n").next().unwrap_or("").to_owned();
    let (a, b) = (thread(&first), thread(&second));
    assert!(
        a.starts_with("portcullis-http-") && b.starts_with("portcullis-http-"),
        "{a} {b}"
    );
    assert_ne!(a, b, "two connections, two threads");

    // A request in flight at shutdown is finished, then the server returns.
    let slow = tokio::spawn(request(addr, "/slow"));
    entered_rx.recv().await.unwrap();
    stop_tx.send(()).unwrap();
    // Once nothing accepts any more, the drain has begun (the listener is dropped
    // right before it): the server must still be waiting for the request in flight.
    while TcpStream::connect(addr).await.is_ok() {
        tokio::task::yield_now().await;
    }
    assert!(
        !server.is_finished(),
        "the server waits for the request in flight"
    );
    release_tx.send(true).unwrap();
    let answer = slow.await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("finished"),
        "{answer}"
    );
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops once its connections closed")
        .unwrap()
        .unwrap();
}

/// Whether a connection from `from` to `addr` is served (it answers a request).
async fn served(from: &str, addr: SocketAddr) -> bool {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let Ok(mut stream) = socket.connect(addr).await else {
        return false;
    };
    if stream
        .write_all(b"GET /thread HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    answer.starts_with("HTTP/1.1 200")
}

#[tokio::test]
async fn d02_one_address_cannot_take_every_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/thread", get(|| async { "ok" }));
    let options = ServeOptions {
        connections_per_peer: 2,
        trusted_peers: ["127.0.0.3"]
            .iter()
            .filter_map(|c| Cidr::parse(c))
            .collect(),
        ..ServeOptions::default()
    };
    tokio::spawn(serve(listener, app, options, std::future::pending()));
    // 127.0.0.1 holds two idle connections: its share.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        // A request answered proves the connection was taken (not just queued).
        c.write_all(b"GET /thread HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(c);
    }
    assert!(
        !served("127.0.0.1", addr).await,
        "a third from the same address is closed"
    );
    assert!(served("127.0.0.2", addr).await, "another address is served");
    // A trusted proxy (every client behind it shares its address) is exempt.
    let mut behind_proxy = Vec::new();
    for _ in 0..3 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        behind_proxy.push(socket.connect(addr).await.unwrap());
    }
    assert!(served("127.0.0.3", addr).await);
    // A place given back is free again.
    held.pop();
    let mut tries = 0;
    while !served("127.0.0.1", addr).await {
        tries += 1;
        assert!(tries < 100, "the place was never given back");
        tokio::task::yield_now().await;
    }
}
