//! Talking to report-apis: request a ticket, poll `get_report` until the CSV comes, inside the
//! run deadline. Transient trouble (unreachable, timeouts, 5xx) is retried with backoff; a
//! ticket the server no longer knows (404, it restarted) is replaced a bounded number of
//! times; nothing but a body that looks like the CSV report is ever taken for one.
//!
//! The polling logic is written against [`ReportServer`] so it can be tested on tokio's paused
//! clock with a scripted server; [`HttpServer`] is the real one.
//!
//! The server is not trusted: no wait it asks for (`Retry-After`) goes past the run deadline,
//! no time arithmetic can overflow, a body is read as a stream and dropped once it passes
//! `max-report-size`, and a body is a report only if the server marked where it ends
//! (`Content-Length` or chunked) and the checks of [`crate::report`] find it whole. Each
//! refusal names what the body was: an error page, too large, truncated, malformed at line N.
//!
//! A report is checked and written into its temp file in the report directory (a
//! [`Spool`]) as it streams in, piece by piece: only the start of a body is held in memory (the
//! not-ready answer, an excerpt for an error), so a report at `max-report-size` costs a run no
//! more memory than a small one. The temp file is hidden and removed with the spool when the
//! body is refused or the poll is dropped; a whole report waits in it for the run to save it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use report_common::fence::{self, Fence, Token};
use reqwest::header::HeaderValue;

use report_common::ticket::Ticket;
use report_common::wire::{self, NOT_READY, REPORT_CONTENT_TYPE, REQUEST_REPORT};
use reqwest::StatusCode;
use tokio::time::Instant;

use crate::config::ByteSize;
use crate::report::{Malformed, Validator};
use crate::store::{Spool, StoreError};

/// One answer to `get_report`.
#[derive(Debug)]
pub enum Poll {
    NotReady {
        retry_after: Option<Duration>,
    },
    /// The report, whole and checked, in its temp file in the report directory.
    Ready(Spool),
    /// 404: the server does not know the ticket (it restarted, or the ticket expired).
    UnknownTicket,
}

/// A request that did not give a usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// Worth retrying: unreachable, timed out, 5xx, 429.
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Retrying will not help: a 4xx, or a 200 whose body is not what was asked for.
    Permanent(String),
    /// The report came but could not be written into the report directory (disk full,
    /// permissions): the run fails, and the ticket is left for the next run, as when a save
    /// fails.
    Unsaved(String),
    /// 409 to a request that carried the run's fence: report-apis has seen a later holder's
    /// token for the lock, so this run no longer holds it.
    Fenced(String),
}

impl FetchError {
    /// The sentence, whatever the kind.
    pub fn message(&self) -> &str {
        match self {
            FetchError::Transient { message, .. }
            | FetchError::Permanent(message)
            | FetchError::Unsaved(message)
            | FetchError::Fenced(message) => message,
        }
    }
}

/// What the run's requests learned of the fence ([`report_common::fence`]); the state file
/// keeps the last one learned (kebab-case), for `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FenceNote {
    /// Every answer to a fenced request said which mark the server holds for the lock: the
    /// server refuses the requests of an ended holder.
    Enforced,
    /// An answer came without `Report-Fence-Mark`: the server (an older report-apis, the
    /// original server, or one with `[fence] enforce = false`) does not refuse the requests
    /// of an ended holder.
    NotAcknowledged,
    /// The run sent no fence: it held no lock that keeps a token (policy allow), or asked
    /// nothing. Also any value of a state file this version does not know.
    #[default]
    #[serde(other)]
    NotSent,
}

/// What the server made of a request to cancel a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// The server holds the ticket no longer (204; also for a ticket it never knew).
    Done,
    /// The server has no route for it (405 or 501: the original server, an older report-apis);
    /// the ticket is left to expire there.
    Unsupported(String),
}

/// The calls the collector makes: the original's two, and the cancel route of report-apis.
pub trait ReportServer {
    fn request_ticket(&self) -> impl Future<Output = Result<Ticket, FetchError>>;
    fn get_report(&self, ticket: &Ticket) -> impl Future<Output = Result<Poll, FetchError>>;
    fn cancel_ticket(&self, ticket: &Ticket) -> impl Future<Output = Result<Cancel, FetchError>>;
    /// What the answers so far said of the run's fence.
    fn fence_note(&self) -> FenceNote {
        FenceNote::NotSent
    }
}

/// A server borrowed: what the run is handed when the caller keeps the server.
impl<S: ReportServer> ReportServer for &S {
    fn request_ticket(&self) -> impl Future<Output = Result<Ticket, FetchError>> {
        (**self).request_ticket()
    }
    fn get_report(&self, ticket: &Ticket) -> impl Future<Output = Result<Poll, FetchError>> {
        (**self).get_report(ticket)
    }
    fn cancel_ticket(&self, ticket: &Ticket) -> impl Future<Output = Result<Cancel, FetchError>> {
        (**self).cancel_ticket(ticket)
    }
    fn fence_note(&self) -> FenceNote {
        (**self).fence_note()
    }
}

/// Exponential backoff for transient failures.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The wait before the next retry; doubles each time up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

/// A report fetched in full.
#[derive(Debug)]
pub struct Collected {
    pub ticket: Ticket,
    pub report: Spool,
}

