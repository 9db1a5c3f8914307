//! Prometheus metrics. One registry per server so that several servers can run
//! in one process (the tests do).

mod live_seconds;

use crate::error::Result;
pub(crate) use live_seconds::{Alive, LiveSeconds};
use prometheus::local::LocalHistogram;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::HashMap;
use std::sync::Arc;

/// The client transports, as metric labels (`transport="ws"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Ws,
    Sse,
    Poll,
    /// Socket.IO over WebSocket (including sessions upgraded from polling).
    SocketIo,
    /// Socket.IO over HTTP long-polling.
    SocketIoPolling,
}

impl Transport {
    pub(crate) const ALL: [Transport; 5] = [
        Transport::Ws,
        Transport::Sse,
        Transport::Poll,
        Transport::SocketIo,
        Transport::SocketIoPolling,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
            Transport::SocketIo => "socketio",
            Transport::SocketIoPolling => "socketio-polling",
        }
    }

    /// Its place in `ALL`.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone)]
pub(crate) struct Metrics {
    pub registry: Registry,
    /// The SLO histogram: for **live** deliveries only (changes that reached the
    /// client through the hub as they were read from the log), emitted-at in
    /// the writer's transaction → frame handed to the client socket. Catch-up
    /// (resumes, polls from an old cursor, snapshots, lag recovery) is counted
    /// apart, so that replaying old changes can never look like slow delivery.
    pub sync_latency: HistogramVec,
    /// Catch-up deliveries: changes read from the log or the window for a
    /// client behind the live stream, and snapshot state.
    pub catchup_deliveries: IntCounterVec,
    /// Age of a change when it was delivered by catch-up.
    pub catchup_lag: HistogramVec,
    /// Change-log rows the source skipped because they cannot be delivered.
    pub source_bad_changes: IntCounter,
    pub source_database_crashes: IntCounter,
    pub connections: IntGaugeVec,
    pub events: IntCounter,
    pub deliveries: IntCounterVec,
    pub source_connected: IntGauge,
    pub source_batches: IntCounter,
    pub source_batch_seconds: Histogram,
    pub source_reconnects: IntCounter,
    /// Doorbell NOTIFYs received: far fewer than events under load is the point.
    pub source_notifications: IntCounter,
    /// Reads that found changes although no NOTIFY had arrived: should stay 0;
    /// anything else means the doorbell missed a writer.
    pub source_idle_poll_hits: IntCounter,
    /// The source's estimate of a commit's time (`commit_probe`).
    pub source_commit_seconds: Gauge,
    /// 1 on the node streaming the capture slot (`capture`), 0 elsewhere.
    pub capture_active: IntGauge,
    /// Changes the slot decoded that the capturer appended to the log.
    pub capture_changes: IntCounter,
    /// Slot-captured rows skipped because their event function failed or the
    /// log refused their event (each also a WARNING in PostgreSQL's log).
    pub capture_skipped: IntCounter,
    /// 1 while tables are captured by a slot that is missing or invalidated.
    pub capture_slot_missing: IntGauge,
    pub slow_consumer_drops: IntCounterVec,
    pub lag_recoveries: IntCounter,
    pub catchup_reads: IntCounterVec,
    pub resyncs: IntCounterVec,
    /// Tokens refused, by reason (expired, bad_signature, ...).
    pub auth_failures: IntCounterVec,
    /// Requests, messages and topics refused by a limit or a policy, by reason.
    pub rejected: IntCounterVec,
    /// `rowcast_unavailable_total{reason}`: 503s and their WebSocket / Socket.IO errors.
    pub unavailable: IntCounterVec,
    /// Open TCP connections, admitted or not (`sockets`).
    pub sockets: IntGauge,
    /// Sockets closed by the server before or between requests, by reason.
    pub sockets_closed: IntCounterVec,
    /// `accept` failures other than a connection aborted by its peer.
    pub accept_errors: IntCounter,
    /// Topics sent to `rowcast.authorize` (cache misses).
    pub authorize_checks: IntCounter,
    /// Client sessions by transport and whether they are a fallback from a
    /// WebSocket (FR-021's fallback usage).
    pub sessions: IntCounterVec,
    /// Seconds WebSocket sessions were connected, and seconds clients that
    /// wanted one reported being without (FR-021's WebSocket uptime).
    pub ws_connected_seconds: LiveSeconds,
    pub ws_gap_seconds: prometheus::Counter,
    /// WebSocket sessions (raw and Socket.IO) ended, by why (the transport
    /// names the reasons and registers them all).
    pub ws_closed: IntCounterVec,
    /// Presence: activity reports, the touches written, transitions made here.
    pub presence_reports: IntCounter,
    pub presence_writes: IntCounter,
    pub presence_transitions: IntCounterVec,
    pub presence_sweep_seconds: Histogram,
    /// Changes read from the log by event name (see `EventCounts`).
    pub changes: IntCounterVec,
    /// Market API checkouts by result (`ok`, `conflict`, `error`; see `shop`).
    pub checkouts: IntCounterVec,
    /// The client pool's connections by state (`in_use`, `idle`) and the
    /// requests waiting for one, as of the scrape (`observe_pool`).
    pool_connections: IntGaugeVec,
    pool_waiting: IntGauge,
}

