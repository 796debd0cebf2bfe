//! OpenTelemetry traces: one request followed across the API node, the queue
//! and the worker, exported over OTLP.
//!
//! Configured by OpenTelemetry's standard environment variables only:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! turns export on; `OTEL_EXPORTER_OTLP_PROTOCOL` (only `http/protobuf`, the
//! default, is built in), `OTEL_SERVICE_NAME` (default `lens`),
//! `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT` and `_HEADERS` are read by the SDK; and
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turns it off
//! again. With no endpoint set nothing is exported, no connection is tried,
//! and the spans below the request's own are never even created.
//!
//! The spans are the `tracing` spans of the code, bridged by
//! `tracing-opentelemetry`: the request's server span (`http`'s `observe`
//! middleware), admission, body read, decode, cache, the queue, and, for
//! each job, its inference span under the request that asked for it, beside
//! one span per batch that links to every request in it. The W3C
//! `traceparent` a caller sends is continued; a job on Redis carries its
//! own ([`Carrier`]) so that a worker's spans join the same trace.
//!
//! Export never blocks a request: finished spans go to a bounded queue
//! (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048), exported in batches from the
//! SDK's own thread; a span that finds the queue full, or whose export
//! failed, is dropped and counted ([`spans_dropped`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanProcessor};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The response header that carries a request's trace id (32 hex digits).
pub const TRACE_ID_HEADER: &str = "x-trace-id";

/// The tracer's name in exported spans.
const TRACER: &str = "lens";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: cheap, for skipping work that only tracing needs.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Why a span was dropped, as the metric labels it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropReason {
    pub reason: &'static str,
}

/// Spans the exporter dropped, by reason: `queue_full` (the collector is
/// slower than the spans come) or `export_failed` (it is down or refused).
pub fn spans_dropped() -> &'static Family<DropReason, Counter> {
    static DROPPED: OnceLock<Family<DropReason, Counter>> = OnceLock::new();
    DROPPED.get_or_init(Family::default)
}

/// Spans the collector accepted.
pub fn spans_exported() -> &'static Counter {
    static EXPORTED: OnceLock<Counter> = OnceLock::new();
    EXPORTED.get_or_init(Counter::default)
}

/// Where traces go, as the environment says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// Nothing set, or switched off: no exporter, no connection.
    Off,
    /// OTLP over HTTP with protobuf bodies; the SDK reads the endpoint.
    HttpProtobuf,
}

impl Export {
    /// Reads the standard variables through `var`.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Export> {
        let set = |name: &str| var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return Ok(Export::Off);
        }
        if set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() && set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none() {
            return Ok(Export::Off);
        }
        if let Some(other) = set("OTEL_TRACES_EXPORTER").filter(|v| !v.eq_ignore_ascii_case("otlp")) {
            anyhow::bail!("OTEL_TRACES_EXPORTER={other} is not supported: Lens exports traces over OTLP only");
        }
        let protocol = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"));
        match protocol.as_deref() {
            None | Some("http/protobuf") => Ok(Export::HttpProtobuf),
            Some(other) => anyhow::bail!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported: Lens exports traces over http/protobuf \
                 (point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port, usually 4318)"
            ),
        }
    }
}

