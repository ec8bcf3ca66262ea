//! Building and running the application: connect and migrate the store, start
//! the audit writer and the change poller, load every tenant's policy, bind the
//! listener (port 0 works, for tests) and serve until SIGINT/SIGTERM. On a
//! signal, in-flight requests finish, then the audit writer drains its queue.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use tokio::task::JoinHandle;
use tracing_actix_web::TracingLogger;

use crate::audit::{AuditWriter, WriterConfig};
use crate::clock::Clock;
use crate::routes;
use crate::secrets::Keyring;
use crate::settings::Settings;
use crate::state::AppState;
use crate::store::Store;

/// How often each instance reads the change feed (revocations, policy applies,
/// session registrations reach every instance within about this long).
pub const CHANGE_POLL: Duration = Duration::from_millis(250);

pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    state: web::Data<AppState>,
    writer_task: JoinHandle<()>,
    poller: JoinHandle<()>,
    /// Keeps the database's planner statistics current (`Store::optimize`).
    optimizer: JoinHandle<()>,
    /// Keeps the audit summaries' rollup current (`Store::rollup_all`).
    rollup: JoinHandle<()>,
    /// The periodic audit checkpoint writer (with a checkpoint key).
    checkpoint_task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish()
    }
}

/// Connects to the configured database and applies migrations.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    settings.ensure_data_dir()?;
    let store = Store::connect(settings.database_url.expose())
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot open database {}: {e}",
                crate::store::redact_url(settings.database_url.expose())
            )
        })?;
    store.migrate().await?;
    Ok(store)
}

/// How often the planner statistics are refreshed (and once at start).
const OPTIMIZE_EVERY: Duration = Duration::from_secs(3 * 3600);

/// Runs `Store::optimize` at start and then every few hours; a failure is
/// logged and tried again next time (the statistics only steer the planner).
async fn keep_statistics(store: Store) {
    let mut tick = tokio::time::interval(OPTIMIZE_EVERY);
    loop {
        tick.tick().await;
        if let Err(e) = store.optimize().await {
            tracing::warn!(error = %e, "refreshing the database's planner statistics failed");
        }
    }
}

/// How often each instance brings the audit rollup up to every tenant's
/// chain head (and once at start). A summary reads the rows written since the
/// last pass one by one, so this bounds its raw part: at most this long of a
/// tenant's writes (docs/operations.md).
pub const ROLLUP_EVERY: Duration = Duration::from_secs(30);

/// Runs `Store::rollup_all` at start and then every `ROLLUP_EVERY`. Several
/// instances may run it at once (each chunk is counted by exactly one); a
/// failure is logged and the next round tries again: summaries stay exact
/// meanwhile, only slower.
async fn keep_rollup(store: Store) {
    let mut tick = tokio::time::interval(ROLLUP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = store.rollup_all(crate::store::ROLLUP_CHUNK_ROWS).await {
            tracing::warn!(error = %e, "the audit rollup pass failed; summaries read more rows until it succeeds");
        }
    }
}

/// The master keyring, when one is configured. A configured file that cannot
/// be read stops the start (an operator mistake must fail loudly); no file at
/// all is allowed, and said: stored credentials are then refused.
pub fn load_keyring(settings: &Settings) -> anyhow::Result<Option<Keyring>> {
    match &settings.master_key_file {
        Some(path) => {
            let ring = Keyring::load(path)?;
            tracing::info!(key_ids = ?ring.key_ids(), "master keyring loaded");
            Ok(Some(ring))
        }
        None => {
            tracing::warn!(
                "no master key (setting master_key_file): tenants cannot upload credentials, and stored ones are unusable"
            );
            Ok(None)
        }
    }
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let store = open_store(&settings).await?;
        Application::build_with_store(settings, store).await
    }

    /// The application on `store`, whose audit reads it bounds by the
    /// settings' `audit_read_timeout_ms` (the command line does not).
    pub async fn build_with_store(settings: Settings, store: Store) -> anyhow::Result<Application> {
        let store = store.with_read_budget(Some(settings.audit_read_timeout));
        let clock = Clock::system();
        let (writer, writer_task) = AuditWriter::spawn(
            store.clone(),
            WriterConfig {
                max_batch: settings.audit_max_batch,
                timeout: settings.audit_timeout,
                clock: clock.clone(),
                ..WriterConfig::default()
            },
        );
        let keyring = load_keyring(&settings)?;
        let checkpoints = crate::audit::checkpoint::Checkpoints::from_settings(&settings)?;
        let checkpoint_task = checkpoints
            .0
            .clone()
            .map(|c| tokio::spawn(c.run(store.clone(), settings.checkpoint_interval)));
        let checkpoints = web::Data::new(checkpoints);
        let state = web::Data::new(AppState::new(
            settings.clone(),
            store,
            writer,
            keyring,
            clock,
        ));
        state.load_all_policies().await?;
        for p in state.problems() {
            tracing::warn!(problem = ?p, "not fully ready");
        }
        let listener = TcpListener::bind(settings.listen)?;
        let port = listener.local_addr()?.port();
        let limit = settings.body_limit;
        let app_state = state.clone();
        let server = HttpServer::new(move || {
            let metrics_state = app_state.clone();
            App::new()
                // Request latency by route pattern (inside the tracing span).
                .wrap_fn(move |req, srv| {
                    let started = metrics_state.clock.stopwatch();
                    let route = req.match_pattern();
                    let method = req.method().clone();
                    let state = metrics_state.clone();
                    let fut = actix_web::dev::Service::call(srv, req);
                    async move {
                        let res = fut.await;
                        let status = match &res {
                            Ok(r) => r.status().as_u16(),
                            Err(e) => e.as_response_error().status_code().as_u16(),
                        };
                        state
                            .metrics
                            .request(route, method.as_str(), status, started.elapsed());
                        res
                    }
                })
                .wrap(TracingLogger::<routes::span::BrokerRootSpan>::new())
                .app_data(app_state.clone())
                .app_data(checkpoints.clone())
                .configure(|c| routes::configure(c, limit))
                .configure(crate::console::configure)
        })
        .workers(settings.workers)
        .shutdown_timeout(10)
        .listen(listener)?
        .run();
        let poller = tokio::spawn(Arc::clone(&state).follow_changes(CHANGE_POLL));
        let optimizer = tokio::spawn(keep_statistics(state.store.clone()));
        let rollup = tokio::spawn(keep_rollup(state.store.clone()));
        tracing::info!(listen = %settings.listen.ip(), port, database = ?state.store.url_redacted(), "token-broker listening");
        Ok(Application {
            port,
            server,
            state,
            writer_task,
            poller,
            optimizer,
            rollup,
            checkpoint_task,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// Handle to stop the server (tests; signals do the same in production).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped, then drains the audit writer and closes the store.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        self.poller.abort();
        let _ = self.poller.await;
        self.optimizer.abort();
        let _ = self.optimizer.await;
        self.rollup.abort();
        let _ = self.rollup.await;
        if let Some(t) = self.checkpoint_task {
            t.abort();
            let _ = t.await;
        }
        let store = self.state.store.clone();
        // Dropping the last handle to the writer lets it commit what is queued and stop.
        drop(self.state);
        if tokio::time::timeout(Duration::from_secs(10), self.writer_task)
            .await
            .is_err()
        {
            tracing::error!("audit writer did not drain within 10 s");
        }
        store.close().await;
        tracing::info!("token-broker stopped");
        result
    }
}