/// Why no report was fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectError {
    #[error("gave up {while_doing} within the run deadline: {last}")]
    DeadlinePassed { while_doing: String, last: String },
    /// A permanent refusal: of the ticket request (`ticket` is `None`), or of `ticket`'s poll
    /// (a 4xx, or a body that is not a report), which no later poll would change.
    #[error("{message}")]
    Rejected {
        message: String,
        ticket: Option<Ticket>,
    },
    #[error(
        "the server forgot this run's ticket again after {renewals} renewal(s) (404; is report-apis restarting over and over?); giving up until the next run (max-ticket-renewals)"
    )]
    RenewalsExhausted { renewals: u32 },
    /// The report came but could not be written (see [`FetchError::Unsaved`]).
    #[error("{0}")]
    Unsaved(String),
    /// The server refused the run's token (see [`FetchError::Fenced`]).
    #[error("{0}")]
    Fenced(String),
}

/// Polls for the report of `resume`, a ticket an earlier run left, or else requests a ticket,
/// until the report is ready or `deadline` passes. Polls at once, then every `poll_interval`,
/// sooner if `Retry-After` says. `on_ticket` hears every ticket this call requests as soon as
/// it is issued. A resumed ticket the server no longer knows (404) falls back to a new ticket
/// without counting as a renewal: it was never this run's.
pub async fn collect<S: ReportServer>(
    server: &S,
    poll_interval: Duration,
    deadline: Instant,
    max_renewals: u32,
    mut resume: Option<Ticket>,
    mut on_ticket: impl AsyncFnMut(&Ticket),
) -> Result<Collected, CollectError> {
    let mut backoff = Backoff::default();
    let mut renewals = 0;
    loop {
        let resuming = resume.is_some();
        let ticket = match resume.take() {
            Some(ticket) => ticket,
            None => request_ticket(server, deadline, &mut backoff).await?,
        };
        backoff.reset();
        if !resuming {
            // Into the lock's record first, before anything else can be interrupted: a run
            // killed from here on hands the ticket on.
            on_ticket(&ticket).await;
            tracing::info!(TICKET = %ticket, "got ticket {ticket}; polling for its report");
        }
        match poll_report(server, &ticket, poll_interval, deadline, &mut backoff).await? {
            Some(report) => return Ok(Collected { ticket, report }),
            None => forgotten(&ticket, resuming, &mut renewals, max_renewals)?,
        }
    }
}

/// Requests a ticket until the server hands one out, retrying transient trouble until
/// `deadline`.
async fn request_ticket<S: ReportServer>(
    server: &S,
    deadline: Instant,
    backoff: &mut Backoff,
) -> Result<Ticket, CollectError> {
    loop {
        let answer = tokio::time::timeout_at(deadline, server.request_ticket()).await;
        match answer {
            Err(_) => return Err(deadline_passed("requesting a ticket", "no answer yet")),
            Ok(Ok(ticket)) => return Ok(ticket),
            Ok(Err(FetchError::Permanent(message))) => {
                return Err(CollectError::Rejected {
                    message,
                    ticket: None,
                });
            }
            Ok(Err(FetchError::Unsaved(message))) => {
                return Err(CollectError::Unsaved(message));
            }
            Ok(Err(FetchError::Fenced(message))) => {
                return Err(CollectError::Fenced(message));
            }
            Ok(Err(FetchError::Transient {
                message,
                retry_after,
            })) => {
                retry_later(
                    "requesting a ticket",
                    message,
                    retry_after,
                    backoff,
                    deadline,
                )
                .await?
            }
        }
    }
}

/// Polls for the report of `ticket` until it is ready (`Some`), the server no longer knows the
/// ticket (`None`), or `deadline` passes.
async fn poll_report<S: ReportServer>(
    server: &S,
    ticket: &Ticket,
    poll_interval: Duration,
    deadline: Instant,
    backoff: &mut Backoff,
) -> Result<Option<Spool>, CollectError> {
    let while_doing = format!("waiting for the report of ticket {ticket}");
    loop {
        let answer = tokio::time::timeout_at(deadline, server.get_report(ticket)).await;
        match answer {
            Err(_) => return Err(deadline_passed(&while_doing, "no answer yet")),
            Ok(Ok(Poll::Ready(report))) => return Ok(Some(report)),
            Ok(Ok(Poll::NotReady { retry_after })) => {
                backoff.reset();
                let wait = retry_after.map_or(poll_interval, |r| r.min(poll_interval));
                if wait > remaining(deadline) {
                    return Err(deadline_passed(
                        &while_doing,
                        "the report is still not ready",
                    ));
                }
                tracing::debug!(TICKET = %ticket, "report not ready; polling again in {}", humantime::format_duration(wait));
                tokio::time::sleep(wait).await;
            }
            Ok(Ok(Poll::UnknownTicket)) => return Ok(None),
            Ok(Err(FetchError::Permanent(message))) => {
                return Err(CollectError::Rejected {
                    message,
                    ticket: Some(ticket.clone()),
                });
            }
            Ok(Err(FetchError::Unsaved(message))) => {
                return Err(CollectError::Unsaved(message));
            }
            Ok(Err(FetchError::Fenced(message))) => {
                return Err(CollectError::Fenced(message));
            }
            Ok(Err(FetchError::Transient {
                message,
                retry_after,
            })) => retry_later(&while_doing, message, retry_after, backoff, deadline).await?,
        }
    }
}

