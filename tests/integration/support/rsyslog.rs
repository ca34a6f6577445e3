//! A real rsyslogd (Debian's `rsyslog`, `rsyslog-gnutls`, `rsyslog-relp`)
//! started per test on free loopback ports: plain TCP, UDP, TLS (gtls, with
//! a CA and server certificate generated here), TLS requiring a client
//! certificate, and RELP. Each input writes one JSON line per message with
//! the fields rsyslog parsed (so its RFC 5424 parser judges the messages)
//! and the raw message. Killed when dropped.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::{Child, Command};

use super::daemon::free_port;

/// The inputs of the generated config, by log file name.
pub const INPUTS: &[&str] = &["tcp", "udp", "tls", "mtls", "relp"];

/// Generated certificates (PEM files in the test directory).
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing the server uses.
    pub other_ca: PathBuf,
}

impl Pki {
    pub fn generate(dir: &Path) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write PEM");
            p
        };
        let ca = |cn: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, cn);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (params, key, cert)
        };
        let (ca_params, ca_key, ca_cert) = ca("auditrelay test CA");
        let (_, _, other_cert) = ca("some other CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, purpose: ExtendedKeyUsagePurpose, cn: &str| {
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![purpose];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "localhost",
        );
        let (client_cert, client_key) = leaf(
            vec!["auditrelay-client".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
            "auditrelay-client",
        );
        Pki {
            ca: write("ca.pem", ca_cert.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server.key", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client.key", client_key),
            other_ca: write("other-ca.pem", other_cert.pem()),
        }
    }
}

/// One message as rsyslog parsed it.
#[derive(Clone, Debug)]
pub struct Record {
    /// "1" when rsyslog parsed RFC 5424, "0" for RFC 3164.
    pub protocol: String,
    pub facility: u8,
    pub severity: u8,
    pub timestamp: String,
    pub hostname: String,
    pub app: String,
    pub procid: String,
    pub msgid: String,
    pub sd: String,
    pub msg: String,
    pub raw: String,
}

impl Record {
    fn from_json(v: &Value) -> Option<Record> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Some(Record {
            protocol: s("protocol")?,
            facility: s("facility")?.parse().ok()?,
            severity: s("severity")?.parse().ok()?,
            timestamp: s("timestamp")?,
            hostname: s("hostname")?,
            app: s("app")?,
            procid: s("procid")?,
            msgid: s("msgid")?,
            sd: s("sd")?,
            msg: s("msg")?,
            raw: s("raw")?,
        })
    }

    /// The PARAM-VALUEs of the SD element, unescaped per RFC 5424 §6.3.3.
    pub fn sd_params(&self) -> Vec<(String, String)> {
        parse_sd(&self.sd).unwrap_or_else(|e| panic!("bad SD {:?}: {e}", self.sd))
    }

    /// The event's reference: the fakes' `fake_ref` in the message (unique
    /// even when the vendor id is empty), else the SD `id` parameter.
    pub fn event_ref(&self) -> Option<String> {
        let at = self.msg.find("\"fake_ref\":\"")? + "\"fake_ref\":\"".len();
        let len = self.msg[at..].find('"')?;
        Some(self.msg[at..at + len].to_string())
    }

    pub fn sd_param(&self, name: &str) -> Option<String> {
        self.sd_params()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// A strict parser of one SD element `[ID name="value"...]`.
pub fn parse_sd(sd: &str) -> Result<Vec<(String, String)>, String> {
    let b = sd.as_bytes();
    if b.first() != Some(&b'[') {
        return Err("does not start with [".into());
    }
    let mut i = 1;
    while i < b.len() && !matches!(b[i], b' ' | b']') {
        i += 1;
    }
    let mut out = Vec::new();
    loop {
        match b.get(i) {
            Some(b']') if i + 1 == b.len() => return Ok(out),
            Some(b']') => return Err("text after the element".into()),
            Some(b' ') => i += 1,
            _ => return Err(format!("unexpected end at {i}")),
        }
        let start = i;
        while i < b.len() && b[i] != b'=' {
            i += 1;
        }
        let name = sd[start..i].to_string();
        if b.get(i + 1) != Some(&b'"') {
            return Err(format!("no opening quote for {name}"));
        }
        i += 2;
        let mut value = Vec::new();
        loop {
            match b.get(i) {
                None => return Err(format!("unterminated value of {name}")),
                Some(b'\\') if matches!(b.get(i + 1), Some(b'"' | b'\\' | b']')) => {
                    value.push(b[i + 1]);
                    i += 2;
                }
                Some(b'"') => {
                    i += 1;
                    break;
                }
                Some(b']') => return Err(format!("unescaped ] in {name}")),
                Some(c) => {
                    value.push(*c);
                    i += 1;
                }
            }
        }
        out.push((name, String::from_utf8(value).map_err(|e| e.to_string())?));
    }
}

pub struct Rsyslog {
    pub dir: PathBuf,
    pub tcp_port: u16,
    pub udp_port: u16,
    pub tls_port: u16,
    pub mtls_port: u16,
    pub relp_port: u16,
    pub pki: Pki,
    conf: PathBuf,
    child: Option<Child>,
}

/// The rsyslogd binary, or a failure naming the packages to install.
pub fn rsyslogd() -> PathBuf {
    for p in ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "rsyslogd is not installed: these tests need a real rsyslog. Install the Debian packages \
         `rsyslog rsyslog-gnutls rsyslog-relp` (apt-get install -y rsyslog rsyslog-gnutls rsyslog-relp; \
         `bash .ci/run` does this)"
    );
}

