//! Pipeline benchmark: the release `auditrelay` binary tails a loopback fake
//! of the Veza export API (pages of 10,000 Veza-shaped ~1 KiB events) and
//! delivers to fast local receivers, one scenario per sink kind and all at
//! once. Prints one table: events/s, MB/s, CPU seconds per million events,
//! peak RSS, p50/p99 page-to-commit latency, and each rate as a ratio to the
//! physical-limit baseline (parsing the same page bytes into the pipeline's
//! event representation, and gzipping them).
//!
//!     cargo bench --bench pipeline                 # 3 runs per scenario, medians
//!     BENCH_PAGES=20 BENCH_RUNS=1 cargo bench --bench pipeline -- file webhook
//!
//! `BENCH_DAEMON=/path/to/auditrelay` runs another build of the daemon (not
//! an `AUDITRELAY_*` name: the daemon reads those as config keys).
//!
//! Scenarios: `file`, `webhook`, `kafka`, `syslog` (TCP), `hec` (gzip, the
//! default), `hecraw` (HEC uncompressed), `hec3` (uncompressed HEC, webhook
//! and syslog TCP: issue 16's three-sink run), `all` (HEC gzip, webhook,
//! syslog, Kafka).
//!
//! The fake API and the receivers run in this process; the daemon is a child
//! process, so its RSS and CPU time are its own.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditrelay::event::{FieldExtractor, FieldPath};
use auditrelay::source::pull::scan::{scan_page, Items};
use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const PAGE_EVENTS: usize = 10_000;