/// A ticket the server no longer knows: a new one is requested, counted as a renewal unless
/// the ticket was resumed, until `max_renewals` is spent.
fn forgotten(
    ticket: &Ticket,
    resuming: bool,
    renewals: &mut u32,
    max_renewals: u32,
) -> Result<(), CollectError> {
    if resuming {
        tracing::warn!(
            TICKET = %ticket,
            "the server no longer knows ticket {ticket}, left by an earlier run (404: it expired, or the server restarted); requesting a new one"
        );
        return Ok(());
    }
    *renewals += 1;
    if *renewals > max_renewals {
        return Err(CollectError::RenewalsExhausted {
            renewals: *renewals - 1,
        });
    }
    tracing::warn!(
        TICKET = %ticket,
        "the server no longer knows ticket {ticket} (404, it may have restarted); requesting a new one ({renewals} of {max_renewals})"
    );
    Ok(())
}

/// What remains of the run until `deadline`; zero once it has passed.
fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn deadline_passed(while_doing: &str, last: &str) -> CollectError {
    CollectError::DeadlinePassed {
        while_doing: while_doing.to_owned(),
        last: last.to_owned(),
    }
}

async fn retry_later(
    while_doing: &str,
    message: String,
    retry_after: Option<Duration>,
    backoff: &mut Backoff,
    deadline: Instant,
) -> Result<(), CollectError> {
    let delay = backoff.next_delay();
    let wait = retry_after.map_or(delay, |r| r.max(delay));
    // A Retry-After past the deadline (up to u64::MAX seconds) ends the run now: the wait is
    // compared with what remains, never added to a clock.
    if wait > remaining(deadline) {
        return Err(CollectError::DeadlinePassed {
            while_doing: while_doing.to_owned(),
            last: message,
        });
    }
    tracing::warn!(
        "{message} ({while_doing}); retrying in {}",
        humantime::format_duration(wait)
    );
    tokio::time::sleep(wait).await;
    Ok(())
}

/// report-apis over HTTP, every request bounded by `request-timeout`, every report by
/// `max-report-size`; reports are spooled into `report-dir`.
#[derive(Debug, Clone)]
pub struct HttpServer {
    client: reqwest::Client,
    base: String,
    max_report_size: u64,
    report_dir: PathBuf,
    /// The run's fence and its header value, sent with every request.
    fence: Option<(Fence, HeaderValue)>,
    /// Answers to fenced requests so far: how many, and how many carried the server's mark.
    answers: Arc<Mutex<(u64, u64)>>,
}

/// How much of a body that is not a report (an error status, a ticket) is read: enough for
/// an excerpt and any ticket, never an endless page. Also how much of the start of a report
/// is held in memory (see [`Incoming`]).
const SMALL_BODY: u64 = 64 * 1024;

/// The status and headers of an answer, its body not yet read.
#[derive(Debug)]
struct Head {
    status: StatusCode,
    retry_after: Option<Duration>,
    content_type: Option<String>,
    /// `Content-Length`, if it is a number.
    announced: Option<u64>,
    /// The server said where the body ends (`Content-Length` or chunked), so a body cut short
    /// shows as an error instead of as a shorter body.
    framed: bool,
}

/// One answer, its body read up to a limit.
#[derive(Debug)]
struct Answer {
    head: Head,
    body: Vec<u8>,
}

/// Why a body could not be read whole.
#[derive(Debug)]
enum BodyError {
    /// Longer than the limit: announced by `Content-Length` (`Some`) or counted while reading.
    TooLarge { announced: Option<u64> },
    /// The connection broke, timed out or ended before the announced length.
    Broken { read: u64, error: String },
}

impl HttpServer {
    pub fn new(
        server_url: &str,
        request_timeout: Duration,
        max_report_size: u64,
        report_dir: &Path,
    ) -> reqwest::Result<HttpServer> {
        let mut builder = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            .user_agent(concat!("report-collector/", env!("CARGO_PKG_VERSION")));
        if server_url.starts_with("http://") {
            // Plain HTTP (the usual loopback setup) needs no certificate store: loading the
            // system's costs about a megabyte of memory and time on every run.
            builder = builder.tls_certs_only(std::iter::empty()).http1_only();
        }
        let client = builder.build()?;
        Ok(HttpServer {
            client,
            base: server_url.trim_end_matches('/').to_owned(),
            max_report_size,
            report_dir: report_dir.to_owned(),
            fence: None,
            answers: Arc::default(),
        })
    }

    /// Sends `fence` with every request from now on.
    pub fn with_fence(mut self, fence: Option<Fence>) -> HttpServer {
        self.fence = fence.and_then(|fence| {
            // Visible ASCII by construction; a value the header cannot carry sends none.
            let value = HeaderValue::from_str(&fence.header_value()).ok()?;
            Some((fence, value))
        });
        self
    }

    /// Sends a GET and reads the body: up to `limit` bytes of a 200, or the start of any other
    /// answer (for its excerpt). `Err(TooLarge)` and `Err(Broken)` only come from a 200.
    async fn get(&self, path: &str, limit: u64) -> Result<Result<Answer, BodyError>, FetchError> {
        self.send(reqwest::Method::GET, path, limit).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        limit: u64,
    ) -> Result<Result<Answer, BodyError>, FetchError> {
        let (head, response) = self.ask(method, path).await?;
        let body = if head.status == StatusCode::OK {
            let mut body = Vec::new();
            let read = read_body(response, head.announced, limit, |piece| {
                body.extend_from_slice(piece)
            });
            if let Err(e) = read.await {
                return Ok(Err(e));
            }
            body
        } else {
            read_start(response, SMALL_BODY).await
        };
        Ok(Ok(Answer { head, body }))
    }

