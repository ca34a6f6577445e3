//! Kafka through librdkafka's idempotent producer.
//!
//! Each event becomes one message whose payload is the raw event bytes. A
//! batch is confirmed only when every message of it has a successful delivery
//! report. Messages the broker refuses for good (too large, invalid record,
//! invalid topic name) go to the dead-letter file; any other failure is sent
//! again after a backoff. A fatal producer error (the idempotent producer's
//! sequence is broken) rebuilds the producer and resends what is unconfirmed.

use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::value::RawValue;
use tracing::{error, info, warn};

use super::{Sink, SinkCommon, SinkContext};
use crate::config::{Problems, RetryConfig};
use crate::event::{scalar_text, Event, FieldPath};
use crate::health::Health;
use crate::metrics::metrics;
use crate::retry::Backoff;
use metrics::KAFKA_METRICS;
use topic::TopicTemplate;

mod config;
mod metrics;
mod topic;

pub use config::{Compression, KafkaConfig, PropertyValue};

/// A producer and its generation, so concurrent batches rebuild it once.
struct Current {
    producer: FutureProducer,
    generation: u64,
}

pub struct KafkaSink {
    name: Arc<str>,
    cfg: KafkaConfig,
    retry: RetryConfig,
    topic: TopicTemplate,
    key: Option<FieldPath>,
    current: Arc<RwLock<Current>>,
    health: Health,
    dead_letters: super::DeadLetters,
    health_task: tokio::task::JoinHandle<()>,
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        self.health_task.abort();
    }
}

/// How a message ended.
enum Fate {
    Delivered,
    /// Refused for good: dead-letter it.
    Rejected(String),
    /// Try again later.
    Retry(String),
    /// The producer is unusable: rebuild it, then try again.
    Fatal(String),
}

impl KafkaSink {
    pub fn new(cfg: KafkaConfig, common: &SinkCommon, ctx: SinkContext) -> anyhow::Result<Self> {
        let path = format!("sinks.{}", ctx.name);
        let topic =
            TopicTemplate::parse(&cfg.topic).map_err(|e| anyhow::anyhow!("{path}.topic: {e}"))?;
        let key = cfg
            .key_field
            .as_deref()
            .map(|p| FieldPath::of_key(p, &format!("{path}.key_field")))
            .transpose()?;
        let producer: FutureProducer = cfg
            .client_config(&ctx.name)
            .map_err(|e| anyhow::anyhow!("{path}.librdkafka_secret_files: {e}"))?
            .create()
            .map_err(|e| anyhow::anyhow!("{path}: cannot create the Kafka producer: {e}"))?;
        let current = Arc::new(RwLock::new(Current {
            producer,
            generation: 0,
        }));
        ctx.health.register(&format!("sink.{}", ctx.name));
        let health_task = tokio::spawn(watch_brokers(
            ctx.name.clone(),
            current.clone(),
            ctx.health.clone(),
            cfg.health_interval,
            if topic.is_fixed() {
                Some(cfg.topic.clone())
            } else {
                None
            },
        ));
        LazyLock::force(&KAFKA_METRICS);
        Ok(KafkaSink {
            name: ctx.name.into(),
            retry: common.retry,
            topic,
            key,
            current,
            health: ctx.health,
            dead_letters: ctx.dead_letters,
            health_task,
            cfg,
        })
    }

    fn producer(&self) -> (FutureProducer, u64) {
        match self.current.read() {
            Ok(c) => (c.producer.clone(), c.generation),
            Err(poisoned) => {
                let c = poisoned.into_inner();
                (c.producer.clone(), c.generation)
            }
        }
    }

    /// Replaces the producer unless another batch already did.
    fn rebuild(&self, seen_generation: u64, why: &str) {
        let mut guard = match self.current.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if guard.generation != seen_generation {
            return;
        }
        let created = self
            .cfg
            .client_config(&self.name)
            .map_err(|e| e.to_string())
            .and_then(|c| c.create::<FutureProducer>().map_err(|e| e.to_string()));
        match created {
            Ok(p) => {
                guard.producer = p;
                guard.generation += 1;
                KAFKA_METRICS
                    .rebuilds
                    .with_label_values(&[&self.name])
                    .inc();
                warn!(sink = %self.name, error = why, "Kafka producer rebuilt after a fatal error; resending unconfirmed messages");
            }
            Err(e) => {
                error!(sink = %self.name, error = %e, "cannot rebuild the Kafka producer; will try again")
            }
        }
    }

