//! The HTTP interface: routes, handlers, and how every outcome becomes a response.
//!
//! Wire-compatible with the original server: same routes, ticket format, messages and bodies,
//! so its own collector works unchanged. What a client relies on byte for byte is defined once,
//! for this server and the collector alike, in [`report_common::wire`] and
//! [`report_common::ticket`]. Error responses mirror Go's `http.Error` (plain text,
//! message plus a newline).
//!
//! One addition the original lacks (it answers 405): `DELETE /get_report/{ticket}` cancels a
//! ticket, so a collector that will never fetch a report stops it slowing the others down.
//!
//! Another: the fence ([`crate::fence`]). A request with a `Report-Fence` header is checked
//! against its lock's mark before it is acted on, and its answer carries `Report-Fence-Mark`;
//! a request without one (the original client's) is served as before, but for a `DELETE` of a
//! ticket issued under a fence.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use report_common::fence::{self as wire_fence, Fence, FenceError, MAX_HEADER_LEN, Token};
use report_common::ticket::{self, TicketError};
use report_common::wire::{
    GET_REPORT, GET_REPORT_EMPTY, HEALTHZ, METRICS, NOT_READY, REPORT_CONTENT_TYPE, REQUEST_REPORT,
};
use tokio::time::Instant;
use uuid::Uuid;

use crate::fence::{Action, Fences, Refusal, Refused};
use crate::metrics::{Metrics, RequestLabels};
use crate::rejections::{Reason, Rejections};
use crate::report;
use crate::tickets::{Fetch, Tickets};

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub tickets: Arc<Tickets>,
    pub fences: Arc<Fences>,
    pub metrics: Arc<Metrics>,
    pub rejections: Arc<Rejections>,
}

/// The whole HTTP application. The route patterns are also the `route` label of the request
/// counter.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route(REQUEST_REPORT, get(request_report))
        .route(GET_REPORT, get(get_report).delete(cancel_ticket))
        // An empty ticket is a malformed ticket, not an unknown route.
        .route(
            GET_REPORT_EMPTY,
            get(|| async { ApiError::InvalidTicketId })
                .delete(|| async { ApiError::InvalidTicketId }),
        )
        .route(HEALTHZ, get(|| async { "ok" }))
        .route(METRICS, get(metrics))
        .fallback(|| async { ApiError::NoRoute })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// Everything a client can get wrong, and the server's refusals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// `?offset=` is not a whole number from 0 to `i64::MAX`.
    InvalidOffsetParam,
    /// The ticket is not `<uuid>_<offset>` (the original's message).
    InvalidTicketId,
    /// The ticket's offset is not an integer (the original's message).
    InvalidTicketOffset,
    /// Well-formed, but never issued or already expired.
    UnknownTicket,
    /// `max-pending` tickets are held.
    Full { retry_after: u64 },
    /// No such route.
    NoRoute,
    /// The `Report-Fence` header is malformed, too long or repeated.
    FenceHeader(FenceHeaderError),
    /// The fence refused the request.
    Fence(Refused),
}

/// What is wrong with a `Report-Fence` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceHeaderError {
    /// The value does not read ([`Fence::parse`]).
    Value(FenceError),
    /// The header came more than once.
    Repeated,
}

/// What every fence refusal's body ends with: the header's form.
const FENCE_FORM: &str = "send it once, as \"lock=<percent-encoded name>; id=<32 lowercase \
                          hexadecimal digits>; token=<epoch>.<count>\", or not at all";