    /// Sends a request and reads the head of the answer, leaving its body to the caller.
    async fn ask(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<(Head, reqwest::Response), FetchError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.request(method, &url);
        if let Some((_, value)) = &self.fence {
            request = request.header(fence::HEADER, value.clone());
        }
        let response = request.send().await.map_err(|e| {
            let base = &self.base;
            let chain = error_chain(&e);
            transient(if e.is_connect() {
                format!(
                    "cannot reach the report server at {base}: {chain}; check that report-apis is running and server-url is right"
                )
            } else if e.is_timeout() {
                format!(
                    "the report server at {base} did not answer {path} within request-timeout: {chain}"
                )
            } else {
                format!(
                    "the report server at {base} gave no usable HTTP answer to {path}: {chain}; check that server-url names report-apis"
                )
            })
        })?;
        let status = response.status();
        let headers = response.headers();
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(wire::parse_retry_after);
        let content_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let announced = headers
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let chunked = headers
            .get_all(reqwest::header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        let head = Head {
            status,
            retry_after,
            content_type,
            announced,
            framed: announced.is_some() || chunked,
        };
        self.fence_answered(head, response, path).await
    }

    /// Notes whether the answer to a fenced request carried the server's mark; a 409 to it
    /// means the server refused the run's token.
    async fn fence_answered(
        &self,
        head: Head,
        response: reqwest::Response,
        path: &str,
    ) -> Result<(Head, reqwest::Response), FetchError> {
        let Some((fence, _)) = &self.fence else {
            return Ok((head, response));
        };
        let mark = response
            .headers()
            .get(fence::MARK_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(Token::parse);
        // A 5xx may come from a proxy in front of the server: it says nothing of the fence.
        if !head.status.is_server_error() {
            let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
            answers.0 += 1;
            answers.1 += u64::from(mark.is_some());
        }
        if head.status == StatusCode::CONFLICT {
            let body = read_start(response, SMALL_BODY).await;
            return Err(fenced(fence, mark, path, &body));
        }
        Ok((head, response))
    }

    /// Sentences for a body that could not be read whole (`what` names the request).
    fn body_error(&self, what: &str, error: BodyError, too_large: &str) -> FetchError {
        match error {
            BodyError::TooLarge { announced } => FetchError::Permanent(format!(
                "{what} is too large: {}more than {too_large}; nothing was saved",
                announced.map_or(String::new(), |n| format!("{n} bytes announced, "))
            )),
            BodyError::Broken { read, error } => transient(format!(
                "{what} is truncated: the report server at {} broke off its answer after {read} bytes: {error}",
                self.base
            )),
        }
    }
}

/// Reads `response`'s body as a stream with a running count, handing each piece to `take` as
/// it arrives, and stops as soon as it would pass `limit`: an endless or huge body is never
/// read past it. A body that announces more than `limit` is not read at all.
async fn read_body(
    mut response: reqwest::Response,
    announced: Option<u64>,
    limit: u64,
    mut take: impl FnMut(&[u8]),
) -> Result<(), BodyError> {
    if announced.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge { announced });
    }
    let mut read: u64 = 0;
    loop {
        match response.chunk().await {
            Ok(None) => return Ok(()),
            Ok(Some(chunk)) => {
                let len = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
                read = read.saturating_add(len);
                if read > limit {
                    return Err(BodyError::TooLarge { announced: None });
                }
                take(&chunk);
            }
            Err(e) => {
                return Err(BodyError::Broken {
                    read,
                    error: error_chain(&e),
                });
            }
        }
    }
}

/// The first `limit` bytes of a body that is only shown as an excerpt (an error status):
/// whatever arrives before the end, an error or the limit is enough.
async fn read_start(mut response: reqwest::Response, limit: u64) -> Vec<u8> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut start = Vec::new();
    while start.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(limit.saturating_sub(start.len()));
                start.extend_from_slice(&chunk[..take]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    start
}

fn transient(message: String) -> FetchError {
    FetchError::Transient {
        message,
        retry_after: None,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The start of a body, for error messages (never the whole of an error page).
fn excerpt(body: &[u8]) -> String {
    let start = &body[..body.len().min(1024)];
    let text = String::from_utf8_lossy(start);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let cut = match one_line.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &one_line[..i]),
        None => one_line,
    };
    // What whitespace splitting leaves (NUL, ESC, bidi controls) is escaped, never printed.
    report_common::shown::escaped(&cut).into_owned()
}

/// A 409 to a request that carried `fence`: the server holds a later token for the lock.
fn fenced(fence: &Fence, mark: Option<Token>, path: &str, body: &[u8]) -> FetchError {
    FetchError::Fenced(format!(
        "report-apis refused {path} for this run's token {} of the lock \"{}\" (409, its mark: {}): {}; another holder has taken the lock since, so this run saves nothing and leaves the ticket to it",
        fence.token,
        fence.lock,
        mark.map_or_else(|| "not said".to_owned(), |m| m.to_string()),
        excerpt(body)
    ))
}

