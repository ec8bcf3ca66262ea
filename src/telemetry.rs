//! Logging set up once: human-readable text or JSON lines, filtered by
//! `TOKEN_BROKER_LOG`/`RUST_LOG`. Every request runs in a span with its request
//! id (`tracing-actix-web`). Secrets and tokens are never passed to a log macro:
//! keys, secrets and tokens have redacting `Debug` impls, and handlers log ids
//! and fingerprints only. Security events use the target `broker::security`.
//!
//! Values a tenant, app, end user or anonymous client controls (user ids,
//! names, groups, session ids, key ids from a path, issuers, origins, paths,
//! error texts that may quote them) are logged as `Debug` fields (`user =
//! ?id`): quoted, with newlines and control characters escaped. Never as `%`
//! fields (the text format writes those raw) and never in the message, where a
//! newline would end the line and let the rest pose as another event.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::settings::LogFormat;

/// Installs the global subscriber writing to `sink`. Safe to call twice (the
/// second call is ignored).
pub fn init<W>(format: LogFormat, filter: &str, sink: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