impl ApiError {
    fn status_and_message(&self) -> (StatusCode, String) {
        let fixed = |status, message: &str| (status, message.to_owned());
        match self {
            Self::InvalidOffsetParam => fixed(
                StatusCode::BAD_REQUEST,
                "invalid offset format: offset must be a whole number from 0 to 9223372036854775807",
            ),
            Self::InvalidTicketId => fixed(StatusCode::BAD_REQUEST, "invalid ticketId format"),
            Self::InvalidTicketOffset => fixed(StatusCode::BAD_REQUEST, "invalid offset format"),
            Self::UnknownTicket => fixed(
                StatusCode::NOT_FOUND,
                "ticket not found: it was never issued or has expired; request a new one with /request_report",
            ),
            Self::Full { .. } => fixed(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many tickets are outstanding; retry after the number of seconds in Retry-After",
            ),
            Self::NoRoute => fixed(
                StatusCode::NOT_FOUND,
                "not found: the routes are /request_report, /get_report/{ticket}, /healthz and /metrics",
            ),
            Self::FenceHeader(error) => (
                StatusCode::BAD_REQUEST,
                match error {
                    FenceHeaderError::Value(FenceError::Size) => format!(
                        "invalid Report-Fence header: longer than {MAX_HEADER_LEN} bytes or not \
                         visible ASCII; {FENCE_FORM}"
                    ),
                    FenceHeaderError::Value(error) => {
                        format!("invalid Report-Fence header: {error}; {FENCE_FORM}")
                    }
                    FenceHeaderError::Repeated => {
                        format!("invalid Report-Fence header: it came more than once; {FENCE_FORM}")
                    }
                },
            ),
            Self::Fence(refused) => refusal_message(&refused.refusal),
        }
    }
}

/// The status and words of a fence refusal.
fn refusal_message(refusal: &Refusal) -> (StatusCode, String) {
    match refusal {
        Refusal::Stale { lock, token, mark } => (
            StatusCode::CONFLICT,
            format!(
                "this request's token {token} of lock {lock:?} is below the lock's mark {mark}: \
                 another holder has taken the lock since; this run must stop and leave the \
                 ticket to it",
                lock = lock.as_str()
            ),
        ),
        Refusal::OtherLock { lock } => (
            StatusCode::CONFLICT,
            format!(
                "this ticket was issued under another lock's fence, not lock {lock:?}'s: only \
                 a holder of that lock may cancel it; leave it",
                lock = lock.as_str()
            ),
        ),
        Refusal::TokenlessCancel => (
            StatusCode::CONFLICT,
            "this ticket was issued under a lock's fence: only a holder of that lock may cancel \
             it, with its Report-Fence header"
                .to_owned(),
        ),
        Refusal::MaxLocks { max_locks } => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server already keeps the marks of limits.max-locks ({max_locks}) locks and \
                 this request names a new one: raise limits.max-locks in the server's \
                 configuration and reload it (systemctl reload report-apis)"
            ),
        ),
        Refusal::NotRecorded => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the server cannot record this lock's new mark in its state file; retry later \
             (its journal says why)"
                .to_owned(),
        ),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = self.status_and_message();
        let mut response = (status, format!("{message}\n")).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        match self {
            Self::Full { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            Self::Fence(Refused {
                mark: Some(mark), ..
            }) => return with_mark(response, Some(mark)),
            _ => {}
        }
        response
    }
}

/// `Report-Fence-Mark: <epoch>.<count>` when the request's fence was enforced.
fn with_mark(mut response: Response, mark: Option<Token>) -> Response {
    if let Some(mark) = mark
        && let Ok(value) = HeaderValue::from_str(&mark.to_string())
    {
        response
            .headers_mut()
            .insert(wire_fence::MARK_HEADER, value);
    }
    response
}

/// The request's fence, if it sent one; a header that is malformed, too long or repeated is
/// refused (and counted) before anything else is looked at.
fn fence_header(state: &AppState, headers: &HeaderMap) -> Result<Option<Fence>, ApiError> {
    let mut values = headers.get_all(wire_fence::HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let parsed = if values.next().is_some() {
        Err(FenceHeaderError::Repeated)
    } else {
        // `Fence::parse` refuses a value over MAX_HEADER_LEN before reading it.
        Fence::parse(value.as_bytes()).map_err(FenceHeaderError::Value)
    };
    parsed.map(Some).map_err(|error| {
        state.rejections.record(Reason::FenceHeader);
        ApiError::FenceHeader(error)
    })
}

/// Lets the request through the fence, or counts why not.
async fn admit<'a>(
    state: &'a AppState,
    fence: Option<&Fence>,
    action: Action,
) -> Result<crate::fence::Admitted<'a>, ApiError> {
    state.fences.admit(fence, action).await.map_err(|refused| {
        let reason = match refused.refusal {
            Refusal::Stale { .. } => Some(Reason::FenceStale),
            Refusal::OtherLock { .. } => Some(Reason::FenceOtherLock),
            Refusal::TokenlessCancel => Some(Reason::FenceTokenlessCancel),
            Refusal::MaxLocks { .. } => Some(Reason::FenceMaxLocks),
            // Logged once by the fence: the state file cannot be written.
            Refusal::NotRecorded => None,
        };
        if let Some(reason) = reason {
            state.rejections.record(reason);
        }
        ApiError::Fence(refused)
    })
}

