//! A minimal axum "hello world" server: the yardstick for the benchmark in
//! `bench/report-apis/run.sh`, built with the same axum, tokio runtime and release profile as
//! `report-apis`, so the ratio between the two measures only what report-apis does per request.
//!
//! Usage: `hello [ADDR]` (default 127.0.0.1:0); prints `listening on http://ADDR` on stderr.

use axum::Router;
use axum::routing::get;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    let app = Router::new().route("/", get(|| async { "Hello, World!" }));
    axum::serve(listener, app).await
}