/// The answer for any status that is not a 200 (nor a 404 on `get_report`).
fn status_error(
    what: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> FetchError {
    let message = format!(
        "the server answered {what} with {status}: {}",
        excerpt(body)
    );
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        FetchError::Transient {
            message,
            retry_after,
        }
    } else {
        FetchError::Permanent(message)
    }
}

/// Whether a `Content-Type` may carry a report: CSV or plain text (or none said). Anything
/// else (`text/html`, JSON) is an error page, whatever its body looks like.
pub fn may_be_report(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return true;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "text/csv" | "text/plain" | "application/csv" | "application/octet-stream"
    )
}

/// Whether a body is a whole CSV report (see [`crate::report::validate`]).
pub fn looks_like_report(body: &str) -> bool {
    crate::report::validate(body.as_bytes()).is_ok()
}

/// A 200 answer to `get_report` as it streams in: each piece checked as it arrives, the start
/// held in memory (the not-ready answer, an excerpt for an error), and, once the body outgrows
/// that start, everything written into a [`Spool`] while the body may still be a report. A body
/// that cannot be one (an error page, unframed, a line that failed the check) is read on to its
/// end unwritten, so that what it is named by does not depend on how far it got: too large or
/// cut short, if it is, before whatever else is wrong with it.
#[derive(Debug)]
struct Incoming<'a> {
    dir: &'a Path,
    ticket: &'a Ticket,
    /// Up to [`SMALL_BODY`] bytes: all of a small body.
    start: Vec<u8>,
    check: Validator,
    /// Whether the `Content-Type` may carry a report ([`may_be_report`]).
    may_be_report: bool,
    /// Whether the server marked where the body ends ([`Head::framed`]).
    framed: bool,
    spool: Option<Spool>,
    /// Why the spool could not be written; the body is still read and checked to its end.
    unsaved: Option<StoreError>,
}

impl<'a> Incoming<'a> {
    fn new(dir: &'a Path, ticket: &'a Ticket, head: &Head) -> Incoming<'a> {
        Incoming {
            dir,
            ticket,
            start: Vec::new(),
            check: Validator::new(),
            may_be_report: may_be_report(head.content_type.as_deref()),
            framed: head.framed,
            spool: None,
            unsaved: None,
        }
    }

    fn take(&mut self, piece: &[u8]) {
        self.check.feed(piece);
        let room = usize::try_from(SMALL_BODY)
            .unwrap_or(usize::MAX)
            .saturating_sub(self.start.len());
        let (held, rest) = piece.split_at(piece.len().min(room));
        self.start.extend_from_slice(held);
        if rest.is_empty() {
            return;
        }
        // Past the start: to disk while it may still be saved, else nowhere.
        if !self.may_be_report
            || !self.framed
            || self.check.fault().is_some()
            || self.unsaved.is_some()
        {
            self.spool = None;
            return;
        }
        let spool = match self.spool.take() {
            Some(spool) => Ok(spool),
            None => self.spool_start(),
        };
        match spool.and_then(|mut spool| spool.write(rest).map(|()| spool)) {
            Ok(spool) => self.spool = Some(spool),
            Err(e) => self.unsaved = Some(e),
        }
    }

    /// A new spool holding the start of the body.
    fn spool_start(&self) -> Result<Spool, StoreError> {
        let mut spool = Spool::create(self.dir, self.ticket)?;
        spool.write(&self.start)?;
        Ok(spool)
    }

    /// What the whole body, read to its end, is: not ready, the report, or why it is not one.
    fn finish(mut self, head: &Head) -> Result<Poll, FetchError> {
        if self.start == NOT_READY.as_bytes() {
            return Ok(Poll::NotReady {
                retry_after: head.retry_after,
            });
        }
        let what = format!("the report for ticket {}", self.ticket);
        if !self.may_be_report {
            return Err(FetchError::Permanent(format!(
                "{what} is an error page: the server answered 200 with Content-Type {} instead of {REPORT_CONTENT_TYPE}: {}",
                head.content_type.as_deref().unwrap_or(""),
                excerpt(&self.start)
            )));
        }
        if let Err(malformed) = std::mem::take(&mut self.check).finish() {
            let message = match malformed {
                Malformed::Empty | Malformed::NotCsv => format!(
                    "{what} is an error page or something else, not a CSV report ({malformed}): {}",
                    excerpt(&self.start)
                ),
                Malformed::Truncated { .. } => format!("{what} is truncated: {malformed}"),
                _ => format!("{what} is {malformed}"),
            };
            return Err(FetchError::Permanent(message));
        }
        if !self.framed {
            // A close-delimited body ends wherever the connection did: a report cut at a line end
            // would pass for a whole, shorter one.
            return Err(FetchError::Permanent(format!(
                "{what} may be truncated: the server marked neither its length (Content-Length) nor its end (chunked encoding), so a report cut short cannot be told from a whole one; nothing was saved"
            )));
        }
        if let Some(e) = self.unsaved.take() {
            return Err(FetchError::Unsaved(e.to_string()));
        }
        let spool = match self.spool.take() {
            Some(spool) => Ok(spool),
            // All of it is in the start.
            None => self.spool_start(),
        };
        spool
            .map(Poll::Ready)
            .map_err(|e| FetchError::Unsaved(e.to_string()))
    }
}

