//! The real binary receiving pushed events on its `webhook_in` listener and
//! delivering them to a webhook receiver: every body shape, bearer and HMAC
//! checks, every refusal leaving the spool untouched, SIGKILL right after
//! the 2xx, spool clean-up, and HTTPS with client certificates.

use crate::support;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use rand::Rng;
use support::daemon::free_port;
use support::harness::{duplicates, metric_value, wait_for_all, Setup};
use support::webhook_receiver::{signature, WebhookConfig, WebhookReceiver};

const BEARER: &str = "push-bearer-SECRET-0b9d";
const HMAC_KEY: &str = "push-hmac-SECRET-a1f3";

async fn hook() -> WebhookReceiver {
    WebhookReceiver::start(WebhookConfig {
        id_field: "id".into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

struct Push {
    setup: Setup,
    port: u16,
    client: reqwest::Client,
    scheme: &'static str,
}

impl Push {
    fn new(hook: &WebhookReceiver, extra: &str) -> Push {
        let port = free_port();
        let setup = Setup::new(
            "push",
            &format!(
                r#"type = "webhook_in"
listen = "127.0.0.1:{port}"
path = "/events"
token_file = "{{dir}}/bearer"
hmac_secret_file = "{{dir}}/hmac"
batch_size = 50
{extra}
"#
            ),
            hook,
        );
        setup.write("bearer", BEARER);
        setup.write("hmac", HMAC_KEY);
        Push {
            setup,
            port,
            client: reqwest::Client::new(),
            scheme: "http",
        }
    }

    fn url(&self) -> String {
        format!("{}://127.0.0.1:{}/events", self.scheme, self.port)
    }

    /// POSTs `body` signed and authorized (unless `headers` override).
    async fn post(&self, body: &[u8], headers: &[(&str, &str)]) -> (u16, String) {
        let mut all = reqwest::header::HeaderMap::new();
        all.insert("authorization", format!("Bearer {BEARER}").parse().unwrap());
        all.insert(
            "x-auditrelay-signature",
            signature(HMAC_KEY.as_bytes(), body).parse().unwrap(),
        );
        for (k, v) in headers {
            let name: reqwest::header::HeaderName = k.parse().unwrap();
            all.insert(name, v.parse().unwrap());
        }
        let req = self
            .client
            .post(self.url())
            .headers(all)
            .body(body.to_vec());
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.text().await.unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        }
    }

    /// Waits until the daemon accepts connections on the listener.
    async fn wait_listening(&self) {
        // The daemon is another process: poll its port, bounded.
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("listener never came up:\n{}", self.setup.tail(20));
    }

    fn spool_bytes(&self) -> u64 {
        let dir = self.setup.state_dir().join("spool/push");
        std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    fn spool_segments(&self) -> usize {
        std::fs::read_dir(self.setup.state_dir().join("spool/push"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "spool"))
                    .count()
            })
            .unwrap_or(0)
    }
}

fn event(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","event_type":"dlp.violation","timestamp":"2026-03-15T08:42:17.003Z","detail":"a,b \"q\"\nline"}}"#
    )
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_in_accepts_objects_arrays_and_ndjson_and_delivers_them_byte_for_byte() {
    let hook = hook().await;
    let push = Push::new(&hook, "segment_bytes = 4096");
    let mut daemon = push.setup.spawn();
    push.wait_listening().await;

    let one = event("obj-1");
    let (status, body) = push.post(one.as_bytes(), &[]).await;
    assert_eq!((status, body.as_str()), (200, r#"{"accepted":1}"#));
    let array = format!("[{}, {}]", event("arr-1"), event("arr-2"));
    assert_eq!(push.post(array.as_bytes(), &[]).await.0, 200);
    let ndjson = format!(
        "{}\n{}\n\n{}\n",
        event("nd-1"),
        event("nd-2"),
        event("nd-3")
    );
    assert_eq!(push.post(ndjson.as_bytes(), &[]).await.0, 200);
    let pretty = "{\n  \"id\": \"pretty-1\",\n  \"event_type\": \"x\"\n}";
    assert_eq!(push.post(pretty.as_bytes(), &[]).await.0, 200);
    let zipped = gzip(format!("[{}]", event("gz-1")).as_bytes());
    assert_eq!(
        push.post(&zipped, &[("Content-Encoding", "gzip")]).await.0,
        200
    );
    // Many more, so the spool rotates through 4 KiB segments.
    let mut expected: Vec<String> = [
        "obj-1", "arr-1", "arr-2", "nd-1", "nd-2", "nd-3", "pretty-1", "gz-1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for batch in 0..20 {
        let ids: Vec<String> = (0..25).map(|i| format!("bulk-{batch}-{i}")).collect();
        let body = format!(
            "[{}]",
            ids.iter().map(|id| event(id)).collect::<Vec<_>>().join(",")
        );
        assert_eq!(push.post(body.as_bytes(), &[]).await.0, 200);
        expected.extend(ids);
    }
    wait_for_all(&expected, &hook, &push.setup).await;
    assert_eq!(duplicates(&hook), 0);
    let raw = hook.raw_events();
    assert_eq!(raw[0], one, "forwarded byte for byte");
    assert!(raw.iter().any(|r| r.contains("\"pretty-1\"")));

    // Delivered segments are removed once committed (the newest stays).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // A single final post lets the source notice the committed position.
    let (status, _) = push.post(event("last").as_bytes(), &[]).await;
    assert_eq!(status, 200);
    expected.push("last".into());
    wait_for_all(&expected, &hook, &push.setup).await;
    while push.spool_segments() > 2 && tokio::time::Instant::now() < deadline {
        let id = format!("nudge-{}", rand::rng().random::<u32>());
        push.post(event(&id).as_bytes(), &[]).await;
        expected.push(id);
        wait_for_all(&expected, &hook, &push.setup).await;
    }
    assert!(
        push.spool_segments() <= 2,
        "delivered segments were not removed: {}",
        push.spool_segments()
    );
    let metrics = push.setup.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "auditrelay_webhook_in_requests_total{outcome=\"accepted\",source=\"push\"}"
        ) >= 25.0
    );
    assert!(metrics.contains("auditrelay_webhook_in_spool_bytes{source=\"push\"}"));
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_in_bad_signature_is_401_and_nothing_is_spooled() {
    let hook = hook().await;
    let push = Push::new(&hook, "max_body_bytes = 2048");
    let mut daemon = push.setup.spawn();
    push.wait_listening().await;
    let before = push.spool_bytes();
    let body = event("never");

    let (status, text) = push
        .post(
            body.as_bytes(),
            &[("X-Auditrelay-Signature", "sha256=00ff")],
        )
        .await;
    assert_eq!(status, 401);
    assert!(text.contains("does not match the body"), "{text}");
    let tampered = event("nevermore");
    let signed_other = signature(HMAC_KEY.as_bytes(), body.as_bytes());
    let (status, _) = push
        .post(
            tampered.as_bytes(),
            &[("X-Auditrelay-Signature", signed_other.as_str())],
        )
        .await;
    assert_eq!(status, 401);
    let resp = reqwest::Client::new()
        .post(push.url())
        .header("Authorization", "Bearer wrong")
        .header(
            "X-Auditrelay-Signature",
            signature(HMAC_KEY.as_bytes(), body.as_bytes()),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.headers().get("www-authenticate").unwrap(), "Bearer");
    let resp = reqwest::Client::new()
        .post(push.url())
        .header("Authorization", format!("Bearer {BEARER}"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("missing X-Auditrelay-Signature"));

    // Other refusals: each with a clear status and message, none spooled.
    let (status, text) = push.post(b"{\"id\":\"x\"}\n{broken\n", &[]).await;
    assert_eq!(status, 400);
    assert!(text.contains("NDJSON line 2"), "{text}");
    let (status, text) = push.post(b"[1,2]", &[]).await;
    assert_eq!((status, text.contains("item 0")), (400, true));
    let (status, _) = push.post(b"", &[]).await;
    assert_eq!(status, 400);
    let big = format!("[{}]", vec![event("big"); 40].join(","));
    let (status, text) = push.post(big.as_bytes(), &[]).await;
    assert_eq!(status, 413);
    assert!(text.contains("max_body_bytes"), "{text}");
    let bomb = gzip(&vec![b' '; 100_000]);
    let (status, _) = push.post(&bomb, &[("Content-Encoding", "gzip")]).await;
    assert_eq!(status, 413, "decompressed size is limited too");
    let (status, text) = push
        .post(body.as_bytes(), &[("Content-Encoding", "br")])
        .await;
    assert_eq!((status, text.contains("not supported")), (415, true));
    let resp = reqwest::Client::new().get(push.url()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/other", push.port))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    assert_eq!(
        push.spool_bytes(),
        before,
        "a refused request reached the spool"
    );

    // A valid request still works, and only it is delivered.
    assert_eq!(push.post(event("good").as_bytes(), &[]).await.0, 200);
    wait_for_all(&["good".to_string()], &hook, &push.setup).await;
    let metrics = push.setup.metrics().await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    assert_eq!(hook.unique_ids(), vec!["good".to_string()]);
    assert_eq!(
        metric_value(
            &metrics,
            "auditrelay_webhook_in_requests_total{outcome=\"unauthorized\",source=\"push\"}"
        ),
        4.0
    );
    let log = push.setup.log_text();
    for secret in [BEARER, HMAC_KEY] {
        assert!(!log.contains(secret), "secret leaked into the log");
        assert!(!metrics.contains(secret), "secret leaked into metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_in_sigkill_right_after_the_2xx_loses_nothing() {
    let hook = hook().await;
    let push = Push::new(&hook, "");
    // The sink is down: nothing can be delivered before the kill.
    hook.set_down(true);
    let mut daemon = push.setup.spawn();
    push.wait_listening().await;
    let mut acked = Vec::new();
    for i in 0..30 {
        let id = format!("k0-{i}");
        assert_eq!(push.post(event(&id).as_bytes(), &[]).await.0, 200);
        acked.push(id);
    }
    daemon.kill().await;
    assert_eq!(hook.stats().accepted_requests, 0);

    // Restart with the sink up: every acknowledged event arrives.
    hook.set_down(false);
    let mut daemon = push.setup.spawn();
    wait_for_all(&acked, &hook, &push.setup).await;
    daemon.kill().await;

    // Now SIGKILL at random instants while a sender pushes and retries:
    // every event that was answered 2xx must arrive.
    for round in 1..=4 {
        let mut daemon = push.setup.spawn();
        push.wait_listening().await;
        let kill_after = rand::rng().random_range(5..40);
        for i in 0..60 {
            let id = format!("k{round}-{i}");
            let (status, _) = push.post(event(&id).as_bytes(), &[]).await;
            if status == 200 {
                acked.push(id);
            }
            if i == kill_after {
                daemon.kill().await;
                break;
            }
        }
    }
    let mut daemon = push.setup.spawn();
    // One more event through the running daemon, so it is past its start
    // (and handles SIGTERM) before it is stopped.
    push.wait_listening().await;
    assert_eq!(push.post(event("final").as_bytes(), &[]).await.0, 200);
    acked.push("final".into());
    wait_for_all(&acked, &hook, &push.setup).await;
    let status = daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit");
    assert!(status.success(), "{status:?}\n{}", push.setup.tail(30));
    eprintln!(
        "acknowledged {}, delivered all; duplicates {}",
        acked.len(),
        duplicates(&hook)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made
/// with the openssl command (which `.ci/run` installs).
fn make_certs(dir: &Path) {
    let run = |args: &str| {
        let out = std::process::Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir)
            .output()
            .expect("openssl not found: install it (what .ci/run does)");
        assert!(
            out.status.success(),
            "openssl {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("server.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.cnf"), "extendedKeyUsage=clientAuth\n").unwrap();
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    run(&format!(
        "req -x509 {ec} -keyout ca.key -out ca.pem -days 1 -subj /CN=test-ca"
    ));
    for name in ["server", "client"] {
        run(&format!(
            "req {ec} -keyout {name}.key -out {name}.csr -subj /CN={name}"
        ));
        run(&format!(
            "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem -days 1 -extfile {name}.cnf"
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_in_serves_https_and_requires_client_certificates() {
    let hook = hook().await;
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let c = |f: &str| certs.path().join(f).display().to_string();
    let mut push = Push::new(
        &hook,
        &format!(
            "tls = {{ cert_file = \"{}\", key_file = \"{}\", ca_file = \"{}\" }}",
            c("server.pem"),
            c("server.key"),
            c("ca.pem")
        ),
    );
    let mut daemon = push.setup.spawn();
    push.wait_listening().await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(c("ca.pem")).unwrap()).unwrap();
    let mut identity = std::fs::read(c("client.pem")).unwrap();
    identity.extend(std::fs::read(c("client.key")).unwrap());
    push.scheme = "https";

    // Without a client certificate the handshake fails.
    push.client = reqwest::Client::builder()
        .tls_certs_merge([ca.clone()])
        .build()
        .unwrap();
    let (status, _) = push.post(event("no-cert").as_bytes(), &[]).await;
    assert_eq!(status, 0, "accepted without a client certificate");
    // Plain HTTP to the TLS port does not get in either.
    let plain = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/events", push.port))
        .body(event("plain"))
        .send()
        .await;
    assert!(plain.map(|r| r.status().as_u16() != 200).unwrap_or(true));

    push.client = reqwest::Client::builder()
        .tls_certs_merge([ca])
        .identity(reqwest::Identity::from_pem(&identity).unwrap())
        .build()
        .unwrap();
    let (status, text) = push.post(event("tls-1").as_bytes(), &[]).await;
    assert_eq!(status, 200, "{text}");
    wait_for_all(&["tls-1".to_string()], &hook, &push.setup).await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    assert_eq!(hook.count_of("no-cert") + hook.count_of("plain"), 0);
}
