//! The push loop of one stream, SotW or delta alike: the responses tonic sends, each made when
//! the connection can take it, from whichever comes first — a request, a change of a held
//! certificate or bundle, or the server's drain.

use std::pin::Pin;

use futures::StreamExt;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::{Status, Streaming};
use tracing::debug;

use super::ResponseStream;
use super::admission::unreadable;
use super::session::{Protocol, Session};
use crate::sds::error::RequestError;
use crate::sds::stats::SdsStats;

/// How a stream's task ended.
enum Exit {
    /// The client closed its side or went away.
    ClientGone,
    /// The server is draining.
    Draining,
    /// A request was refused; the stream ends with this error.
    Refused(RequestError),
}

/// The stream of responses tonic sends, driven by the connection: each time it can take a
/// response, the stream waits for whichever comes first — a request (ACK, NACK, changed names),
/// a change of a held certificate or bundle, or the drain — and yields what that calls for.
///
/// No task or queue per stream: a response is made only when the connection asks for one, so
/// a slow client holds at most what HTTP/2 flow control lets it hold, and a change that happens
/// meanwhile is sent as the latest state (the watch channels keep only that).
pub(super) fn responses<P: Protocol>(
    stream: Session<P>,
    inbound: Streaming<P::Request>,
    first: Option<P::Response>,
) -> ResponseStream<P::Response> {
    // The stream's state stays in one box for the stream's life: `unfold` holds it both between
    // responses and inside the future making the next one, and 10,000 streams each carrying
    // two copies of it inline added up (docs/BENCHMARKS.md, SDS memory per stream).
    let drain = Box::pin(stream.subs.shared.drain.clone().cancelled_owned());
    let open = Box::new(Open {
        stream,
        inbound,
        first,
        drain,
    });
    futures::stream::unfold(Some(open), |state| async move {
        let mut open = state?;
        let next = match open.first.take() {
            Some(response) => Ok((response, false)),
            None => next_response(&mut open.stream, &mut open.inbound, &mut open.drain).await,
        };
        match next {
            Ok((response, push)) => {
                let subs = &open.stream.subs;
                SdsStats::bump(&subs.shared.stats.responses);
                if push {
                    SdsStats::bump(&subs.shared.stats.pushes);
                    debug!(stream = subs.stream, caller = %subs.caller, "pushed changed secrets");
                }
                Some((Ok(response), Some(open)))
            }
            Err(exit) => finish(&open.stream, exit).map(|status| (Err(status), None)),
        }
    })
    .boxed()
}

/// An open stream between responses.
struct Open<P: Protocol> {
    stream: Session<P>,
    inbound: Streaming<P::Request>,
    /// The answer to the first request, made before the stream was returned to tonic.
    first: Option<P::Response>,
    /// The server's drain signal, registered once for the stream's life: a fresh `cancelled()`
    /// per wake-up cloned the token and registered and removed a waiter, each under a lock
    /// every stream of the server shares.
    drain: Pin<Box<WaitForCancellationFutureOwned>>,
}

/// Waits for the next response to send (and whether it is a push), or for the stream's end.
async fn next_response<P: Protocol>(
    stream: &mut Session<P>,
    inbound: &mut Streaming<P::Request>,
    drain: &mut Pin<Box<WaitForCancellationFutureOwned>>,
) -> Result<(P::Response, bool), Exit> {
    loop {
        tokio::select! {
            biased;
            () = drain.as_mut() => return Err(Exit::Draining),
            message = inbound.message() => match message {
                Ok(Some(request)) => {
                    // Boxed: handling a request can subscribe and issue, a future several
                    // times the size of everything else a waiting stream holds.
                    if let Some(response) = Box::pin(stream.on_request(request)).await.map_err(Exit::Refused)? {
                        return Ok((response, false));
                    }
                }
                Ok(None) => return Err(Exit::ClientGone),
                Err(status) => {
                    if let Some(error) = unreadable(&status) {
                        return Err(Exit::Refused(error));
                    }
                    debug!(stream = stream.subs.stream, kind = P::KIND, %status, "SDS stream read failed");
                    return Err(Exit::ClientGone);
                }
            },
            () = stream.subs.changed() => {
                if let Some(response) = stream.respond(true) {
                    return Ok((response, true));
                }
            }
        }
    }
}

/// Ends a stream: the status to tell the client why, if it is still there.
fn finish<P: Protocol>(stream: &Session<P>, exit: Exit) -> Option<Status> {
    let acked = stream.acked();
    let subs = &stream.subs;
    match exit {
        Exit::ClientGone => {
            debug!(stream = subs.stream, caller = %subs.caller, kind = P::KIND, ?acked, "SDS stream closed by the client");
            None
        }
        Exit::Draining => Some(subs.refuse(RequestError::ShuttingDown)),
        Exit::Refused(error) => Some(subs.refuse(error)),
    }
}