impl ReportServer for HttpServer {
    fn fence_note(&self) -> FenceNote {
        let (answers, marked) = *self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        match (&self.fence, answers) {
            (None, _) | (_, 0) => FenceNote::NotSent,
            _ if marked == answers => FenceNote::Enforced,
            _ => FenceNote::NotAcknowledged,
        }
    }

    async fn request_ticket(&self) -> Result<Ticket, FetchError> {
        let what = "the ticket request";
        let answer = self
            .get(REQUEST_REPORT, SMALL_BODY)
            .await?
            .map_err(|e| match e {
                BodyError::TooLarge { .. } => FetchError::Permanent(format!(
                    "the server answered the ticket request with more than {}, which is not a ticket",
                    ByteSize(SMALL_BODY)
                )),
                broken => self.body_error("the answer to the ticket request", broken, ""),
            })?;
        if answer.head.status != StatusCode::OK {
            return Err(status_error(
                what,
                answer.head.status,
                answer.head.retry_after,
                &answer.body,
            ));
        }
        let text = String::from_utf8_lossy(&answer.body);
        let ticket = text.trim();
        Ticket::new(ticket).map_err(|_| {
            FetchError::Permanent(format!(
                "the server answered the ticket request with something that is not a ticket: {}",
                excerpt(&answer.body)
            ))
        })
    }