/// Offsets are Go `int`s in the original; negative ones make no sense for a report.
/// Public for the fuzz targets only.
#[doc(hidden)]
pub fn parse_offset(text: &str) -> Option<u64> {
    text.parse::<i64>().ok().and_then(|n| u64::try_from(n).ok())
}

async fn request_report(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let fence = fence_header(&state, &headers)?;
    let Query(pairs) = query.map_err(|_| ApiError::InvalidOffsetParam)?;
    // Like Go's `Query().Get`: the first `offset` wins, and an empty one means 0.
    let offset = match pairs.iter().find(|(key, _)| key == "offset") {
        None => 0,
        Some((_, value)) if value.is_empty() => 0,
        Some((_, value)) => parse_offset(value).ok_or(ApiError::InvalidOffsetParam)?,
    };
    let admitted = admit(&state, fence.as_ref(), Action::Request).await?;
    let now = Instant::now();
    // The lock's ticket still pending is handed back, never a second one (crate::fence).
    let answer = match admitted.pending_ticket(&state.tickets, now) {
        Some((id, offset)) => Ok(ticket::format(id, offset)),
        None => state
            .tickets
            .issue_under(offset, admitted.ticket_fence(), now)
            .map(|id| {
                admitted.issued(id, offset);
                ticket::format(id, offset)
            })
            .map_err(|full| {
                state.rejections.record(Reason::MaxPending);
                ApiError::Full {
                    retry_after: full.retry_after,
                }
            }),
    };
    Ok(with_mark(answer.into_response(), admitted.mark()))
}

/// A ticket as the client sent it: `<uuid>_<integer>`, or which message the original gave.
fn parse_ticket(text: &str) -> Result<(Uuid, i64), ApiError> {
    ticket::parse(text).map_err(|err| match err {
        TicketError::Id => ApiError::InvalidTicketId,
        TicketError::Offset => ApiError::InvalidTicketOffset,
    })
}

/// The ticket of a `/get_report/{ticket}` path.
fn ticket_in_path(ticket: Result<Path<String>, PathRejection>) -> Result<(Uuid, i64), ApiError> {
    // A rejection here is a path segment that is not UTF-8 once percent-decoded.
    let Path(ticket) = ticket.map_err(|_| ApiError::InvalidTicketId)?;
    parse_ticket(&ticket)
}

async fn get_report(
    State(state): State<AppState>,
    headers: HeaderMap,
    ticket: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let fence = fence_header(&state, &headers)?;
    let (id, offset) = ticket_in_path(ticket)?;
    let admitted = admit(&state, fence.as_ref(), Action::Fetch).await?;
    let answer = fetch(&state, id, offset);
    Ok(with_mark(answer.into_response(), admitted.mark()))
}

/// The answer to a `GET` of a well-formed ticket.
fn fetch(state: &AppState, id: Uuid, offset: i64) -> Result<Response, ApiError> {
    // A negative offset is well-formed but never issued.
    let Ok(offset) = u64::try_from(offset) else {
        return Err(ApiError::UnknownTicket);
    };
    match state.tickets.fetch(id, offset, Instant::now()) {
        Fetch::Ready { offset } => Ok((
            [
                (header::CONTENT_TYPE, REPORT_CONTENT_TYPE.to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    report::content_disposition(offset),
                ),
            ],
            report::csv(offset),
        )
            .into_response()),
        Fetch::NotReady { retry_after } => {
            Ok(([(header::RETRY_AFTER, retry_after)], NOT_READY).into_response())
        }
        Fetch::Unknown => Err(ApiError::UnknownTicket),
    }
}