/// The tracer provider while traces are exported; [`Tracing::shutdown`]
/// sends what is still queued, for at most a second or two.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Starts exporting as `export` says, under `OTEL_SERVICE_NAME` or
    /// `lens`, with `role` (`serve`, `worker`) as an attribute. Returns the
    /// `tracing` layer that turns spans into OpenTelemetry spans.
    pub fn start<S>(export: &Export, role: &str) -> anyhow::Result<Option<(Tracing, impl tracing_subscriber::Layer<S>)>>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        if *export == Export::Off {
            return Ok(None);
        }
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()?;
        let queue = std::env::var("OTEL_BSP_MAX_QUEUE_SIZE").ok().and_then(|v| v.parse().ok()).unwrap_or(2048usize);
        let pending = Arc::new(AtomicUsize::new(0));
        let counted = CountedExporter { inner: exporter, pending: Arc::clone(&pending) };
        // The SDK's queue has room for every span we let through, so it
        // never drops one itself: every drop is ours, and counted.
        let batch = BatchSpanProcessor::builder(counted)
            .with_batch_config(BatchConfigBuilder::default().with_max_queue_size(queue + 64).build())
            .build();
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("lens");
        }
        let resource = resource
            .with_attribute(opentelemetry::KeyValue::new("lens.role", role.to_owned()))
            .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Bounded { inner: batch, pending, capacity: queue })
            .with_resource(resource)
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(TRACER))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_level(false)
            .with_target(false);
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Some((Tracing { provider }, layer)))
    }

    /// Exports what is queued, waiting at most `timeout`, and stops.
    pub fn shutdown(self, timeout: Duration) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!("traces not all exported at exit: {e}");
        }
    }
}

/// Lets a finished span through to the batch processor only while fewer
/// than `capacity` are waiting for export; otherwise drops and counts it.
/// `on_end` never waits.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    pending: Arc<AtomicUsize>,
    capacity: usize,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let admitted = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.capacity).then_some(n + 1))
            .is_ok();
        if admitted {
            self.inner.on_end(span);
        } else {
            spans_dropped().get_or_create(&DropReason { reason: "queue_full" }).inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what it sent and what it lost.
#[derive(Debug)]
struct CountedExporter<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter for CountedExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.pending.fetch_sub(n, Ordering::AcqRel);
        let counter = match &result {
            Ok(()) => spans_exported().clone(),
            Err(_) => spans_dropped().get_or_create(&DropReason { reason: "export_failed" }).clone(),
        };
        counter.inc_by(n as u64);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The W3C context of a span, as it travels in a Redis job: `traceparent`
/// and, if any, `tracestate`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carrier {
    pub traceparent: String,
    pub tracestate: String,
}

impl Carrier {
    /// `span`'s context, if traces are exported and it has one.
    pub fn of(span: &tracing::Span) -> Option<Carrier> {
        if !enabled() {
            return None;
        }
        let mut carrier = Carrier::default();
        TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
        (!carrier.traceparent.is_empty()).then_some(carrier)
    }

    /// The context to continue: a remote parent (its trace id and span id).
    pub fn context(&self) -> opentelemetry::Context {
        TraceContextPropagator::new().extract(self)
    }
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = value,
            "tracestate" => self.tracestate = value,
            _ => {}
        }
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent.as_str()),
            "tracestate" => Some(self.tracestate.as_str()).filter(|s| !s.is_empty()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Reads the W3C context from request headers (HTTP, or gRPC metadata).
struct Headers<'a>(&'a axum::http::HeaderMap);

/// The longest `tracestate` continued; W3C Trace Context lets a server drop
/// a longer one, and this bounds what every span and Redis job carries.
pub const MAX_TRACESTATE: usize = 512;

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = self.0.get(key).and_then(|v| v.to_str().ok())?;
        (key != "tracestate" || value.len() <= MAX_TRACESTATE).then_some(value)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The caller's trace context from its `traceparent` / `tracestate`