impl Rsyslog {
    /// Starts rsyslogd in `dir` and waits until every input takes messages.
    pub async fn start(dir: &Path) -> Rsyslog {
        let pki = Pki::generate(dir);
        let work = dir.join("rsyslog-work");
        std::fs::create_dir_all(&work).unwrap();
        let mut r = Rsyslog {
            dir: dir.to_path_buf(),
            tcp_port: free_port(),
            udp_port: free_udp_port(),
            tls_port: free_port(),
            mtls_port: free_port(),
            relp_port: free_port(),
            conf: dir.join("rsyslog.conf"),
            pki,
            child: None,
        };
        std::fs::write(&r.conf, r.config(&work)).unwrap();
        r.spawn().await;
        r
    }

    fn log(&self, input: &str) -> PathBuf {
        self.dir.join(format!("{input}.log"))
    }

    fn config(&self, work: &Path) -> String {
        let d = self.dir.display();
        let mut c = format!(
            r#"global(workDirectory="{work}" maxMessageSize="256k"
       parser.escapeControlCharactersOnReceive="off")
module(load="imtcp" maxSessions="200")
module(load="imudp")
module(load="imrelp")
template(name="fields" type="list" option.jsonf="on") {{
  property(outname="protocol" name="protocol-version" format="jsonf")
  property(outname="facility" name="syslogfacility" format="jsonf")
  property(outname="severity" name="syslogseverity" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
  property(outname="raw" name="rawmsg" format="jsonf")
}}
input(type="imtcp" port="{tcp}" ruleset="tcp")
# UDP receivers get a large socket buffer: a burst of datagrams while
# rsyslog waits for a busy CPU must not overflow the default 208 KiB.
input(type="imudp" port="{udp}" ruleset="udp" rcvbufSize="4m")
input(type="imtcp" port="{tls}" ruleset="tls" streamDriver.name="gtls" streamDriver.mode="1"
      streamDriver.authMode="anon" streamDriver.CAFile="{ca}" streamDriver.CertFile="{cert}"
      streamDriver.KeyFile="{key}" gnutlsPriorityString="NORMAL:+VERS-TLS1.3")
input(type="imtcp" port="{mtls}" ruleset="mtls" streamDriver.name="gtls" streamDriver.mode="1"
      streamDriver.authMode="x509/certvalid" streamDriver.CAFile="{ca}" streamDriver.CertFile="{cert}"
      streamDriver.KeyFile="{key}")
input(type="imrelp" port="{relp}" ruleset="relp" maxDataSize="256k")
"#,
            work = work.display(),
            tcp = self.tcp_port,
            udp = self.udp_port,
            tls = self.tls_port,
            mtls = self.mtls_port,
            relp = self.relp_port,
            ca = self.pki.ca.display(),
            cert = self.pki.server_cert.display(),
            key = self.pki.server_key.display(),
        );
        for input in INPUTS {
            c.push_str(&format!(
                "ruleset(name=\"{input}\") {{ action(type=\"omfile\" file=\"{d}/{input}.log\" template=\"fields\") }}\n"
            ));
        }
        c
    }

