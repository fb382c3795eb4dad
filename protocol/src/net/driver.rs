//! (Over 600 lines: one task's state machine, its read, dispatch, write, timeout and
//! close paths sharing the invariants below; split, they would be stated nowhere whole.)
//!
//! The one task that drives a connection: it reads frames, runs the handler futures of the
//! peer's requests inside itself (no task per request), and writes their replies and the
//! frames of local calls.
//!
//! Invariants:
//! - Pending work, the peer's requests being handled plus their replies not yet written,
//!   stays within `max_pending_requests`: no frame is taken from the read buffer at that
//!   count. Pending bytes (requests being handled plus everything queued for writing)
//!   stop reading at `max_pending_bytes`, and replies are taken from finished handlers only
//!   below it or when nothing is queued, so a peer that never reads leaves its handlers
//!   unpolled rather than their replies queued. Past the bound go at most one frame read
//!   and one reply (each at most `max_frame`). While paused, at most [`READ_AHEAD`] bytes
//!   more are read (unparsed), so a peer's close is still seen.
//! - A server's connections publish their pending bytes into one total; while it is at
//!   `max_pending_bytes_total`, a connection holding its [`FAIR_SHARE`] or more pauses as
//!   at its own bound. One holding less goes on (one frame and one reply past), so every
//!   peer keeps being served. A paused connection holds work of its own (replies to write,
//!   handlers running) whose progress wakes it: nothing waits on the others.
//! - A frame longer than [`READ_AHEAD`] is read past it only once it holds its length (at
//!   most the whole) of the server's bytes of large frames being read, taken at once (no
//!   frame holds part while waiting for more, so none waits on another forever) and given
//!   back when the frame is whole. A paused connection does not take the room. A frame
//!   waiting holds at most `READ_AHEAD` and a chunk; one holding the room is bound by the
//!   frame read timeout, paused or not.
//! - A frame begun must be whole within `frame_read_timeout` of reading time; a connection
//!   with no frame read and nothing written for `idle_timeout` is closed, and so is one
//!   whose peer has read less than [`MIN_FAIR_SHARE`] of its queued answers for
//!   `frame_read_timeout` while another connection was refused room in the total (an
//!   answer refused, a connection paused) within as long: the room it holds is the
//!   others' too. All are checked on a tick (a quarter of the shorter timeout), so each
//!   fires within 1.25 times its setting.
//! - When the peer closes (or resets) between frames, its one-way requests and the ones
//!   its handler says complete after a close (sends) keep running for up to
//!   [`EOF_GRACE`] (a producer's last sends are stored);
//!   otherwise, and past that, however it ends, the handler futures of its requests are
//!   dropped at once (cancelling held pulls and filter work), then its calls fail, then
//!   `Handler::on_close` runs, once.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{AcquireError, SemaphorePermit, mpsc};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::config::MIN_FAIR_SHARE;
use super::connection::{Connection, queued_cost};
use super::events::{CLIENT_EVENTS, Events};
use super::outq::OutQueue;
use super::server::Shared;
use super::transport::Transport;
use super::wire::{Handlers, SNIFF_LEN, Wire};
use super::{BoxFuture, Reply, Request};
use crate::codes::ErrorCode;
use crate::error::ProtocolError;
use crate::frame::{FIXED_LEN, Frame, Kind};