    /// Produces the given events once and reports each one's fate.
    async fn produce_once(&self, source: &str, events: &[&Event]) -> Vec<Fate> {
        let (producer, _) = self.producer();
        // Labelled once per call, not once per message.
        let km = &*KAFKA_METRICS;
        let produced = km.produced.with_label_values(&[&self.name]);
        let in_flight = km.in_flight.with_label_values(&[&self.name]);
        let delivery_seconds = km.delivery_seconds.with_label_values(&[&self.name]);
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let parsed: Option<&RawValue> = if self.key.is_some() || !self.topic.is_fixed() {
                serde_json::from_slice(&event.raw).ok()
            } else {
                None
            };
            let topic = self.topic.render(source, event, parsed);
            let key: Option<String> = match &self.key {
                Some(path) => parsed
                    .and_then(|r| path.lookup(r))
                    .and_then(scalar_text)
                    .map(|c| c.into_owned()),
                None => event.id.as_deref().map(str::to_string),
            };
            let mut headers = OwnedHeaders::new().insert(Header {
                key: "auditrelay-source",
                value: Some(source),
            });
            if let Some(kind) = event.kind.as_deref() {
                headers = headers.insert(Header {
                    key: "auditrelay-type",
                    value: Some(kind),
                });
            }
            let mut record = FutureRecord::to(&topic)
                .payload(&event.raw[..])
                .headers(headers);
            if let Some(k) = &key {
                record = record.key(k.as_str());
            }
            let started = Instant::now();
            // Enqueue; a full local queue drains as reports arrive.
            let mut attempt = record;
            let outcome = loop {
                match producer.send_result(attempt) {
                    Ok(fut) => break Ok(fut),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        attempt = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => break Err(e),
                }
            };
            produced.inc();
            in_flight.inc();
            pending.push((started, outcome));
        }
        let mut fates = Vec::with_capacity(pending.len());
        for (started, outcome) in pending {
            let result = match outcome {
                Ok(fut) => match fut.await {
                    Ok(Ok(_delivery)) => Ok(()),
                    Ok(Err((e, _msg))) => Err(e),
                    Err(_canceled) => Err(KafkaError::Canceled),
                },
                Err(e) => Err(e),
            };
            in_flight.dec();
            fates.push(match result {
                Ok(()) => {
                    delivery_seconds.observe(started.elapsed().as_secs_f64());
                    Fate::Delivered
                }
                Err(e) => self.classify(&producer, e),
            });
        }
        fates
    }

    fn classify(&self, producer: &FutureProducer, e: KafkaError) -> Fate {
        if let Some((code, reason)) = producer.client().fatal_error() {
            return Fate::Fatal(format!("{code:?}: {reason}"));
        }
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Fatal) => Fate::Fatal(e.to_string()),
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidTopic,
            ) => Fate::Rejected(e.to_string()),
            _ => Fate::Retry(e.to_string()),
        }
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn deliver(&self, source: &str, events: &[Event]) -> anyhow::Result<()> {
        let m = metrics();
        let mut backoff = Backoff::new(self.retry);
        let mut todo: Vec<&Event> = events.iter().collect();
        while !todo.is_empty() {
            let (_, generation) = self.producer();
            let fates = self.produce_once(source, &todo).await;
            let mut again = Vec::new();
            let (mut delivered, mut fatal, mut retry_reason) = (0u64, None, None);
            for (event, fate) in todo.iter().zip(fates) {
                match fate {
                    Fate::Delivered => delivered += 1,
                    Fate::Rejected(why) => {
                        self.dead_letters
                            .write_waiting(
                                source,
                                std::slice::from_ref(*event),
                                &format!("Kafka refused the message: {why}"),
                            )
                            .await;
                        m.sink_requests
                            .with_label_values(&[&self.name, "rejected"])
                            .inc();
                    }
                    Fate::Retry(why) => {
                        again.push(*event);
                        retry_reason.get_or_insert(why);
                    }
                    Fate::Fatal(why) => {
                        again.push(*event);
                        fatal.get_or_insert(why);
                    }
                }
            }
            if delivered > 0 {
                m.events_delivered
                    .with_label_values(&[&self.name, source])
                    .inc_by(delivered);
                m.sink_requests
                    .with_label_values(&[&self.name, "ok"])
                    .inc_by(delivered);
            }
            if again.is_empty() {
                self.health.set_ready(&format!("sink.{}", self.name));
                break;
            }
            m.events_failed
                .with_label_values(&[&self.name, source])
                .inc_by(again.len() as u64);
            m.sink_retries.with_label_values(&[&self.name]).inc();
            self.health.set_unready(
                &format!("sink.{}", self.name),
                format!(
                    "messages not confirmed by Kafka: {}",
                    retry_reason
                        .as_deref()
                        .or(fatal.as_deref())
                        .unwrap_or("unknown error")
                ),
            );
            if let Some(why) = fatal {
                self.rebuild(generation, &why);
            }
            let delay = backoff.next_delay();
            warn!(sink = %self.name, failed = again.len(), error = %retry_reason.as_deref().unwrap_or("fatal producer error"), retry_in_s = delay.as_secs_f64(), "messages not confirmed; sending them again");
            tokio::time::sleep(delay).await;
            todo = again;
        }
        Ok(())
    }

    /// The idempotent producer keeps order per partition; batches of a
    /// source may be produced concurrently for throughput.
    fn ordered(&self) -> bool {
        false
    }

    async fn healthcheck(&self) -> anyhow::Result<()> {
        let (producer, _) = self.producer();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(10))
                .map(|_| ())
        })
        .await?
        .map_err(|e| anyhow::anyhow!("cannot fetch Kafka metadata: {e}"))
    }
}