fn pages() -> usize {
    std::env::var("BENCH_PAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

fn runs() -> usize {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// One Veza-shaped event of about 1 KiB; `id` is fixed width so pages can be
/// made unique by patching bytes in place.
fn event(page: usize, i: usize) -> String {
    format!(
        concat!(
            r#"{{"identity":{{"user_id":"aeaa34cf-e97f-4315-b185-249018cf191c","session_id":"b0ba024d-0158-4c7e-a47f-bbe8f7b98806","api_key_id":"","email":"cookie@cookie.ai"}},"#,
            r#""status":{{"grpc_code":"OK","http_status":200,"error_reason":"OK"}},"#,
            r#""client":{{"ip":"10.42.1.{octet}","user_agent":"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/115.0.0.0 Safari/537.36"}},"#,
            r#""endpoint":"/api_protos.v1.APIKeyService/CreateAPIKey","method":"POST","url":"/api/preview/keys","#,
            r#""request_id":"p{page:06}-e{i:06}","#,
            r#""request":{{"name":"KeyName1","description":"bench event with some text to reach a realistic size \"quoted\" and \\ escaped"}},"#,
            r#""response":{{"value":{{"id":"fde4386f-3d85-4ef2-82d0-324dacb6e9ba","name":"KeyName1","team_id":"613df06e-9a40-4331-947c-5c327b54b228","user_id":"aeaa34cf-e97f-4315-b185-249018cf191c"}}}},"#,
            r#""started_at":"2026-07-26T08:23:17.134994459Z","ended_at":"2026-07-26T08:23:17.151080751Z","persisted_at":"2026-07-26T08:23:{sec:02}.151080751Z"}}"#
        ),
        octet = i % 250,
        page = page,
        i = i,
        sec = i % 60,
    )
}

/// A page body and where each event's page number sits, to patch per page.
struct PageTemplate {
    body: Vec<u8>,
    page_offsets: Vec<usize>,
}

impl PageTemplate {
    fn new() -> Self {
        let mut body = String::from(r#"{"values":["#);
        let mut page_offsets = Vec::with_capacity(PAGE_EVENTS);
        for i in 0..PAGE_EVENTS {
            if i > 0 {
                body.push(',');
            }
            let e = event(0, i);
            let at = e.find("\"p000000-").expect("id marker") + 2;
            page_offsets.push(body.len() + at);
            body.push_str(&e);
        }
        body.push_str(r#"],"next_page_token":"#);
        PageTemplate {
            body: body.into_bytes(),
            page_offsets,
        }
    }

    fn render(&self, page: usize) -> Vec<u8> {
        let mut b = self.body.clone();
        let digits = format!("{page:06}");
        for &off in &self.page_offsets {
            b[off..off + 6].copy_from_slice(digits.as_bytes());
        }
        b.extend_from_slice(format!("\"t{}\"}}", page + 1).as_bytes());
        b
    }
}

/// Reads one HTTP/1.1 request head and returns (request line, content-length).
async fn read_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Option<(String, usize)> {
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let request = line.trim_end().to_string();
    let mut len = 0;
    loop {
        line.clear();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    Some((request, len))
}

/// The Veza export fake: `pages` distinct pages, then empty pages.
async fn veza_fake(pages: usize, served: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let template = Arc::new(PageTemplate::new());
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (template, served) = (template.clone(), served.clone());
            tokio::spawn(async move {
                let (rd, mut wr) = sock.into_split();
                let mut rd = BufReader::new(rd);
                while let Some((request, _)) = read_head(&mut rd).await {
                    let page = request
                        .split(['?', '&', ' '])
                        .find_map(|p| p.strip_prefix("page_token=t"))
                        .and_then(|n| n.parse::<usize>().ok())
                        .unwrap_or(0);
                    let body = if page < pages {
                        served.fetch_max(page + 1, Ordering::SeqCst);
                        template.render(page)
                    } else {
                        format!(r#"{{"values":[],"next_page_token":"t{page}"}}"#).into_bytes()
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    if wr.write_all(head.as_bytes()).await.is_err()
                        || wr.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// A receiver that reads and discards: HTTP bodies (answering `answer`) or
/// a raw TCP stream. Counts bytes so the table can show MB/s on the wire.
async fn discard_http(answer: &'static str, bytes: Arc<AtomicU64>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let (rd, mut wr) = sock.into_split();
                let mut rd = BufReader::with_capacity(1 << 20, rd);
                let mut body = Vec::new();
                while let Some((_, len)) = read_head(&mut rd).await {
                    body.resize(len, 0);
                    if rd.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    bytes.fetch_add(len as u64, Ordering::Relaxed);
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if wr.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

async fn discard_tcp(bytes: Arc<AtomicU64>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 20];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    format!("{addr}")
}

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    events_per_s: f64,
    mb_per_s: f64,
    cpu_s_per_million: f64,
    peak_rss_mib: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Estimates a quantile from Prometheus histogram buckets (linear within a
/// bucket, as `histogram_quantile` does).
fn quantile(metrics: &str, name: &str, q: f64) -> f64 {
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let v: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    if total == 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in &buckets {
        if count >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let span = (count - prev.1).max(1e-9);
            return prev.0 + (le - prev.0) * (rank - prev.1) / span;
        }
        prev = (le, count);
    }
    prev.0
}

fn delivered(metrics: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("auditrelay_events_delivered_total{"))
    {
        let sink = l
            .split("sink=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("?");
        let v: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(sink.to_string()).or_default() += v;
    }
    out
}

/// The process's peak RSS so far (MiB), `VmHWM` in `/proc/PID/status`;
/// `None` once it has exited. Not `wait4`'s `ru_maxrss`: a child spawned
/// with vfork (as `Command` does) inherits there the peak of the bench
/// process itself, whose fakes of earlier scenarios grew past the daemon.
fn peak_rss(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Reaps the child and returns its own CPU seconds and `ru_maxrss` (MiB).
fn reap(pid: u32) -> (f64, f64) {
    // SAFETY: wait4 on our own child; it fills the structs we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status = 0;
    unsafe { libc::wait4(pid as i32, &mut status, 0, &mut ru) };
    let cpu = ru.ru_utime.tv_sec as f64
        + ru.ru_utime.tv_usec as f64 / 1e6
        + ru.ru_stime.tv_sec as f64
        + ru.ru_stime.tv_usec as f64 / 1e6;
    (cpu, ru.ru_maxrss as f64 / 1024.0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// Owner-only, like real secret and config files (and no warnings).
fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

/// The daemon under test: `BENCH_DAEMON` (to compare another build, e.g.
/// a copy of the binary of the base commit), else the one cargo just built.
fn daemon_binary() -> String {
    std::env::var("BENCH_DAEMON").unwrap_or_else(|_| env!("CARGO_BIN_EXE_auditrelay").to_string())
}

/// Runs the daemon once for a scenario and measures it.
async fn run_scenario(name: &str, dir: &Path, pages: usize) -> Sample {
    let served = Arc::new(AtomicUsize::new(0));
    let wire = Arc::new(AtomicU64::new(0));
    let veza = veza_fake(pages, served.clone()).await;
    let token = dir.join("token");
    std::fs::write(&token, "bench").expect("token");
    restrict(&token);
    let mut sinks = String::new();
    let mut kafka = None;
    let want: Vec<&str> = match name {
        "all" => vec!["hec", "webhook", "syslog", "kafka"],
        // Issue 16's three-sink run: uncompressed HEC, webhook, syslog TCP.
        "hec3" => vec!["hecraw", "webhook", "syslog"],
        other => vec![other],
    };
    // `BENCH_CONCURRENCY=N`: the HTTP sinks' `concurrency` (else their default).
    let concurrency = std::env::var("BENCH_CONCURRENCY")
        .map(|n| format!("concurrency = {n}\n"))
        .unwrap_or_default();
    for s in &want {
        match *s {
            "file" => sinks += &format!(
                "[sinks.file]\ntype = \"file\"\ninputs = [\"veza\"]\npath = \"{}/events.ndjson\"\nrotate_bytes = 100000000000\n",
                dir.display()
            ),
            "webhook" => {
                let url = discard_http("{}", wire.clone()).await;
                sinks += &format!("[sinks.webhook]\ntype = \"webhook\"\ninputs = [\"veza\"]\nurl = \"{url}/hook\"\n{concurrency}");
            }
            "hec" => {
                let url = discard_http(r#"{"text":"Success","code":0}"#, wire.clone()).await;
                sinks += &format!(
                    "[sinks.hec]\ntype = \"splunk_hec\"\ninputs = [\"veza\"]\nendpoint = \"{url}\"\ntoken_file = \"{}\"\nindexer_ack = false\n{concurrency}",
                    token.display()
                );
            }
            "hecraw" => {
                let url = discard_http(r#"{"text":"Success","code":0}"#, wire.clone()).await;
                sinks += &format!(
                    "[sinks.hecraw]\ntype = \"splunk_hec\"\ninputs = [\"veza\"]\nendpoint = \"{url}\"\ntoken_file = \"{}\"\nindexer_ack = false\ncompression = \"none\"\n{concurrency}",
                    token.display()
                );
            }
            "syslog" => {
                let addr = discard_tcp(wire.clone()).await;
                sinks += &format!("[sinks.syslog]\ntype = \"syslog\"\ninputs = [\"veza\"]\naddress = \"tcp://{addr}\"\n");
            }
            "kafka" => {
                let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
                mock.create_topic("bench", 3, 1).expect("topic");
                sinks += &format!(
                    "[sinks.kafka]\ntype = \"kafka\"\ninputs = [\"veza\"]\nbrokers = [\"{}\"]\ntopic = \"bench\"\n",
                    mock.bootstrap_servers()
                );
                kafka = Some(mock);
            }
            other => panic!("unknown scenario {other}"),
        }
    }
    let port = free_port();
    let state = dir.join(format!("state-{name}"));
    let _ = std::fs::remove_dir_all(&state);
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{}\"\nlog_level = \"warn\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n[sources.veza]\ntype = \"veza\"\nurl = \"{veza}\"\ntoken_file = \"{}\"\npage_size = {PAGE_EVENTS}\nstart_at = \"2026-01-01T00:00:00Z\"\npoll_interval = \"1s\"\n{sinks}",
            state.display(),
            token.display()
        ),
    )
    .expect("config");
    restrict(&cfg);
    let started = Instant::now();
    // Reaped with wait4 in `reap`, which also reads its rusage.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(daemon_binary())
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn auditrelay");
    let total = (pages * PAGE_EVENTS) as f64;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(600);
    let last = loop {
        assert!(Instant::now() < deadline, "scenario {name} did not finish");
        if let Ok(r) = client.get(&url).send().await {
            if let Ok(text) = r.text().await {
                let d = delivered(&text);
                let done = want
                    .iter()
                    .all(|s| d.get(*s).copied().unwrap_or(0.0) >= total);
                if done {
                    break text;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed().as_secs_f64();
    let mut maxrss = peak_rss(child.id()).unwrap_or(0.0);
    // SAFETY: SIGTERM to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    // Until it has exited (a zombie has no memory left to report).
    while let Some(peak) = peak_rss(child.id()) {
        maxrss = maxrss.max(peak);
        std::thread::sleep(Duration::from_millis(5));
    }
    let (cpu, _) = reap(child.id());
    drop(kafka);
    let event_bytes = PageTemplate::new().body.len() as f64;
    Sample {
        events_per_s: total / elapsed,
        mb_per_s: event_bytes * pages as f64 / elapsed / 1e6,
        cpu_s_per_million: cpu / total * 1e6,
        peak_rss_mib: maxrss,
        p50_ms: quantile(&last, "auditrelay_batch_commit_latency_seconds", 0.5) * 1e3,
        p99_ms: quantile(&last, "auditrelay_batch_commit_latency_seconds", 0.99) * 1e3,
    }
}

/// The physical-limit baseline: parse a page into the pipeline's events
/// (the daemon's one-pass scan, and the multi-pass reading it replaced,
/// for comparison), and gzip it, single-threaded.
fn baseline() -> (f64, f64, f64, f64) {
    let body = Bytes::from(PageTemplate::new().render(1));
    let paths = |l: &[&str]| {
        l.iter()
            .map(|p| FieldPath::parse(p).expect("path"))
            .collect::<Vec<_>>()
    };
    let ex = FieldExtractor::new(
        paths(&["request_id", "id"]),
        paths(&["persisted_at", "ended_at", "timestamp"]),
        paths(&["type", "event_type", "intent", "endpoint", "action"]),
    );
    let items_path = FieldPath::parse("values").expect("path");
    let token_path = FieldPath::parse("next_page_token").expect("path");
    let rounds = 20;
    let rate = |f: &dyn Fn() -> usize| {
        let t = Instant::now();
        let n: usize = (0..rounds).map(|_| f()).sum();
        n as f64 / t.elapsed().as_secs_f64()
    };
    let one_pass = rate(&|| {
        let page = scan_page(&body, &items_path, Some(&token_path), &ex).expect("page");
        let Items::List(items) = page.items else {
            panic!("no items")
        };
        let events: Vec<_> = items.into_iter().map(|i| i.into_event(&body)).collect();
        std::hint::black_box(page.next_token);
        events.len()
    });
    let multi_pass = rate(&|| {
        let root: &RawValue = serde_json::from_slice(&body).expect("page");
        let _ = items_path.lookup(root).expect("values");
        let root: &RawValue = serde_json::from_slice(&body).expect("page");
        std::hint::black_box(token_path.lookup(root));
        let items: Vec<&RawValue> =
            serde_json::from_str(items_path.lookup(root).expect("values").get()).expect("items");
        let events: Vec<_> = items.iter().map(|i| ex.event(&body, i)).collect();
        events.len()
    });
    let gz = |level| {
        let t = Instant::now();
        for _ in 0..5 {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
            e.write_all(&body).expect("gzip");
            std::hint::black_box(e.finish().expect("gzip"));
        }
        (5 * PAGE_EVENTS) as f64 / t.elapsed().as_secs_f64()
    };
    (one_pass, multi_pass, gz(1), gz(6))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: then a
    // smoke run (one page, file sink) proves the harness works, quickly.
    if !std::env::args().any(|a| a == "--bench") {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = run_scenario("file", dir.path(), 1).await;
        assert!(s.events_per_s > 0.0 && s.peak_rss_mib > 0.0, "{s:?}");
        println!("bench smoke: {s:?} (run `cargo bench --bench pipeline` for the table)");
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let scenarios: Vec<String> = if args.is_empty() {
        [
            "file", "webhook", "kafka", "hec", "hecraw", "syslog", "hec3", "all",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    } else {
        args
    };
    let (parse, multi, gz1, gz6) = baseline();
    println!("baseline (1 thread): parse {parse:.0} events/s (one pass; the old multi-pass reading {multi:.0}); gzip level 1 {gz1:.0} events/s, level 6 {gz6:.0} events/s");
    let dir = tempfile::tempdir().expect("tempdir");
    let pages = pages();
    println!(
        "{:<8} {:>11} {:>8} {:>10} {:>9} {:>8} {:>8} {:>8}",
        "scenario", "events/s", "MB/s", "CPU s/M", "RSS MiB", "p50 ms", "p99 ms", "/parse"
    );
    for s in &scenarios {
        let mut samples = Vec::new();
        for _ in 0..runs() {
            samples.push(run_scenario(s, dir.path(), pages).await);
        }
        let m = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        let eps = m(|x| x.events_per_s);
        println!(
            "{:<8} {:>11.0} {:>8.1} {:>10.2} {:>9.1} {:>8.0} {:>8.0} {:>8.2}",
            s,
            eps,
            m(|x| x.mb_per_s),
            m(|x| x.cpu_s_per_million),
            m(|x| x.peak_rss_mib),
            m(|x| x.p50_ms),
            m(|x| x.p99_ms),
            eps / parse
        );
    }
}