/// headers; empty when it sent none or a malformed one.
pub fn incoming(headers: &axum::http::HeaderMap) -> opentelemetry::Context {
    if !headers.contains_key("traceparent") {
        return opentelemetry::Context::new();
    }
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// Makes `span` continue `parent` (a caller's or a job's context), and
/// returns the trace id it belongs to: the exported span's when traces are
/// on, else the caller's, if it sent one.
pub fn continue_trace(span: &tracing::Span, parent: opentelemetry::Context) -> Option<String> {
    let remote = parent.span().span_context().clone();
    if enabled() {
        if remote.is_valid() {
            let _ = span.set_parent(parent);
        }
        let own = span.context().span().span_context().trace_id();
        if own != opentelemetry::trace::TraceId::INVALID {
            return Some(own.to_string());
        }
    }
    remote.is_valid().then(|| remote.trace_id().to_string())
}

/// A span to link to: the ids of an exported span, small enough to copy
/// into a result that many waiters share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanRef {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

impl SpanRef {
    /// The span `span` exports as; `None` when traces are off.
    pub fn of(span: &tracing::Span) -> Option<SpanRef> {
        if !enabled() {
            return None;
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| SpanRef {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            flags: sc.trace_flags().to_u8(),
        })
    }

    fn context(self) -> SpanContext {
        SpanContext::new(
            opentelemetry::trace::TraceId::from_bytes(self.trace_id),
            opentelemetry::trace::SpanId::from_bytes(self.span_id),
            opentelemetry::trace::TraceFlags::new(self.flags),
            false,
            opentelemetry::trace::TraceState::default(),
        )
    }
}

/// Links `span` to `to` (a batch to its requests, a request to its batch, a
/// coalesced request to the computation it waited for).
pub fn link(span: &tracing::Span, to: Option<SpanRef>) {
    if let Some(to) = to {
        span.add_link(to.context());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn nothing_is_exported_unless_an_endpoint_is_set() {
        assert_eq!(Export::from_env(env(&[])).unwrap(), Export::Off);
        assert_eq!(Export::from_env(env(&[("OTEL_SERVICE_NAME", "x")])).unwrap(), Export::Off);
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")];
        assert_eq!(Export::from_env(env(&on)).unwrap(), Export::HttpProtobuf);
        let traces_only = [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4318/v1/traces")];
        assert_eq!(Export::from_env(env(&traces_only)).unwrap(), Export::HttpProtobuf);
    }

    #[test]
    fn the_sdk_switches_and_the_protocol_are_honoured() {
        let e = "OTEL_EXPORTER_OTLP_ENDPOINT";
        let off = [(e, "http://h:4318"), ("OTEL_SDK_DISABLED", "TRUE")];
        assert_eq!(Export::from_env(env(&off)).unwrap(), Export::Off);
        let none = [(e, "http://h:4318"), ("OTEL_TRACES_EXPORTER", "none")];
        assert_eq!(Export::from_env(env(&none)).unwrap(), Export::Off);
        let proto = [(e, "http://h:4318"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")];
        assert_eq!(Export::from_env(env(&proto)).unwrap(), Export::HttpProtobuf);
        let grpc = [(e, "http://h:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
        assert!(Export::from_env(env(&grpc)).unwrap_err().to_string().contains("http/protobuf"));
        let zipkin = [(e, "http://h:4318"), ("OTEL_TRACES_EXPORTER", "zipkin")];
        assert!(Export::from_env(env(&zipkin)).is_err());
    }

    #[test]
    fn a_callers_traceparent_is_read_and_a_malformed_one_ignored() {
        let mut h = axum::http::HeaderMap::new();
        h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        let cx = incoming(&h);
        assert_eq!(cx.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        h.insert("tracestate", "a=1".parse().unwrap());
        assert_eq!(incoming(&h).span().span_context().trace_state().header(), "a=1");
        let long = (0..200).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
        h.insert("tracestate", long.parse().unwrap());
        let cx = incoming(&h);
        assert!(cx.span().span_context().is_valid(), "the trace is kept");
        assert_eq!(cx.span().span_context().trace_state().header(), "", "an oversized tracestate is dropped");
        h.insert("traceparent", "00-zz-00f067aa0ba902b7-01".parse().unwrap());
        assert!(!incoming(&h).span().span_context().is_valid());
        assert!(!incoming(&axum::http::HeaderMap::new()).span().span_context().is_valid());
    }

    #[test]
    fn a_carrier_round_trips_its_context() {
        let c = Carrier {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: "vendor=x".into(),
        };
        let cx = c.context();
        let sc = cx.span().span_context().clone();
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_remote() && sc.is_sampled());
        let mut back = Carrier::default();
        TraceContextPropagator::new().inject_context(&cx, &mut back);
        assert_eq!(back, c);
    }
}