/// Bytes read at a time (more when a frame needs more).
const READ_CHUNK: usize = 32 << 10;
/// Most the read buffer grows by at once for a frame begun.
const GROW_STEP: usize = 1 << 20;
/// While reading is paused, at most this much more is read ahead, so a close is seen.
const READ_AHEAD: usize = 64 << 10;
/// An empty read buffer bigger than this is let go (after a large frame).
const KEEP_READ_CAPACITY: usize = 1 << 20;
/// Rounds of work in one poll before letting other tasks run.
const ROUNDS: usize = 16;
/// Requests a server's connection takes from its read buffer in one poll before letting
/// other tasks run: a fairness bound between connections, set above the requests one
/// client usually has in flight. Each time it is reached the connection yields through
/// the scheduler, which wakes an idle worker to steal it (a futex or eventfd write, and a
/// wake-up that costs tens of µs on a VM): at 8, 64 single sends in flight on one
/// connection cost 3.4–5.2 µs of broker CPU a send, against 2.6–4.0 at 64; and a sync
/// master's replication stream (woken by a burst's first append) gained nothing from the
/// shorter bursts (its sends wait on the slave's round trip either way).
const SERVER_DISPATCH_PER_POLL: usize = 64;
/// Replies to this side's calls a client's connection takes in one poll before letting
/// the callers run: each group of replies wakes its callers, whose next requests then
/// leave while the connection reads on, instead of all of them after one long burst (at
/// 1,000 a client of 64 in flight fell into lock-step with the broker, 87–103 K a second;
/// 16 beat 8 and 32, measured on 64 single sends in flight).
const CLIENT_DISPATCH_PER_POLL: usize = 16;
/// How long a closing connection may take to write what it had queued.
const FINAL_FLUSH: Duration = Duration::from_secs(1);
/// After the peer's clean close, how long requests already read may still run (checked
/// on the clock's tick, so up to a tick more).
const EOF_GRACE: Duration = Duration::from_secs(1);

/// Starts the driver of `conn`.
/// `wire`: the connection's protocol when known (a client's); `None`: a server's
/// connection, whose first bytes decide among the protocols `handlers` serve.
///
/// Generic over the stream, so plaintext connections run exactly the code they ran before
/// TLS.
pub(super) fn spawn<S: Transport>(
    stream: S,
    conn: Connection,
    handlers: Handlers,
    wire: Option<Wire>,
    rx: mpsc::UnboundedReceiver<Frame>,
    server: Option<Arc<Shared>>,
) {
    tokio::spawn(run(stream, conn, handlers, wire, rx, server));
}

/// Why a connection ended.
enum End {
    /// Closed on this side: `close`, the opener's last handle, a server shutdown.
    Closed,
    /// The peer closed between frames.
    Eof,
    /// The peer went mid-frame, reset the connection, or writing failed: ordinary.
    Gone(std::io::Error),
    BadFrame(ProtocolError),
    FrameTimeout,
    Idle,
    /// Its answers (next to) not read for the frame read timeout, others short of room.
    Unread,
}

/// A request being handled.
struct Handling<'a> {
    fut: BoxFuture<'a, Reply>,
    wire: Wire,
    request_id: u32,
    oneway: bool,
    /// Runs on after the peer's close (see `Handler::completes_after_close`).
    survives_close: bool,
    bytes: usize,
}

struct Done {
    reply: Reply,
    request_id: u32,
    oneway: bool,
    survives_close: bool,
    bytes: usize,
}

impl Future for Handling<'_> {
    type Output = Done;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Done> {
        let this = &mut *self;
        // A panicking handler fails its request, not the connection.
        let reply = match std::panic::catch_unwind(AssertUnwindSafe(|| this.fut.as_mut().poll(cx)))
        {
            Ok(Poll::Ready(r)) => r,
            Ok(Poll::Pending) => return Poll::Pending,
            Err(_) => this.wire.error_reply(
                this.request_id,
                ErrorCode::SystemError,
                "the request's handler panicked",
            ),
        };
        Poll::Ready(Done {
            reply,
            request_id: this.request_id,
            oneway: this.oneway,
            survives_close: this.survives_close,
            bytes: this.bytes,
        })
    }
}

/// A large frame's wait for room to be read.
type ReadingWait<'a> =
    Pin<Box<dyn Future<Output = Result<SemaphorePermit<'a>, AcquireError>> + Send + 'a>>;

/// The timeouts, counted in ticks.
struct Clock {
    ticker: Interval,
    /// Ticks a frame may stay partial; ticks without a frame either way.
    frame_ticks: u32,
    idle_ticks: Option<u32>,
    last_frames_in: u64,
    last_written: u64,
    partial_for: u32,
    idle_for: u32,
    /// Ticks with answers queued and less than [`MIN_FAIR_SHARE`] of them read, and
    /// what was written when that began.
    unread_for: u32,
    unread_from: u64,
}