/// 204 whether or not the ticket was held: the client wants it gone, and it is, so a retried
/// or repeated cancel is no error. Only a malformed ticket is, as for a GET, and a cancel the
/// fence refuses: a ticket issued under a lock's fence is that lock's holder's to cancel.
async fn cancel_ticket(
    State(state): State<AppState>,
    headers: HeaderMap,
    ticket: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let fence = fence_header(&state, &headers)?;
    let (id, offset) = ticket_in_path(ticket)?;
    // A negative offset is well-formed but never issued: nothing to drop.
    let held = u64::try_from(offset).ok();
    let issued_under = held
        .and_then(|offset| state.tickets.fence_of(id, offset, Instant::now()))
        .map(|fence| fence.lock);
    let admitted = admit(&state, fence.as_ref(), Action::Cancel { issued_under }).await?;
    if let Some(offset) = held {
        state.tickets.cancel(id, offset, Instant::now());
    }
    Ok(with_mark(
        StatusCode::NO_CONTENT.into_response(),
        admitted.mark(),
    ))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.tickets.snapshot(Instant::now());
    state.fences.refresh(&state.tickets, Instant::now());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Counts every answer by route pattern, method and status; also logs any 5xx once, but a
/// 503: the refusals at `max-pending` and `max-locks`, which [`Rejections`] summarises
/// instead, and a mark the state file cannot take, which the fence logs once.
async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = match request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
    {
        Some(REQUEST_REPORT) => REQUEST_REPORT,
        Some(GET_REPORT) => GET_REPORT,
        Some(GET_REPORT_EMPTY) => GET_REPORT_EMPTY,
        Some(HEALTHZ) => HEALTHZ,
        Some(METRICS) => METRICS,
        Some(_) => "other",
        None => "unmatched",
    };
    let method = match *request.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let response = next.run(request).await;
    let status = response.status();
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        tracing::error!(
            ROUTE = route,
            STATUS = status.as_u16(),
            "{method} {route} answered {status}"
        );
    }
    state
        .metrics
        .http_requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: status.as_u16(),
        })
        .inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_parse_like_the_original() {
        let id = "123e4567-e89b-42d3-a456-426614174000";
        assert!(parse_ticket(&format!("{id}_10000")).is_ok());
        assert_eq!(parse_ticket(&format!("{id}_-3")).unwrap().1, -3);
        assert_eq!(parse_ticket(""), Err(ApiError::InvalidTicketId));
        assert_eq!(parse_ticket(id), Err(ApiError::InvalidTicketId));
        assert_eq!(
            parse_ticket(&format!("{id}_1_2")),
            Err(ApiError::InvalidTicketId)
        );
        assert_eq!(
            parse_ticket(&format!("{id}_x")),
            Err(ApiError::InvalidTicketOffset)
        );
        assert_eq!(
            parse_ticket(&format!("{id}_")),
            Err(ApiError::InvalidTicketOffset)
        );
        assert_eq!(
            parse_ticket(&format!("{id}_99999999999999999999")),
            Err(ApiError::InvalidTicketOffset)
        );
        assert_eq!(parse_ticket("not-a-uuid_5"), Err(ApiError::InvalidTicketId));
        assert_eq!(
            parse_ticket("123e4567e89b42d3a456426614174000_5"),
            Err(ApiError::InvalidTicketId)
        );
    }

    #[test]
    fn offsets_are_non_negative_go_ints() {
        assert_eq!(parse_offset("0"), Some(0));
        assert_eq!(parse_offset("9223372036854775807"), Some(i64::MAX as u64));
        assert_eq!(parse_offset("9223372036854775808"), None);
        assert_eq!(parse_offset("-1"), None);
        assert_eq!(parse_offset("1.5"), None);
        assert_eq!(parse_offset("abc"), None);
    }
}
