//! The syslog sink over RELP against a scripted receiver: reconnects after
//! `serverclose` and refusals that end in the dead-letter file.

use super::*;
use bytes::Bytes;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A scripted RELP receiver: refuses messages containing "poison" with
/// `rsp 500`, and ends every session with `serverclose` (and a close)
/// after `per_session` accepted messages, to force reconnects.
async fn receiver(per_session: usize) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (r, mut w) = s.into_split();
            let mut r = tokio::io::BufReader::new(r);
            let mut accepted = 0;
            loop {
                let mut head = Vec::new();
                if r.read_until(b' ', &mut head).await.unwrap_or(0) == 0 {
                    break;
                }
                let mut cmd = Vec::new();
                let mut len = Vec::new();
                if r.read_until(b' ', &mut cmd).await.is_err()
                    || r.read_until(b' ', &mut len).await.is_err()
                {
                    break;
                }
                let txnr = String::from_utf8_lossy(&head).trim().to_string();
                let len: usize = String::from_utf8_lossy(&len).trim().parse().unwrap();
                let mut data = vec![0; len + 1];
                if r.read_exact(&mut data).await.is_err() {
                    break;
                }
                data.pop();
                let text = String::from_utf8_lossy(&data).to_string();
                let answer = if cmd.starts_with(b"open") {
                    "200 OK\nrelp_version=0\ncommands=syslog".to_string()
                } else if text.contains("poison") {
                    "500 message refused".to_string()
                } else {
                    seen.lock().unwrap().push(text);
                    accepted += 1;
                    "200 OK".to_string()
                };
                let frame = format!("{txnr} rsp {} {answer}\n", answer.len());
                if w.write_all(frame.as_bytes()).await.is_err() {
                    break;
                }
                if accepted == per_session {
                    let _ = w.write_all(b"0 serverclose 0\n").await;
                    break;
                }
            }
        }
    });
    (port, got)
}

fn sink(port: u16, dir: &std::path::Path) -> SyslogSink {
    let cfg: SyslogConfig = serde_json::from_value(serde_json::json!({
        "address": format!("relp://127.0.0.1:{port}"),
        "relp_window": 4,
    }))
    .unwrap();
    let common: SinkCommon = serde_json::from_value(serde_json::json!({
        "inputs": ["s"], "retry": {"initial": "5ms", "max": "20ms"}
    }))
    .unwrap();
    SyslogSink::new(cfg, &common, SinkContext::in_dir(dir, "relp-test")).unwrap()
}

fn event(i: usize, poison: bool) -> Event {
    let id = format!("e{i:03}");
    Event {
        raw: Bytes::from(format!(
            "{{\"id\":\"{id}\"{}}}",
            if poison { ",\"x\":\"poison\"" } else { "" }
        )),
        id: Some(id.into()),
        time: None,
        kind: None,
    }
}

#[tokio::test]
async fn serverclose_resends_unacked_and_refusals_go_to_dead_letters() {
    let (port, got) = receiver(7).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(port, dir.path());
    let events: Vec<Event> = (0..40).map(|i| event(i, i == 13)).collect();
    tokio::time::timeout(Duration::from_secs(20), sink.deliver("s", &events))
        .await
        .expect("delivery finished")
        .unwrap();
    let got = got.lock().unwrap().clone();
    for i in (0..40).filter(|i| *i != 13) {
        let id = format!("\"id\":\"e{i:03}\"");
        assert!(got.iter().any(|m| m.contains(&id)), "e{i:03} lost");
    }
    assert!(!got.iter().any(|m| m.contains("poison")));
    let dl = std::fs::read_to_string(dir.path().join("dead_letter/relp-test.ndjson")).unwrap();
    let rows: Vec<serde_json::Value> = dl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], "e013");
    assert!(rows[0]["error"]
        .as_str()
        .unwrap()
        .contains("refused the message 3 times: 500 message refused"));
    let m = metrics().render();
    assert!(
        m.contains("auditrelay_syslog_relp_refused_total{sink=\"relp-test\"} 3"),
        "{m}"
    );
    assert!(m.contains("auditrelay_syslog_reconnects_total{sink=\"relp-test\"}"));
}