    async fn spawn(&mut self) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("rsyslogd.out"))
            .unwrap();
        let err = out.try_clone().unwrap();
        let pidfile = self.dir.join("rsyslogd.pid");
        let _ = std::fs::remove_file(&pidfile);
        let child = Command::new(rsyslogd())
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("start rsyslogd");
        self.child = Some(child);
        // Ready when every TCP input accepts connections...
        for port in [self.tcp_port, self.tls_port, self.mtls_port, self.relp_port] {
            let deadline = Instant::now() + Duration::from_secs(20);
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                self.assert_running();
                assert!(
                    Instant::now() < deadline,
                    "rsyslogd never listened on {port}: {}",
                    self.output()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // ...and a UDP probe came through (imudp has no other signal).
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            sock.send_to(
                b"<134>1 - probe probe - - - probe",
                ("127.0.0.1", self.udp_port),
            )
            .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            if std::fs::read_to_string(self.log("udp")).is_ok_and(|t| t.contains("probe")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "imudp never received: {}",
                self.output()
            );
        }
    }

    fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!("rsyslogd exited ({status}): {}", self.output());
            }
        }
    }

    /// rsyslogd's own messages.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("rsyslogd.out")).unwrap_or_default()
    }

    /// SIGTERM, as a service manager stops it; waits for the exit.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                // SAFETY: kill(2) on our own child, which has not been reaped.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
            if tokio::time::timeout(Duration::from_secs(20), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }

    /// Stops and starts again on the same ports.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    /// Every message of an input so far, probes excluded.
    pub fn records(&self, input: &str) -> Vec<Record> {
        let text = std::fs::read_to_string(self.log(input)).unwrap_or_default();
        let mut lines: Vec<&str> = text.lines().collect();
        if !text.ends_with('\n') {
            lines.pop(); // still being written
        }
        lines
            .iter()
            .map(|l| {
                let v: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("rsyslog wrote a line that is not JSON ({e}): {l}"));
                Record::from_json(&v).unwrap_or_else(|| panic!("missing fields: {l}"))
            })
            .filter(|r| r.app != "probe")
            .collect()
    }

    /// How many lines an input's log has (cheap; probes included).
    pub fn count(&self, input: &str) -> usize {
        std::fs::read(self.log(input))
            .map(|b| b.iter().filter(|c| **c == b'\n').count())
            .unwrap_or(0)
    }

    /// Waits until the SD `id`s of an input's messages include all of `ids`
    /// (or the timeout passes), then returns every record.
    pub async fn wait_for_ids(
        &self,
        input: &str,
        ids: &HashSet<String>,
        within: Duration,
    ) -> Vec<Record> {
        let deadline = Instant::now() + within;
        loop {
            let records = self.records(input);
            let seen: HashSet<String> = records
                .iter()
                .filter_map(|r| r.event_ref().or_else(|| r.sd_param("id")))
                .collect();
            if ids.is_subset(&seen) || Instant::now() >= deadline {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGKILL now; tokio reaps the process in the background.
            let _ = c.start_kill();
        }
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral UDP port")
}