/// Periodically fetches cluster metadata: `/readyz` says whether the brokers
/// answer, before any event needs them.
async fn watch_brokers(
    name: String,
    current: Arc<RwLock<Current>>,
    health: Health,
    every: Duration,
    topic: Option<String>,
) {
    let key = format!("sink.{name}");
    let mut was_ok = None;
    loop {
        let producer = match current.read() {
            Ok(c) => c.producer.clone(),
            Err(p) => p.into_inner().producer.clone(),
        };
        let topic_for_call = topic.clone();
        let result = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(topic_for_call.as_deref(), Duration::from_secs(10))
                .map(|md| md.brokers().len())
        })
        .await;
        match result {
            Ok(Ok(brokers)) => {
                if was_ok != Some(true) {
                    info!(sink = %name, brokers, "Kafka brokers reachable");
                }
                health.set_ready(&key);
                was_ok = Some(true);
            }
            Ok(Err(e)) => {
                if was_ok != Some(false) {
                    warn!(sink = %name, error = %e, "Kafka brokers unreachable");
                }
                health.set_unready(&key, format!("cannot fetch Kafka metadata: {e}"));
                was_ok = Some(false);
            }
            Err(_) => {}
        }
        tokio::time::sleep(every).await;
    }
}

impl super::SinkType for KafkaConfig {
    const KIND: &'static str = "kafka";

    fn validate(&self, path: &str, common: &SinkCommon, problems: &mut Problems) {
        if self.brokers.is_empty() || self.brokers.iter().any(|b| b.trim().is_empty()) {
            problems.push(
                format!("{path}.brokers"),
                "list at least one broker as host:port",
            );
        }
        match TopicTemplate::parse(&self.topic) {
            Err(e) => problems.push(format!("{path}.topic"), e),
            Ok(t) if t.uses_class() && common.schema != crate::sink::Schema::Ocsf => problems.push(
                format!("{path}.topic"),
                "{class} is the OCSF class of an event: it needs schema = \"ocsf\"",
            ),
            Ok(_) => {}
        }
        if let Some(k) = &self.key_field {
            FieldPath::check(k, &format!("{path}.key_field"), problems);
        }
        if self.message_timeout.is_zero() {
            problems.push(format!("{path}.message_timeout"), "must be greater than 0");
        }
        self.validate_acks(path, problems);
        // librdkafka itself checks every property name and value.
        let sink = path.rsplit('.').next().unwrap_or("kafka");
        match self.client_config(sink) {
            Err(e) => problems.push(format!("{path}.librdkafka_secret_files"), e),
            Ok(c) => {
                if let Err(e) = c.create_native_config() {
                    problems.push(
                        format!("{path}.librdkafka"),
                        format!("librdkafka rejects the settings: {e}"),
                    );
                }
            }
        }
    }

    fn build(&self, common: &SinkCommon, ctx: SinkContext) -> anyhow::Result<Box<dyn Sink>> {
        Ok(Box::new(KafkaSink::new(self.clone(), common, ctx)?))
    }
}