impl Clock {
    fn new(frame_timeout: Duration, idle_timeout: Option<Duration>) -> Clock {
        let shortest = idle_timeout.map_or(frame_timeout, |i| i.min(frame_timeout));
        let period = (shortest / 4).max(Duration::from_millis(1));
        let ticks = |d: Duration| {
            u32::try_from(d.as_nanos().div_ceil(period.as_nanos())).unwrap_or(u32::MAX)
        };
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Clock {
            ticker,
            frame_ticks: ticks(frame_timeout),
            idle_ticks: idle_timeout.map(ticks),
            last_frames_in: 0,
            last_written: 0,
            partial_for: 0,
            idle_for: 0,
            unread_for: 0,
            unread_from: 0,
        }
    }
}

struct Driver<'a, S> {
    conn: &'a Connection,
    handlers: &'a Handlers,
    /// The connection's protocol, once known.
    wire: Option<Wire>,
    stream: &'a mut S,
    rx: &'a mut mpsc::UnboundedReceiver<Frame>,
    max_frame: usize,
    max_requests: usize,
    max_bytes: usize,
    /// Frames taken from the read buffer in one poll ([`SERVER_DISPATCH_PER_POLL`],
    /// [`CLIENT_DISPATCH_PER_POLL`]).
    dispatch_per_poll: usize,
    /// The server's connections, for their total of pending bytes (none: a client's).
    server: Option<&'a Shared>,
    /// This connection's pending bytes as last added to the server's total.
    published_bytes: usize,
    /// Paused at the server's total (counted once per pause).
    budget_paused: bool,
    /// The room of the large frame being read, or its wait for it (see `room_to_read`).
    reading_room: Option<SemaphorePermit<'a>>,
    reading_wait: Option<ReadingWait<'a>>,
    /// The frame being read waited for its room (counted once per frame).
    frame_waiting: bool,
    inbuf: BytesMut,
    eof: bool,
    /// When the requests still running after the peer's clean close are given up.
    eof_deadline: Option<Instant>,
    /// The peer reset the connection (ended like a close, reported as lost).
    reset: Option<std::io::Error>,
    frames_in: u64,
    inflight: FuturesUnordered<Handling<'a>>,
    inflight_bytes: usize,
    out: OutQueue,
    /// Where each queued reply ends in `out`, oldest first.
    reply_ends: VecDeque<u64>,
    clock: Clock,
    peak_requests: usize,
    peak_bytes: usize,
}

impl<'a, S: Transport> Driver<'a, S> {
    fn new(
        conn: &'a Connection,
        handlers: &'a Handlers,
        wire: Option<Wire>,
        stream: &'a mut S,
        rx: &'a mut mpsc::UnboundedReceiver<Frame>,
        server: Option<&'a Shared>,
    ) -> Self {
        let c = conn.inner.config;
        Driver {
            conn,
            handlers,
            wire,
            stream,
            rx,
            max_frame: c.max_frame,
            max_requests: c.max_pending_requests,
            max_bytes: c.max_pending_bytes,
            dispatch_per_poll: if server.is_some() {
                SERVER_DISPATCH_PER_POLL
            } else {
                CLIENT_DISPATCH_PER_POLL
            },
            server,
            published_bytes: 0,
            budget_paused: false,
            reading_room: None,
            reading_wait: None,
            frame_waiting: false,
            inbuf: BytesMut::new(),
            eof: false,
            eof_deadline: None,
            reset: None,
            frames_in: 0,
            inflight: FuturesUnordered::new(),
            inflight_bytes: 0,
            out: OutQueue::new(wire.unwrap_or_default()),
            reply_ends: VecDeque::new(),
            clock: Clock::new(c.frame_read_timeout, c.idle_timeout),
            peak_requests: 0,
            peak_bytes: 0,
        }
    }

    fn pending_requests(&self) -> usize {
        self.inflight.len() + self.reply_ends.len()
    }

    fn pending_bytes(&self) -> usize {
        self.inflight_bytes + self.out.held()
    }

    /// Whether the server's connections together leave this one room to take more.
    fn within_server_budget(&self) -> bool {
        self.server.is_none_or(|s| {
            let own = self.pending_bytes();
            own < s.fair_share().min(self.max_bytes)
                || self.server_total(s, own) < s.max_pending_bytes_total
        })
    }

