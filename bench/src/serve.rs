//! The accept loop the reference proxy and the upstream share.

use std::future::Future;

use tokio::net::{TcpListener, TcpStream};

/// Accepts connections on `listener` for ever, handing each (with `TCP_NODELAY`) to
/// `connection` on its own task; `name` labels what it prints.
pub async fn accept_loop<F, Fut>(name: &str, listener: TcpListener, connection: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("{name}: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream));
    }
}