impl Metrics {
    pub(crate) fn new() -> Result<Metrics> {
        let registry = Registry::new();
        let buckets = vec![
            0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
        ];
        let sync_latency = HistogramVec::new(
            HistogramOpts::new(
                "rowcast_sync_latency_seconds",
                "Time from the change being emitted in PostgreSQL to its frame being written to the client",
            )
            .buckets(buckets.clone()),
            &["transport"],
        )?;
        let catchup_deliveries = IntCounterVec::new(
            Opts::new(
                "rowcast_catchup_deliveries_total",
                "Frames written to clients from catch-up (resume, poll from an old cursor, snapshot, lag recovery), not live",
            ),
            &["transport"],
        )?;
        let catchup_lag = HistogramVec::new(
            HistogramOpts::new(
                "rowcast_catchup_lag_seconds",
                "Age of a change (emitted-at to written) when delivered by catch-up",
            )
            .buckets(vec![
                0.01,
                0.1,
                1.0,
                10.0,
                60.0,
                600.0,
                3600.0,
                6.0 * 3600.0,
                24.0 * 3600.0,
            ]),
            &["transport"],
        )?;
        let source_database_crashes = IntCounter::new(
            "rowcast_source_database_crashes_total",
            "New eras of the database the source found (a crash recovery, a reset of pg_stat_bgwriter, or a rewind: the transaction counter behind its position): every client connected before it was made to resync (logged at ERROR)",
        )?;
        let source_bad_changes = IntCounter::new(
            "rowcast_source_bad_changes_total",
            "Change-log rows skipped because they cannot be turned into an event (logged at ERROR with their id)",
        )?;
        let connections = IntGaugeVec::new(
            Opts::new("rowcast_connections", "Open client connections"),
            &["transport"],
        )?;
        let events = IntCounter::new("rowcast_events_total", "Changes read from the change log")?;
        let deliveries = IntCounterVec::new(
            Opts::new(
                "rowcast_deliveries_total",
                "Event frames written to clients",
            ),
            &["transport"],
        )?;
        let source_connected = IntGauge::new(
            "rowcast_source_connected",
            "1 while the change-log source is connected to PostgreSQL",
        )?;
        let source_batches = IntCounter::new(
            "rowcast_source_batches_total",
            "Non-empty batches read from the change log",
        )?;
        let source_batch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "rowcast_source_read_seconds",
                "Duration of one change-log read",
            )
            .buckets(buckets),
        )?;
        let source_reconnects = IntCounter::new(
            "rowcast_source_reconnects_total",
            "Times the source lost PostgreSQL and reconnected",
        )?;
        let source_notifications = IntCounter::new(
            "rowcast_source_notifications_total",
            "Doorbell notifications received from writers",
        )?;
        let source_idle_poll_hits = IntCounter::new(
            "rowcast_source_idle_poll_hits_total",
            "Idle safety reads that found changes no NOTIFY announced",
        )?;
        let capture_active = IntGauge::new(
            "rowcast_capture_active",
            "1 while this node streams the capture slot (tables captured by the slot), else 0",
        )?;
        let capture_changes = IntCounter::new(
            "rowcast_capture_changes_total",
            "Changes decoded by the capture slot and appended to the change log by this node",
        )?;
        let capture_skipped = IntCounter::new(
            "rowcast_capture_skipped_total",
            "Slot-captured rows skipped: their event function failed or the log refused the event",
        )?;
        let capture_slot_missing = IntGauge::new(
            "rowcast_capture_slot_missing",
            "1 while tables are captured by a slot that is missing or invalidated, or that this node's role may not stream (no REPLICATION): their changes are not captured",
        )?;
        let source_commit_seconds = Gauge::new(
            "rowcast_source_commit_seconds",
            "How long a commit takes on the database, as the source probes it while rings come (0: not probed yet)",
        )?;
        let slow_consumer_drops = IntCounterVec::new(
            Opts::new(
                "rowcast_slow_consumer_drops_total",
                "Clients disconnected because their socket accepted nothing for the write timeout",
            ),
            &["transport"],
        )?;
        let lag_recoveries = IntCounter::new(
            "rowcast_lag_recoveries_total",
            "Clients whose queue overflowed and who continued from the change log",
        )?;
        let catchup_reads = IntCounterVec::new(
            Opts::new(
                "rowcast_catchup_reads_total",
                "Resume and poll reads of missed changes, by where they were answered from",
            ),
            &["from"],
        )?;
        let resyncs = IntCounterVec::new(
            Opts::new(
                "rowcast_resyncs_total",
                "Clients told to re-sync instead of resuming",
            ),
            &["reason"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new("rowcast_auth_failures_total", "Tokens refused, by reason"),
            &["reason"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "rowcast_rejected_total",
                "Requests, messages or topics refused by a limit or the authorization policy",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        let unavailable = IntCounterVec::new(
            Opts::new(
                "rowcast_unavailable_total",
                "Requests and messages answered 'try again later' for a server-side condition, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(unavailable.clone()))?;
        // the process as every exporter shows it (process_resident_memory_bytes,
        // process_open_fds, process_cpu_seconds_total, ...), and the build
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "rowcast_build_info",
                "1, labelled with the running binary's version",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(build_info))?;
        let pool_connections = IntGaugeVec::new(
            Opts::new(
                "rowcast_pool_connections",
                "Connections of the client pool (--pool-size) by state, as of the scrape",
            ),
            &["state"],
        )?;
        let pool_waiting = IntGauge::new(
            "rowcast_pool_waiting",
            "Requests waiting for a connection of the client pool, as of the scrape",
        )?;
        registry.register(Box::new(pool_connections.clone()))?;
        registry.register(Box::new(pool_waiting.clone()))?;
        registry.register(Box::new(sync_latency.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(source_connected.clone()))?;
        registry.register(Box::new(source_batches.clone()))?;
        registry.register(Box::new(source_batch_seconds.clone()))?;
        registry.register(Box::new(source_reconnects.clone()))?;
        registry.register(Box::new(source_idle_poll_hits.clone()))?;
        registry.register(Box::new(capture_active.clone()))?;
        registry.register(Box::new(capture_changes.clone()))?;
        registry.register(Box::new(capture_skipped.clone()))?;
        registry.register(Box::new(capture_slot_missing.clone()))?;
        registry.register(Box::new(source_notifications.clone()))?;
        registry.register(Box::new(source_commit_seconds.clone()))?;
        registry.register(Box::new(slow_consumer_drops.clone()))?;
        registry.register(Box::new(resyncs.clone()))?;
        registry.register(Box::new(lag_recoveries.clone()))?;
        registry.register(Box::new(catchup_reads.clone()))?;
        registry.register(Box::new(catchup_deliveries.clone()))?;
        registry.register(Box::new(catchup_lag.clone()))?;
        registry.register(Box::new(source_bad_changes.clone()))?;
        registry.register(Box::new(source_database_crashes.clone()))?;
        let sockets = IntGauge::new(
            "rowcast_sockets",
            "Open TCP connections, whether or not they have made a request",
        )?;
        let sockets_closed = IntCounterVec::new(
            Opts::new(
                "rowcast_sockets_closed_total",
                "Connections the server closed to bound them: idle (no request within the header timeout), shed (to make room at the socket cap or when out of file descriptors), refused (a new connection at the cap with nothing to shed)",
            ),
            &["reason"],
        )?;
        let accept_errors = IntCounter::new(
            "rowcast_accept_errors_total",
            "Failed accepts (out of file descriptors, or memory)",
        )?;
        let authorize_checks = IntCounter::new(
            "rowcast_authorize_checks_total",
            "Topics checked with rowcast.authorize (cache misses)",
        )?;
        registry.register(Box::new(sockets.clone()))?;
        registry.register(Box::new(sockets_closed.clone()))?;
        registry.register(Box::new(accept_errors.clone()))?;
        registry.register(Box::new(authorize_checks.clone()))?;
        let sessions = IntCounterVec::new(
            Opts::new(
                "rowcast_sessions_total",
                "Client sessions by transport, and whether the client fell back from a WebSocket (fallback=yes)",
            ),
            &["transport", "fallback"],
        )?;
        let ws_connected_seconds = LiveSeconds::new(
            "rowcast_ws_connected_seconds_total",
            "Seconds WebSocket sessions (raw and Socket.IO) have been connected, open ones included",
        )?;
        let ws_gap_seconds = prometheus::Counter::new(
            "rowcast_ws_gap_seconds_total",
            "Seconds clients that wanted a WebSocket reported being without one (gap= on reconnect)",
        )?;
        registry.register(Box::new(sessions.clone()))?;
        registry.register(Box::new(ws_connected_seconds.clone()))?;
        registry.register(Box::new(ws_gap_seconds.clone()))?;
        let ws_closed = IntCounterVec::new(
            Opts::new(
                "rowcast_ws_closed_total",
                "WebSocket sessions (raw and Socket.IO) ended, by reason (client_gone: the client left)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(ws_closed.clone()))?;
        for t in Transport::ALL.map(Transport::as_str) {
            for f in ["yes", "no"] {
                sessions.with_label_values(&[t, f]);
            }
        }
        let presence_reports = IntCounter::new(
            "rowcast_presence_reports_total",
            "Activity reports received from authenticated clients",
        )?;
        let presence_writes = IntCounter::new(
            "rowcast_presence_writes_total",
            "Activity written to the database (at most one per user per --presence-write-interval)",
        )?;
        let presence_transitions = IntCounterVec::new(
            Opts::new(
                "rowcast_presence_transitions_total",
                "Presence transitions this node made (each is made once in the cluster)",
            ),
            &["status"],
        )?;
        let presence_sweep_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "rowcast_presence_sweep_seconds",
                "Duration of one presence sweep",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
        )?;
        registry.register(Box::new(presence_reports.clone()))?;
        registry.register(Box::new(presence_writes.clone()))?;
        registry.register(Box::new(presence_transitions.clone()))?;
        registry.register(Box::new(presence_sweep_seconds.clone()))?;
        for s in ["online", "away", "offline"] {
            presence_transitions.with_label_values(&[s]);
        }
        let changes = IntCounterVec::new(
            Opts::new(
                "rowcast_changes_total",
                "Changes read from the change log, by event name (the first 100 distinct names of at most 100 bytes; the rest under event=\"other\"). Every node reads every change: aggregate nodes with max, not sum",
            ),
            &["event"],
        )?;
        let checkouts = IntCounterVec::new(
            Opts::new(
                "rowcast_checkouts_total",
                "Market API checkouts by result: ok (orders created), conflict (nothing written, the customer is told why), error (refused or failed)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(changes.clone()))?;
        registry.register(Box::new(checkouts.clone()))?;
        changes.with_label_values(&[EventCounts::OTHER]);
        for r in ["ok", "conflict", "error"] {
            checkouts.with_label_values(&[r]);
        }
        for r in ["idle", "shed", "refused"] {
            sockets_closed.with_label_values(&[r]);
        }
        for r in [
            "cursor_expired",
            "cursor_unknown",
            "pid_invalid",
            "identity_changed",
            "offset_invalid",
        ] {
            resyncs.with_label_values(&[r]);
        }
        for r in [
            "malformed",
            "expired",
            "not_yet_valid",
            "bad_signature",
            "bad_algorithm",
            "wrong_issuer_or_audience",
            "bad_claims",
            "timeout",
            "missing",
        ] {
            auth_failures.with_label_values(&[r]);
        }
        for t in Transport::ALL.map(Transport::as_str) {
            // make every series visible from the start, so dashboards and rate() work at once
            sync_latency.with_label_values(&[t]);
            catchup_deliveries.with_label_values(&[t]);
            catchup_lag.with_label_values(&[t]);
            connections.with_label_values(&[t]);
            deliveries.with_label_values(&[t]);
            slow_consumer_drops.with_label_values(&[t]);
        }
        Ok(Metrics {
            registry,
            sync_latency,
            catchup_deliveries,
            catchup_lag,
            source_bad_changes,
            source_database_crashes,
            connections,
            events,
            deliveries,
            source_connected,
            source_batches,
            source_batch_seconds,
            source_reconnects,
            source_notifications,
            source_idle_poll_hits,
            source_commit_seconds,
            capture_active,
            capture_changes,
            capture_skipped,
            capture_slot_missing,
            slow_consumer_drops,
            lag_recoveries,
            catchup_reads,
            resyncs,
            auth_failures,
            rejected,
            unavailable,
            sockets,
            sockets_closed,
            accept_errors,
            authorize_checks,
            sessions,
            ws_connected_seconds,
            ws_gap_seconds,
            ws_closed,
            presence_reports,
            presence_writes,
            presence_transitions,
            presence_sweep_seconds,
            changes,
            checkouts,
            pool_connections,
            pool_waiting,
        })
    }

    /// The per-event change counter; one per source (its only writer).
    pub(crate) fn event_counts(&self) -> EventCounts {
        EventCounts {
            other: self.changes.with_label_values(&[EventCounts::OTHER]),
            vec: self.changes.clone(),
            known: HashMap::new(),
        }
    }

    /// The client pool's state, for the next render.
    pub(crate) fn observe_pool(&self, status: deadpool_postgres::Status) {
        let idle = status.available.min(status.size);
        self.pool_connections
            .with_label_values(&["idle"])
            .set(idle as i64);
        self.pool_connections
            .with_label_values(&["in_use"])
            .set((status.size - idle) as i64);
        self.pool_waiting.set(status.waiting as i64);
    }

    pub(crate) fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Handles for one transport, resolved once so the per-frame path does no label lookups.
    pub(crate) fn transport(&self, t: Transport) -> TransportMetrics {
        let transport = t.as_str();
        let latency = self.sync_latency.with_label_values(&[transport]);
        let deliveries = self.deliveries.with_label_values(&[transport]);
        TransportMetrics {
            live: LiveMetrics(Arc::new(LiveHandles {
                latency: latency.clone(),
                deliveries: deliveries.clone(),
            })),
            latency,
            catchup: self.catchup_deliveries.with_label_values(&[transport]),
            catchup_lag: self.catchup_lag.with_label_values(&[transport]),
            deliveries,
            connections: self.connections.with_label_values(&[transport]),
            slow_drops: self.slow_consumer_drops.with_label_values(&[transport]),
        }
    }
}

/// `rowcast_changes_total{event}`: every change the source reads, counted
/// once by its event name (`cart.adjusted`, `inventory.updated`, ...).
///
/// Event names are the app's (any text `rowcast.emit` was given), so the label
/// set is capped to keep the registry bounded: the first `MAX_NAMES` distinct
/// names of at most `MAX_NAME_LEN` bytes this process reads get a series of
/// their own, and every other change counts under `event="other"` (as does an
/// event literally named `other`). Counts are per node, and every node reads
/// every change: across nodes take `max`, not `sum`.
pub(crate) struct EventCounts {
    vec: IntCounterVec,
    known: HashMap<String, IntCounter>,
    other: IntCounter,
}

impl EventCounts {
    pub(crate) const MAX_NAMES: usize = 100;
    pub(crate) const MAX_NAME_LEN: usize = 100;
    pub(crate) const OTHER: &'static str = "other";

    pub(crate) fn count(&mut self, event: &str) {
        if let Some(c) = self.known.get(event) {
            c.inc();
        } else if self.known.len() < Self::MAX_NAMES && event.len() <= Self::MAX_NAME_LEN {
            let c = self.vec.with_label_values(&[event]);
            c.inc();
            self.known.insert(event.to_string(), c);
        } else {
            self.other.inc();
        }
    }
}

#[derive(Clone)]
pub(crate) struct TransportMetrics {
    pub latency: Histogram,
    pub catchup: IntCounter,
    pub catchup_lag: Histogram,
    pub deliveries: IntCounter,
    pub connections: IntGauge,
    pub slow_drops: IntCounter,
    live: LiveMetrics,
}

/// Seconds from `emitted_us` to `now_us` (µs since the epoch), never negative
/// (clocks of the database and this host may disagree a little).
fn lag_seconds(now_us: i64, emitted_us: i64) -> f64 {
    (now_us - emitted_us).max(0) as f64 / 1e6
}

/// A delivered frame as the metrics see it (the hub's `Delivery`).
pub(crate) trait Delivered {
    /// When its change was emitted, µs since the epoch.
    fn emitted_us(&self) -> i64;
    /// Live (in the SLO histogram) or catch-up.
    fn live(&self) -> bool;
}

/// What a live delivery updates, for a writer that delivers without the
/// connection's task (the WebSocket's `wire`): two handles, not six. One per
/// transport, shared by its connections (a `LiveTally` tells them apart).
#[derive(Clone)]
pub(crate) struct LiveMetrics(Arc<LiveHandles>);

struct LiveHandles {
    latency: Histogram,
    deliveries: IntCounter,
}

/// The live deliveries of one publish, counted on the publisher's stack and
/// added to the shared metrics when the tally is dropped: per delivery a few
/// plain additions, where `TransportMetrics::delivered` makes four atomic
/// ones and reads the clock. The clock is read once every `CLOCK_EVERY`
/// deliveries, so a lag is measured at most that many deliveries (a few
/// tens of µs of fan-out) before the frame was taken.
pub(crate) struct LiveTally {
    now_us: i64,
    since_clock: u32,
    open: Vec<(LiveMetrics, LocalHistogram, u64)>,
}

impl LiveTally {
    const CLOCK_EVERY: u32 = 64;

    pub(crate) fn new() -> LiveTally {
        LiveTally {
            now_us: 0,
            since_clock: Self::CLOCK_EVERY,
            open: Vec::new(),
        }
    }

    /// One live delivery, through `to`, of a change emitted at `emitted_us`
    /// (see `TransportMetrics::delivered`).
    pub(crate) fn delivered(&mut self, to: &LiveMetrics, emitted_us: i64) {
        if self.since_clock >= Self::CLOCK_EVERY {
            self.now_us = crate::change::now_us();
            self.since_clock = 0;
        }
        self.since_clock += 1;
        let lag = lag_seconds(self.now_us, emitted_us);
        let i = match self
            .open
            .iter()
            .position(|(m, ..)| Arc::ptr_eq(&m.0, &to.0))
        {
            Some(i) => i,
            None => {
                let local = to.0.latency.local();
                self.open.push((to.clone(), local, 0));
                self.open.len() - 1
            }
        };
        let (_, latency, n) = &mut self.open[i];
        latency.observe(lag);
        *n += 1;
    }
}

impl Drop for LiveTally {
    fn drop(&mut self) {
        for (m, latency, n) in self.open.drain(..) {
            latency.flush();
            m.0.deliveries.inc_by(n);
        }
    }
}

impl TransportMetrics {
    /// The handles a live delivery updates.
    pub(crate) fn live(&self) -> LiveMetrics {
        self.live.clone()
    }

    /// Records a batch of delivered frames.
    pub(crate) fn delivered_batch<D: Delivered>(&self, batch: &[D]) {
        for d in batch {
            self.delivered(d.emitted_us(), d.live());
        }
    }

    /// Records one delivered frame of a change emitted at `emitted_us` (µs
    /// since the epoch): live ones in the SLO histogram, catch-up apart.
    pub(crate) fn delivered(&self, emitted_us: i64, live: bool) {
        self.deliveries.inc();
        let lag = lag_seconds(crate::change::now_us(), emitted_us);
        if live {
            self.latency.observe(lag);
        } else {
            self.catchup.inc();
            self.catchup_lag.observe(lag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the cap, new names count under `other`; known ones keep counting.
    #[test]
    fn event_names_are_capped() {
        let m = Metrics::new().unwrap();
        let mut counts = m.event_counts();
        for i in 0..EventCounts::MAX_NAMES {
            counts.count(&format!("e{i}"));
        }
        counts.count("e0");
        counts.count("one.too.many");
        counts.count(&"x".repeat(EventCounts::MAX_NAME_LEN + 1));
        let get = |e: &str| m.changes.with_label_values(&[e]).get();
        assert_eq!(get("e0"), 2);
        assert_eq!(get("e99"), 1);
        assert_eq!(get("other"), 2);
        let series = m
            .render()
            .lines()
            .filter(|l| l.starts_with("rowcast_changes_total{"))
            .count();
        assert_eq!(series, EventCounts::MAX_NAMES + 1);
    }
}