    /// The server's total as published, with this connection's own part as it is now.
    fn server_total(&self, s: &Shared, own: usize) -> usize {
        s.pending_bytes
            .load(Ordering::Relaxed)
            .saturating_sub(self.published_bytes)
            .saturating_add(own)
    }

    /// The most bytes an answer may take now: unbounded for a client; for a server's
    /// connection what is left of the server's total, or of this connection's fair
    /// share, whichever is more.
    fn answer_room(&self) -> usize {
        self.server.map_or(usize::MAX, |s| {
            let own = self.pending_bytes();
            let share = s.fair_share().min(self.max_bytes);
            let total = self.server_total(s, own);
            share
                .saturating_sub(own)
                .max(s.max_pending_bytes_total.saturating_sub(total))
        })
    }

    /// Whether the frame being read may be read on: one longer than [`READ_AHEAD`] first
    /// takes its length (at most all of it) from the server's bytes of large frames being
    /// read. While it waits, this task is woken when it may.
    fn room_to_read(&mut self, cx: &mut Context<'_>) -> bool {
        let (Some(s), Some(wire), None) = (self.server, self.wire, &self.reading_room) else {
            return true;
        };
        let len = match wire.frame_len(&self.inbuf, self.max_frame) {
            Ok(Some(len)) => len.saturating_add(4),
            // Not known yet, or refused when parsed.
            Ok(None) | Err(_) => return true,
        };
        if len <= READ_AHEAD {
            return true;
        }
        if self.reading_wait.is_none() {
            let want = u32::try_from(len.min(s.max_pending_bytes_total)).unwrap_or(u32::MAX);
            self.reading_wait = Some(Box::pin(s.reading.acquire_many(want)));
        }
        let Some(wait) = self.reading_wait.as_mut() else {
            return true;
        };
        match wait.as_mut().poll(cx) {
            Poll::Ready(permit) => {
                self.reading_wait = None;
                // (The semaphore is never closed.)
                self.reading_room = permit.ok();
                true
            }
            Poll::Pending => {
                if !self.frame_waiting {
                    self.frame_waiting = true;
                    let peer = self.conn.peer();
                    let cap = s.max_pending_bytes_total;
                    s.events.frame_waits.record(|count| {
                        info!(%peer, len, cap, count, "large frames waiting for room to be read (net.max_pending_bytes_total of them being read already): {count} since the last report, the latest shown");
                    });
                }
                false
            }
        }
    }

    /// Whether another request may be taken from the read buffer.
    fn may_read(&self) -> bool {
        self.pending_requests() < self.max_requests
            && self.pending_bytes() < self.max_bytes
            && self.within_server_budget()
    }

    /// Whether another reply (or local frame) may be queued.
    fn may_queue(&self) -> bool {
        (self.pending_bytes() < self.max_bytes && self.within_server_budget())
            || self.out.is_empty()
    }

    fn note_peaks(&mut self) {
        self.peak_requests = self.peak_requests.max(self.pending_requests());
        self.peak_bytes = self.peak_bytes.max(self.pending_bytes());
    }