    async fn get_report(&self, ticket: &Ticket) -> Result<Poll, FetchError> {
        let (head, response) = self
            .ask(reqwest::Method::GET, &wire::get_report_path(ticket))
            .await?;
        match head.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(Poll::UnknownTicket),
            status => {
                let start = read_start(response, SMALL_BODY).await;
                return Err(status_error(
                    &format!("get_report for ticket {ticket}"),
                    status,
                    head.retry_after,
                    &start,
                ));
            }
        }
        let mut incoming = Incoming::new(&self.report_dir, ticket, &head);
        let read = read_body(response, head.announced, self.max_report_size, |piece| {
            incoming.take(piece)
        });
        if let Err(e) = read.await {
            let limit = format!(
                "max-report-size ({}); raise max-report-size if reports are really this large",
                ByteSize(self.max_report_size)
            );
            return Err(self.body_error(&format!("the report for ticket {ticket}"), e, &limit));
        }
        incoming.finish(&head)
    }

    async fn cancel_ticket(&self, ticket: &Ticket) -> Result<Cancel, FetchError> {
        let answer = self
            .send(
                reqwest::Method::DELETE,
                &wire::get_report_path(ticket.as_str()),
                SMALL_BODY,
            )
            .await?
            .map_err(|e| self.body_error("the answer to a cancel", e, ""))?;
        match answer.head.status {
            // 404: not held (any more); what a cancel asks for.
            status if status.is_success() || status == StatusCode::NOT_FOUND => Ok(Cancel::Done),
            status
                if status == StatusCode::METHOD_NOT_ALLOWED
                    || status == StatusCode::NOT_IMPLEMENTED =>
            {
                Ok(Cancel::Unsupported(status.to_string()))
            }
            status => Err(status_error(
                &format!("the cancel of ticket {ticket}"),
                status,
                answer.head.retry_after,
                &answer.body,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::VecDeque;

    /// A server that answers from a script and records when each call came.
    struct Scripted {
        tickets: RefCell<VecDeque<Result<String, FetchError>>>,
        polls: RefCell<VecDeque<Result<Poll, FetchError>>>,
        calls: RefCell<Vec<(&'static str, Duration)>>,
        start: Instant,
    }

    impl Scripted {
        fn new(
            tickets: Vec<Result<String, FetchError>>,
            polls: Vec<Result<Poll, FetchError>>,
        ) -> Scripted {
            Scripted {
                tickets: RefCell::new(tickets.into()),
                polls: RefCell::new(polls.into()),
                calls: RefCell::new(Vec::new()),
                start: Instant::now(),
            }
        }

        fn calls(&self) -> Vec<(&'static str, u64)> {
            self.calls
                .borrow()
                .iter()
                .map(|(c, at)| (*c, u64::try_from(at.as_millis()).unwrap()))
                .collect()
        }
    }

    impl ReportServer for Scripted {
        async fn request_ticket(&self) -> Result<Ticket, FetchError> {
            self.calls
                .borrow_mut()
                .push(("request", self.start.elapsed()));
            self.tickets
                .borrow_mut()
                .pop_front()
                .unwrap_or_else(|| Ok("t_0".into()))
                .map(|text| crate::t(&text))
        }

        async fn get_report(&self, _ticket: &Ticket) -> Result<Poll, FetchError> {
            self.calls.borrow_mut().push(("poll", self.start.elapsed()));
            self.polls
                .borrow_mut()
                .pop_front()
                .unwrap_or(Ok(Poll::NotReady { retry_after: None }))
        }

        async fn cancel_ticket(&self, _ticket: &Ticket) -> Result<Cancel, FetchError> {
            self.calls
                .borrow_mut()
                .push(("cancel", self.start.elapsed()));
            Ok(Cancel::Done)
        }
    }

    const CSV: &str = "timestamp,data\n0,data-0\n1,data-1\n";
    const SEC: Duration = Duration::from_secs(1);

    /// The report, spooled in the system's temp directory (removed when dropped).
    fn ready() -> Result<Poll, FetchError> {
        let spool =
            Spool::holding(&std::env::temp_dir(), &crate::t("t_0"), CSV.as_bytes()).unwrap();
        Ok(Poll::Ready(spool))
    }

    fn not_ready(retry_after: Option<u64>) -> Result<Poll, FetchError> {
        Ok(Poll::NotReady {
            retry_after: retry_after.map(Duration::from_secs),
        })
    }

    fn down() -> FetchError {
        FetchError::Transient {
            message: "cannot reach".into(),
            retry_after: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn polls_at_once_then_every_poll_interval() {
        let server = Scripted::new(vec![], vec![not_ready(None), not_ready(None), ready()]);
        let deadline = Instant::now() + 600 * SEC;
        let mut got = collect(&server, 10 * SEC, deadline, 3, None, async |_: &Ticket| {})
            .await
            .unwrap();
        assert_eq!(got.report.read_back(), CSV.as_bytes());
        assert_eq!(
            server.calls(),
            vec![
                ("request", 0),
                ("poll", 0),
                ("poll", 10_000),
                ("poll", 20_000)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_shortens_the_wait_but_never_lengthens_it() {
        let server = Scripted::new(
            vec![],
            vec![not_ready(Some(2)), not_ready(Some(60)), ready()],
        );
        let deadline = Instant::now() + 600 * SEC;
        collect(&server, 10 * SEC, deadline, 3, None, async |_: &Ticket| {})
            .await
            .unwrap();
        assert_eq!(
            server.calls(),
            vec![
                ("request", 0),
                ("poll", 0),
                ("poll", 2_000),
                ("poll", 12_000)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_server_is_retried_with_backoff_until_the_deadline() {
        let server = Scripted::new(vec![Err(down()); 20], vec![]);
        let start = Instant::now();
        let err = collect(
            &server,
            10 * SEC,
            start + 5 * SEC,
            3,
            None,
            async |_: &Ticket| {},
        )
        .await
        .unwrap_err();
        // 0, +0.5, +1, +2: the next wait (4 s) would end after the 5 s deadline.
        assert_eq!(
            server.calls(),
            vec![
                ("request", 0),
                ("request", 500),
                ("request", 1_500),
                ("request", 3_500)
            ]
        );
        assert!(start.elapsed() <= 5 * SEC);
        match err {
            CollectError::DeadlinePassed { last, .. } => assert_eq!(last, "cannot reach"),
            other => panic!("{other:?}"),
        }
    }

    /// Collects resuming ticket `left_7`, with no renewal allowed; returns what was collected
    /// and the new tickets `on_ticket` heard of.
    async fn resume_left_7(server: &Scripted) -> (Collected, Vec<String>) {
        let deadline = Instant::now() + 600 * SEC;
        let mut heard = Vec::new();
        let got = collect(
            server,
            10 * SEC,
            deadline,
            0,
            Some(crate::t("left_7")),
            async |t: &Ticket| heard.push(t.to_string()),
        )
        .await
        .unwrap();
        (got, heard)
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_ticket_is_polled_first_and_never_requested_again() {
        let server = Scripted::new(vec![], vec![not_ready(None), ready()]);
        let (got, heard) = resume_left_7(&server).await;
        assert_eq!(got.ticket, "left_7");
        assert_eq!(server.calls(), vec![("poll", 0), ("poll", 10_000)]);
        assert!(heard.is_empty(), "a resumed ticket is not a new one");
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_ticket_the_server_forgot_falls_back_to_a_new_one_without_a_renewal() {
        let server = Scripted::new(
            vec![Ok("new_0".into())],
            vec![Ok(Poll::UnknownTicket), ready()],
        );
        // No renewal allowed (see resume_left_7): the resumed ticket's 404 does not use one up.
        let (got, heard) = resume_left_7(&server).await;
        assert_eq!(got.ticket, "new_0");
        assert_eq!(heard, vec!["new_0".to_owned()]);
        assert_eq!(
            server.calls(),
            vec![("poll", 0), ("request", 0), ("poll", 0)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn server_errors_while_polling_back_off_then_recover() {
        let server = Scripted::new(
            vec![],
            vec![Err(down()), Err(down()), not_ready(None), ready()],
        );
        let deadline = Instant::now() + 600 * SEC;
        collect(&server, 10 * SEC, deadline, 3, None, async |_: &Ticket| {})
            .await
            .unwrap();
        assert_eq!(
            server.calls(),
            vec![
                ("request", 0),
                ("poll", 0),
                ("poll", 500),
                ("poll", 1_500),
                ("poll", 11_500)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_forgotten_ticket_is_renewed_a_bounded_number_of_times() {
        let server = Scripted::new(
            vec![Ok("a_0".into()), Ok("b_0".into()), Ok("c_0".into())],
            vec![Ok(Poll::UnknownTicket), Ok(Poll::UnknownTicket), ready()],
        );
        let mut seen = Vec::new();
        let deadline = Instant::now() + 600 * SEC;
        let got = collect(&server, 10 * SEC, deadline, 2, None, async |t: &Ticket| {
            seen.push(t.to_owned())
        })
        .await
        .unwrap();
        assert_eq!(got.ticket, "c_0");
        assert_eq!(seen, ["a_0", "b_0", "c_0"]);

        let server = Scripted::new(
            vec![],
            std::iter::repeat_with(|| Ok(Poll::UnknownTicket))
                .take(5)
                .collect(),
        );
        let err = collect(&server, 10 * SEC, deadline, 2, None, async |_: &Ticket| {})
            .await
            .unwrap_err();
        assert_eq!(err, CollectError::RenewalsExhausted { renewals: 2 });
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_slow_polling() {
        let server = Scripted::new(vec![], vec![]);
        let start = Instant::now();
        let err = collect(
            &server,
            10 * SEC,
            start + 25 * SEC,
            3,
            None,
            async |_: &Ticket| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, CollectError::DeadlinePassed { .. }));
        assert_eq!(start.elapsed(), 20 * SEC);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_ends_the_run_at_once() {
        let server = Scripted::new(
            vec![],
            vec![Err(FetchError::Permanent("not a report".into()))],
        );
        let deadline = Instant::now() + 600 * SEC;
        let err = collect(&server, 10 * SEC, deadline, 3, None, async |_: &Ticket| {})
            .await
            .unwrap_err();
        assert_eq!(
            err,
            CollectError::Rejected {
                message: "not a report".into(),
                ticket: Some(crate::t("t_0"))
            }
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(500), 4 * SEC);
        let delays: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 4000, 4000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn only_csv_reports_are_taken() {
        assert!(looks_like_report("timestamp,data\n0,data-0\n1,data-1\n"));
        assert!(looks_like_report("timestamp,data\r\n0,data-0\r\n"));
        assert!(!looks_like_report("timestamp,data\n0,data-0\n1,data-1"));
        assert!(!looks_like_report(NOT_READY));
        assert!(!looks_like_report(
            "<html><body>502 Bad Gateway</body></html>"
        ));
        assert!(!looks_like_report("timestamp,data\n0,data-0,extra\n"));
        assert!(!looks_like_report(""));
    }

    #[test]
    fn only_csv_or_text_content_types_may_carry_a_report() {
        for ok in [
            None,
            Some("text/csv"),
            Some("text/plain; charset=utf-8"),
            Some("Text/CSV"),
        ] {
            assert!(may_be_report(ok), "{ok:?}");
        }
        for page in [
            "text/html",
            "text/html; charset=utf-8",
            "application/json",
            "",
        ] {
            assert!(!may_be_report(Some(page)), "{page}");
        }
    }

    #[test]
    fn backoff_saturates_at_the_largest_durations() {
        let mut b = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(b.next_delay(), Duration::MAX);
        assert_eq!(b.next_delay(), Duration::MAX);
        let mut b = Backoff::new(Duration::from_secs(u64::MAX / 2 + 1), Duration::MAX);
        b.next_delay();
        assert_eq!(b.next_delay(), Duration::MAX);
    }

    /// The largest `Retry-After` the header parser gives (`u64::MAX` seconds), and the longest
    /// duration of all.
    const HUGE: [Duration; 2] = [Duration::from_secs(u64::MAX), Duration::MAX];

    #[tokio::test(start_paused = true)]
    async fn a_huge_retry_after_on_an_error_ends_the_run_at_once_without_overflow() {
        for huge in HUGE {
            let server = Scripted::new(
                vec![Err(FetchError::Transient {
                    message: "busy".into(),
                    retry_after: Some(huge),
                })],
                vec![],
            );
            let start = Instant::now();
            let err = collect(
                &server,
                10 * SEC,
                start + 60 * SEC,
                3,
                None,
                async |_: &Ticket| {},
            )
            .await
            .unwrap_err();
            assert!(
                matches!(err, CollectError::DeadlinePassed { .. }),
                "{err:?}"
            );
            assert_eq!(start.elapsed(), Duration::ZERO, "no wait past the deadline");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_retry_after_while_not_ready_never_lengthens_the_poll() {
        for huge in HUGE {
            let server = Scripted::new(
                vec![],
                vec![
                    Ok(Poll::NotReady {
                        retry_after: Some(huge),
                    }),
                    ready(),
                ],
            );
            let deadline = Instant::now() + 600 * SEC;
            collect(&server, 10 * SEC, deadline, 3, None, async |_: &Ticket| {})
                .await
                .unwrap();
            assert_eq!(
                server.calls(),
                vec![("request", 0), ("poll", 0), ("poll", 10_000)]
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_longest_poll_interval_and_a_passed_deadline_do_not_overflow() {
        let server = Scripted::new(vec![], vec![]);
        let start = Instant::now();
        let err = collect(
            &server,
            Duration::MAX,
            start + SEC,
            u32::MAX,
            None,
            async |_: &Ticket| {},
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, CollectError::DeadlinePassed { .. }),
            "{err:?}"
        );
        // A deadline already behind: what remains is zero, not a negative that panics.
        tokio::time::advance(5 * SEC).await;
        assert_eq!(remaining(start), Duration::ZERO);
        let server = Scripted::new(vec![Err(down())], vec![]);
        let err = collect(&server, SEC, start, 0, None, async |_: &Ticket| {})
            .await
            .unwrap_err();
        assert!(
            matches!(err, CollectError::DeadlinePassed { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn excerpts_are_short_and_never_split_a_character() {
        let page = "<html> é ".repeat(1000);
        let text = excerpt(page.as_bytes());
        assert!(text.ends_with("..."), "{text}");
        assert!(text.chars().count() <= 83, "{text}");
        assert_eq!(excerpt(b"\xff\xfe"), "\u{fffd}\u{fffd}");
        assert_eq!(excerpt(b"a\0b\x1b[31m"), "a\\0b\\u{1b}[31m");
    }
}
