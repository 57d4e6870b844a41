//! Test fixtures: a server on a loopback port, an HTTP client, raw requests, metric samples.

use std::net::SocketAddr;
use std::time::Duration;

use report_apis::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A configuration that keeps the suite fast: 100 ms reports, no heavy load.
pub fn fast_config() -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    config.report.generation_time = Duration::from_millis(100);
    config.heavy_load.period = Duration::ZERO;
    config.heavy_load.initially_on = false;
    config.shutdown.drain_timeout = Duration::from_secs(2);
    config
}

/// `report_apis::run` on a task, on `127.0.0.1:<free port>`.
pub struct Server {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    pub async fn start(config: Config) -> Server {
        Self::start_reloadable(config).await.0
    }

    /// [`Server::start`], with the handle that reloads it.
    pub async fn start_reloadable(config: Config) -> (Server, report_apis::Reloader) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (reloader, reloads) = report_apis::reload_channel();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(report_apis::run_with_reloads(
            listener, config, shutdown, reloads,
        ));
        let server = Server {
            addr,
            client: client(),
            stop: Some(stop),
            task,
        };
        (server, reloader)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client.delete(self.url(path)).send().await.unwrap()
    }

    /// Status and body of a GET.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let response = self.get(path).await;
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    pub async fn request_ticket(&self) -> String {
        let (status, ticket) = self.get_text("/request_report").await;
        assert_eq!(status, 200, "{ticket}");
        ticket
    }

    /// Polls like the original collector (but every 20 ms) until the body is not
    /// `report is not ready`; bounded so a broken server fails the test instead of hanging it.
    pub async fn collect(&self, ticket: &str) -> reqwest::Response {
        for _ in 0..1500 {
            let response = self.get(&format!("/get_report/{ticket}")).await;
            let ready = response
                .headers()
                .get("content-type")
                .is_some_and(|v| v == "text/csv");
            if ready || response.status() != 200 {
                return response;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("ticket {ticket} never became ready");
    }

    /// The value of one sample (exact name and labels) in `/metrics`.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, text) = self.get_text("/metrics").await;
        parse_sample(&text, sample).unwrap_or_else(|| panic!("no sample {sample} in\n{text}"))
    }

    /// Waits (bounded) until a metric sample has the wanted value.
    pub async fn wait_for_metric(&self, sample: &str, wanted: f64) {
        for _ in 0..500 {
            if self.metric(sample).await == wanted {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{sample} never reached {wanted}");
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops within the drain timeout")
            .unwrap();
        result.unwrap();
    }
}

pub fn parse_sample(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Sends `GET <target> HTTP/1.1` byte for byte (no client-side normalisation of the path) and
/// returns the status code, or `None` if the server closed without answering.
pub async fn raw_get(addr: SocketAddr, target: &[u8]) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("server answers or closes")
        .ok()?;
    let head = String::from_utf8_lossy(&response);
    head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}