    fn publish(&mut self) {
        if let Some(s) = self.server {
            let now = self.pending_bytes();
            if now > self.published_bytes {
                s.pending_bytes
                    .fetch_add(now - self.published_bytes, Ordering::Relaxed);
            } else if now < self.published_bytes {
                s.pending_bytes
                    .fetch_sub(self.published_bytes - now, Ordering::Relaxed);
            }
            self.published_bytes = now;
            let paused = !self.within_server_budget();
            if paused && !self.budget_paused {
                s.note_shortage();
                let (held, cap) = (
                    s.pending_bytes.load(Ordering::Relaxed),
                    s.max_pending_bytes_total,
                );
                let peer = self.conn.peer();
                s.events.budget_pauses.record(|count| {
                    warn!(%peer, held, cap, count, "paused connections holding their fair share while all together hold net.max_pending_bytes_total ({cap} bytes): {count} since the last report, the latest shown");
                });
            }
            self.budget_paused = paused;
        }
        let load = &self.conn.inner.load;
        load.requests
            .store(self.pending_requests(), Ordering::Relaxed);
        load.bytes.store(self.pending_bytes(), Ordering::Relaxed);
        load.peak_requests
            .store(self.peak_requests, Ordering::Relaxed);
        load.peak_bytes.store(self.peak_bytes, Ordering::Relaxed);
        load.reading.store(self.inbuf.len(), Ordering::Relaxed);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        let mut dispatched = 0usize;
        for _ in 0..ROUNDS {
            let mut progress = false;
            // Replies of finished handlers (a handler runs only when polled here).
            while self.may_queue() && !self.inflight.is_empty() {
                if self.server.is_some() {
                    // What the handlers read as their room (`AnswerRoom`).
                    let room = self.answer_room();
                    self.conn.inner.answer_room.store(room, Ordering::Relaxed);
                }
                match self.inflight.poll_next_unpin(cx) {
                    Poll::Ready(Some(done)) => {
                        self.finish(done);
                        progress = true;
                    }
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
            // Frames of local calls and one-ways.
            let mut took = 0usize;
            while self.may_queue() {
                match self.rx.poll_recv(cx) {
                    Poll::Ready(Some(f)) => {
                        took = took.saturating_add(queued_cost(&f));
                        self.out.push(&f);
                        progress = true;
                    }
                    // (The connection's handles hold the sender.)
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
            if took > 0 {
                self.conn.inner.took(took);
                self.note_peaks();
            }
            // Write.
            while !self.out.is_empty() {
                match self.stream.poll_write_from(cx, &mut self.out) {
                    Poll::Pending => break,
                    Poll::Ready(Err(e)) => return Poll::Ready(End::Gone(e)),
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(End::Gone(std::io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(_)) => {
                        let written = self.out.written();
                        while self.reply_ends.front().is_some_and(|end| *end <= written) {
                            self.reply_ends.pop_front();
                        }
                        progress = true;
                    }
                }
            }
            // (TLS: records still held; never for plaintext.)
            if self.stream.has_pending_writes()
                && let Poll::Ready(Err(e)) = self.stream.poll_flush_pending(cx)
            {
                return Poll::Ready(End::Gone(e));
            }
            // Read.
            loop {
                let may_read = self.may_read();
                if may_read && self.wire.is_none() && self.inbuf.len() >= SNIFF_LEN {
                    match Wire::sniff(&self.inbuf[..SNIFF_LEN], self.handlers) {
                        Ok(w) => {
                            self.wire = Some(w);
                            self.out.wire = w;
                        }
                        Err(e) => return Poll::Ready(End::BadFrame(e)),
                    }
                }
                if dispatched >= self.dispatch_per_poll {
                    break;
                }
                if may_read && let Some(wire) = self.wire {
                    match wire.parse_frame(&mut self.inbuf, self.max_frame) {
                        Ok(Some(f)) => {
                            // (Its bytes are the request's now, counted as pending.)
                            self.reading_room = None;
                            self.frame_waiting = false;
                            self.frames_in += 1;
                            self.dispatch(wire, f);
                            dispatched += 1;
                            progress = true;
                            continue;
                        }
                        Ok(None) => {}
                        Err(e) => return Poll::Ready(End::BadFrame(e)),
                    }
                }
                if self.eof {
                    if !self.inbuf.is_empty() {
                        return Poll::Ready(End::Gone(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                    // A clean close (or reset) after the last request: its one-way
                    // requests and its writes still run (a producer's last sends are
                    // stored), for a short while; the rest (held pulls) are dropped at once.
                    if self.eof_deadline.is_none() {
                        self.eof_deadline = Some(Instant::now() + EOF_GRACE);
                        let running = std::mem::take(&mut self.inflight);
                        for h in running {
                            if h.survives_close {
                                self.inflight.push(h);
                            } else {
                                self.inflight_bytes -= h.bytes;
                            }
                        }
                    }
                    if self.inflight.is_empty()
                        || Instant::now() >= self.eof_deadline.unwrap_or_else(Instant::now)
                    {
                        return Poll::Ready(match self.reset.take() {
                            Some(e) => End::Gone(e),
                            None => End::Eof,
                        });
                    }
                    break;
                }
                if !may_read && self.inbuf.len() >= READ_AHEAD {
                    break;
                }
                // A large frame reads on once it has its room; until then, up to
                // READ_AHEAD in small steps. A paused connection does not take the room
                // (it could not use it, and would keep it from the others).
                let room = may_read && self.room_to_read(cx);
                if !room && self.inbuf.len() >= READ_AHEAD {
                    break;
                }
                let (max_frame, wire) = (self.max_frame, self.wire.filter(|_| room));
                match self
                    .stream
                    .poll_read_into(cx, &mut self.inbuf, |buf| reserve(buf, max_frame, wire))
                {
                    Poll::Pending => break,
                    Poll::Ready(Ok(0)) => self.eof = true,
                    Poll::Ready(Ok(_)) => progress = true,
                    // A peer that closes with unread answers in its buffer resets the
                    // connection: its writes still run, as after a clean close.
                    Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                        self.eof = true;
                        self.reset = Some(e);
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(End::Gone(e)),
                }
            }
            // Timeouts.
            while self.clock.ticker.poll_tick(cx).is_ready() {
                if let Some(end) = self.tick() {
                    return Poll::Ready(end);
                }
            }
            if !progress {
                self.publish();
                return Poll::Pending;
            }
            if dispatched >= self.dispatch_per_poll {
                break;
            }
        }
        // Busy: let other tasks run, then go on.
        self.publish();
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn dispatch(&mut self, wire: Wire, f: Frame) {
        match f.kind {
            Kind::Response => self.conn.inner.complete_call(f),
            Kind::Request | Kind::Oneway => {
                // A decided wire always has its handler (`Wire::sniff`).
                let Some(handler) = self.handlers.get(wire) else {
                    return;
                };
                let bytes = wire.wire_len(&f);
                let oneway = f.kind == Kind::Oneway;
                let request_id = f.request_id;
                let req = Request {
                    code: f.code,
                    request_id,
                    oneway,
                    auth: f.auth,
                    header: f.header,
                    body: f.body,
                    received: std::time::Instant::now(),
                };
                let survives_close = oneway || handler.completes_after_close(&req);
                let fut = handler.handle(self.conn, req);
                self.inflight_bytes += bytes;
                self.inflight.push(Handling {
                    fut,
                    wire,
                    survives_close,
                    request_id,
                    oneway,
                    bytes,
                });
                self.note_peaks();
            }
        }
    }

    fn finish(&mut self, done: Done) {
        self.inflight_bytes -= done.bytes;
        if done.oneway {
            return;
        }
        let wire = self.wire.unwrap_or_default();
        let len = match wire {
            // (Replies are never signed.)
            Wire::Weir => FIXED_LEN + done.reply.header.len() + done.reply.body.len(),
            Wire::Remoting => 4 + done.reply.header.len() + done.reply.body.len(),
        };
        let reply = if len > self.max_frame {
            wire.error_reply(
                done.request_id,
                ErrorCode::SystemError,
                &format!(
                    "the reply of {len} bytes exceeds the frame maximum of {}",
                    self.max_frame
                ),
            )
        } else if !done.survives_close
            && let room = self.answer_room()
            && len > room
        {
            // Past the server's total, an answer beyond this connection's share is not
            // held for a peer that may never read it. (A write's answer always goes: the
            // peer must learn that it was done.)
            if let Some(s) = self.server {
                s.refuse_answer(self.conn.peer(), len, room);
            }
            wire.error_reply(
                done.request_id,
                ErrorCode::SystemBusy,
                &format!(
                    "busy: an answer of {len} bytes is refused, {room} bytes being this connection's room while the server's connections together hold net.max_pending_bytes_total of answers their clients have not read; retry later"
                ),
            )
        } else {
            done.reply
        };
        self.out.push(&Frame {
            kind: Kind::Response,
            request_id: done.request_id,
            code: reply.status,
            auth: Bytes::new(),
            header: reply.header,
            body: reply.body,
        });
        self.reply_ends.push_back(self.out.end());
        self.note_peaks();
    }

    /// One tick: a frame partial for too long, or nothing either way for too long.
    fn tick(&mut self) -> Option<End> {
        let written = self.out.written();
        // A frame begun and not whole, while reading (a pause, or a wait for room to read
        // it, is not the peer's doing), or while holding the room of large frames (which
        // others may be waiting for, paused or not).
        let partial = !self.inbuf.is_empty()
            && (self.may_read() || self.reading_room.is_some())
            && self.reading_wait.is_none()
            && match self.wire.map(|w| w.frame_len(&self.inbuf, self.max_frame)) {
                Some(Ok(Some(len))) => self.inbuf.len() - 4 < len,
                // Not even the protocol known yet, or the length incomplete.
                None | Some(Ok(None)) => true,
                // (Refused when parsed.)
                Some(Err(_)) => false,
            };
        // Answers waiting on a peer that reads (next to) none of them, while another
        // connection was refused room (a peer reading a few bytes now and then does not
        // keep its room that way). What was written is what the kernel took, which
        // follows the peer's reading in bursts of a third of the send buffer: a slow
        // reader behind a large buffer shows no progress for longer (see the README).
        let queued = !self.out.is_empty();
        let short = self
            .server
            .is_some_and(|s| s.short_within(self.conn.inner.config.frame_read_timeout));
        let c = &mut self.clock;
        if !queued || written.saturating_sub(c.unread_from) >= MIN_FAIR_SHARE as u64 {
            c.unread_for = 0;
            c.unread_from = written;
        } else {
            c.unread_for = c.unread_for.saturating_add(1);
        }
        let active = self.frames_in != c.last_frames_in || written != c.last_written;
        c.idle_for = if active {
            0
        } else {
            c.idle_for.saturating_add(1)
        };
        c.partial_for = match (partial, self.frames_in == c.last_frames_in) {
            (false, _) => 0,
            (true, true) => c.partial_for.saturating_add(1),
            (true, false) => 1,
        };
        c.last_frames_in = self.frames_in;
        c.last_written = written;
        if c.partial_for > c.frame_ticks {
            return Some(End::FrameTimeout);
        }
        if c.unread_for > c.frame_ticks && short {
            return Some(End::Unread);
        }
        if c.idle_ticks.is_some_and(|t| c.idle_for >= t) {
            return Some(End::Idle);
        }
        None
    }
}

/// Room in the read buffer for what comes next: the rest of the frame begun, or a chunk.
fn reserve(inbuf: &mut BytesMut, max_frame: usize, wire: Option<Wire>) {
    if inbuf.is_empty() && inbuf.capacity() > KEEP_READ_CAPACITY {
        *inbuf = BytesMut::new();
    }
    let needed = match wire.map(|w| w.frame_len(inbuf, max_frame)) {
        Some(Ok(Some(len))) => (4 + len).saturating_sub(inbuf.len()),
        _ => 0,
    };
    let spare = inbuf.capacity() - inbuf.len();
    // A frame's memory grows with what arrives, so a length alone (up to the frame
    // maximum) reserves at most GROW_STEP.
    if spare < 4096 || spare < needed.min(READ_CHUNK) {
        inbuf.reserve(needed.clamp(READ_CHUNK, GROW_STEP));
    }
}

/// Drives `conn` until it ends, then cancels what it started and cleans up.
async fn run<S: Transport>(
    mut stream: S,
    conn: Connection,
    handlers: Handlers,
    wire: Option<Wire>,
    mut rx: mpsc::UnboundedReceiver<Frame>,
    server: Option<Arc<Shared>>,
) {
    let events: &Events = server.as_ref().map_or(&CLIENT_EVENTS, |s| &s.events);
    let (end, mut out, mut inbuf, peaks, wire, published) = {
        let mut d = Driver::new(
            &conn,
            &handlers,
            wire,
            &mut stream,
            &mut rx,
            server.as_deref(),
        );
        let end = poll_fn(|cx| {
            conn.inner.close_waker.register(cx.waker());
            if conn.inner.is_closed() {
                return Poll::Ready(End::Closed);
            }
            d.poll(cx)
        })
        .await;
        // Dropping the driver drops the handler futures of its requests: cancelled.
        (
            end,
            d.out,
            d.inbuf,
            (d.peak_requests, d.peak_bytes),
            d.wire,
            d.published_bytes,
        )
    };
    conn.inner.mark_closed();
    // (A connection closed before its protocol was known reached no handler.)
    if let Some(h) = wire.and_then(|w| handlers.get(w)) {
        h.on_close(&conn);
    }
    let peer = conn.peer();
    let flush = match &end {
        End::Closed | End::Eof => true,
        End::BadFrame(e) => {
            events.bad_frames.record(|count| {
                warn!(%peer, error = %e, count, "closed connections on a bad frame (protocol violation): {count} since the last report, the latest shown")
            });
            match wire {
                // Tell the sender why, under its request id when it can be read.
                Some(Wire::Weir) => {
                    if matches!(e, ProtocolError::FrameTooLarge { .. }) {
                        read_at_least(&mut stream, &mut inbuf, 4 + FIXED_LEN).await;
                    }
                    let request_id = match inbuf.get(6..10) {
                        Some(&[a, b, c, d]) if matches!(e, ProtocolError::FrameTooLarge { .. }) => {
                            u32::from_be_bytes([a, b, c, d])
                        }
                        _ => 0,
                    };
                    let reply = Reply::error(ErrorCode::BadRequest, e.to_string());
                    out.push(&Frame {
                        kind: Kind::Response,
                        request_id,
                        code: reply.status,
                        auth: Bytes::new(),
                        header: reply.header,
                        body: reply.body,
                    });
                    true
                }
                Some(Wire::Remoting) => {
                    let reply =
                        Wire::Remoting.error_reply(0, ErrorCode::BadRequest, &e.to_string());
                    out.push(&Frame {
                        kind: Kind::Response,
                        request_id: 0,
                        code: reply.status,
                        auth: Bytes::new(),
                        header: reply.header,
                        body: reply.body,
                    });
                    true
                }
                // A protocol this side does not speak: nothing it could read.
                None => false,
            }
        }
        End::FrameTimeout => {
            let timeout = conn.inner.config.frame_read_timeout;
            events.frame_timeouts.record(|count| {
                warn!(%peer, ?timeout, count, "closed connections whose frame did not arrive whole within the frame read timeout: {count} since the last report, the latest shown")
            });
            false
        }
        End::Unread => {
            let timeout = conn.inner.config.frame_read_timeout;
            events.unread_closes.record(|count| {
                warn!(%peer, ?timeout, count, "closed connections whose peer read (next to) none of their answers within the frame read timeout while others were refused room (net.max_pending_bytes_total): {count} since the last report, the latest shown")
            });
            false
        }
        End::Idle => {
            let timeout = conn.inner.config.idle_timeout;
            events.idle_closes.record(|count| {
                info!(%peer, ?timeout, count, "closed idle connections (no frame either way within the idle timeout): {count} since the last report, the latest shown")
            });
            false
        }
        End::Gone(e) => {
            events.resets.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, error = %e, "connection lost");
            false
        }
    };
    if flush && !out.is_empty() {
        let _ = tokio::time::timeout(FINAL_FLUSH, flush_all(&mut stream, &mut out)).await;
    }
    let _ = tokio::time::timeout(FINAL_FLUSH, poll_fn(|cx| stream.poll_close(cx))).await;
    drop(stream);
    let load = &conn.inner.load;
    load.requests.store(0, Ordering::Relaxed);
    load.bytes.store(0, Ordering::Relaxed);
    if let Some(s) = server {
        s.pending_bytes.fetch_sub(published, Ordering::Relaxed);
        s.connection_ended(conn.id(), peaks);
    }
}

/// Reads until `buf` holds `n` bytes, the peer stops, or a second passes.
async fn read_at_least<S: Transport>(stream: &mut S, buf: &mut BytesMut, n: usize) {
    let read = async {
        while buf.len() < n {
            let want = n - buf.len();
            match poll_fn(|cx| stream.poll_read_into(cx, buf, |b| b.reserve(want))).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
}

/// Writes everything queued.
async fn flush_all<S: Transport>(stream: &mut S, out: &mut OutQueue) {
    while !out.is_empty() {
        match poll_fn(|cx| stream.poll_write_from(cx, out)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    if stream.has_pending_writes() {
        let _ = poll_fn(|cx| stream.poll_flush_pending(cx)).await;
    }
}
