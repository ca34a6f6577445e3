//! docs/configuration.md is the reference of every config key. This test
//! walks the config types, nested tables included, and fails when a key has
//! no row in its section of the reference, or a row names a key the code no
//! longer has.
//!
//! A new source or sink type: one line in `sections()` below (the test says
//! so when it is missing) and a `### Source `KIND`` or `### Sink `KIND``
//! section in the reference. Keys a component reads from a second struct
//! (as every sink reads `SinkCommon`) get a section of their own, and the
//! component's section names them in `sharing(...)` so rows there may
//! repeat them (per-type defaults). A pull source (`PullConfig<K>`) lists
//! in its own section both the keys every pull source shares (as
//! `PullConfig::<K>::shared_keys()` gives them, window keys only where the
//! source takes them) and its own (`K`, walked like any struct).

mod walk;

use std::collections::BTreeSet;

use auditrelay::config::{struct_fields, RetryConfig, TlsConfig};
use auditrelay::config_file::{PipelineConfig, ServerConfig, TopLevel};
use auditrelay::sink::{self, BatchConfig, FilterConfig, SinkCommon, SinkConfig};
use auditrelay::source::pull::{PullConfig, PullKind};
use auditrelay::source::{self, SourceConfig};
use figment::providers::{Format, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use walk::{shape_at, walk, Key, Shape};

const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");

/// Every section the reference must have, with the config type whose keys
/// it lists. A new component type is one line in `sources` or `sinks`.
fn sections() -> Vec<Section> {
    use sink::{file, kafka, splunk_hec, stdout, syslog, webhook};
    use source::{certifyclouds, demo, http_pull, quickztna, veza, veza_list, webhook_in};
    let mut list = vec![
        section::<TopLevel>("Top level"),
        section::<ServerConfig>("`[server]`"),
        section::<PipelineConfig>("`[pipeline]`"),
        section::<auditrelay::cluster::ClusterConfig>("`[cluster]`"),
        // Tables documented once and only named by their key elsewhere.
        section::<RetryConfig>("`retry` table"),
        section::<TlsConfig>("`tls` table"),
        section::<auditrelay::oauth2::OAuth2Config>("`oauth2` table"),
        section::<BatchConfig>("`batch` table (sinks)"),
        section::<FilterConfig>("`filter` table (sinks)"),
        section::<SinkCommon>("Keys of every sink").sharing(["type"]),
    ];
    let sources = [
        pull_source_type::<veza::VezaConfig>("veza"),
        pull_source_type::<veza_list::VezaListConfig>("veza_list"),
        pull_source_type::<quickztna::QuickztnaConfig>("quickztna"),
        pull_source_type::<certifyclouds::CertifycloudsConfig>("certifyclouds"),
        pull_source_type::<http_pull::HttpPullConfig>("http_pull"),
        source_type::<webhook_in::WebhookInConfig>("webhook_in"),
        source_type::<demo::DemoConfig>("demo"),
    ];
    let sinks = [
        sink_type::<stdout::StdoutConfig>("stdout"),
        sink_type::<file::FileConfig>("file"),
        sink_type::<kafka::KafkaConfig>("kafka"),
        sink_type::<webhook::WebhookConfig>("webhook"),
        sink_type::<splunk_hec::SplunkHecConfig>("splunk_hec"),
        sink_type::<syslog::SyslogConfig>("syslog"),
    ];
    list.extend(sources);
    list.extend(sinks);
    list
}

/// A heading of the reference and the type whose keys it must list.
struct Section {
    heading: String,
    /// Serde's name of the root struct, so tables with a section of their
    /// own are named where they are used, not listed again.
    root: &'static str,
    /// All key paths below the root, given the roots not to descend into.
    walk: fn(&BTreeSet<&'static str>) -> Vec<Key>,
    /// Keys a row of this section may also name: `type`, and for a sink the
    /// keys every sink takes (their per-sink defaults are written there).
    shared: BTreeSet<String>,
}

fn section<T: DeserializeOwned>(heading: &str) -> Section {
    let Shape::Struct(root, _) = shape_at::<T>(&[]) else {
        panic!("the type of section {heading} is not a struct");
    };
    Section {
        heading: heading.to_string(),
        root,
        walk: walk::<T>,
        shared: BTreeSet::new(),
    }
}

/// `type` picks the component; the loader accepts it beside the keys of
/// the type's struct.
fn source_type<T: DeserializeOwned>(kind: &str) -> Section {
    section::<T>(&format!("Source `{kind}`")).sharing(["type"])
}

/// A pull source's config: the keys it shares with every pull source, as
/// the code lists them, and its own struct.
trait PullSource {
    type Own: DeserializeOwned;
    fn shared_keys() -> Vec<&'static str>;
}

impl<K: PullKind> PullSource for PullConfig<K> {
    type Own = K;
    fn shared_keys() -> Vec<&'static str> {
        PullConfig::<K>::shared_keys()
    }
}

/// The section of a pull source lists its shared keys and its own.
fn pull_source_type<C: PullSource>(kind: &str) -> Section {
    Section {
        walk: walk_pull::<C>,
        ..source_type::<C::Own>(kind)
    }
}

/// The shared keys of pull source `C` (their tables, `retry` and `tls`,
/// have sections of their own), then its own keys walked as a struct.
fn walk_pull<C: PullSource>(stop: &BTreeSet<&'static str>) -> Vec<Key> {
    let mut keys: Vec<Key> = C::shared_keys()
        .into_iter()
        .map(|k| Key {
            path: k.to_string(),
            owner: "PullCommon",
        })
        .collect();
    keys.extend(walk::<C::Own>(stop));
    keys.sort_by(|a, b| a.path.cmp(&b.path));
    keys
}

fn sink_type<T: DeserializeOwned>(kind: &str) -> Section {
    section::<T>(&format!("Sink `{kind}`"))
        .sharing(["type"])
        .sharing(struct_fields::<SinkCommon>().iter().copied())
}

impl Section {
    fn sharing<'a>(mut self, keys: impl IntoIterator<Item = &'a str>) -> Self {
        self.shared.extend(keys.into_iter().map(str::to_string));
        self
    }
}

#[test]
fn every_config_key_is_in_the_reference_and_every_documented_key_exists() {
    let text = std::fs::read_to_string(REFERENCE).expect("read docs/configuration.md");
    let problems = out_of_step(&text);
    assert!(
        problems.is_empty(),
        "{REFERENCE} is out of step with the config types:\n  {}",
        problems.join("\n  ")
    );
}

/// Deleting a row of a pull source's section, a shared key's or its own,
/// is noticed and named: the walker sees both halves of `PullConfig<K>`.
#[test]
fn a_missing_row_of_a_pull_source_is_named() {
    let text = std::fs::read_to_string(REFERENCE).expect("read docs/configuration.md");
    for (section, key, owner) in [
        ("Source `veza`", "overlap", "PullCommon"),
        ("Source `veza`", "next_token_path", "Veza"),
        ("Source `http_pull`", "pagination.mode", "PaginationConfig"),
    ] {
        let edited = without_row(&text, section, key);
        assert_ne!(edited, text, "no row of `{key}` in section {section}");
        let problems = out_of_step(&edited);
        let expected = format!("{owner} key `{key}` has no row in section \"{section}\"");
        assert!(
            problems.iter().any(|p| p == &expected),
            "deleting the row of `{key}` from {section} is not reported as {expected:?}: {problems:?}"
        );
    }
    // A window key of a source without a window is not one of its keys.
    let with_window_row = text.replacen(
        "### Source `veza_list`\n",
        "### Source `veza_list`\n| `overlap` | duration | | |\n",
        1,
    );
    assert!(
        out_of_step(&with_window_row)
            .iter()
            .any(|p| p.contains("\"Source `veza_list`\" documents `overlap`")),
        "a documented window key of veza_list went unnoticed"
    );
}

/// `text` without the table rows naming `key` in the section `heading`.
fn without_row(text: &str, heading: &str, key: &str) -> String {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            inside = line.trim_start_matches('#').trim() == heading;
        }
        let first_cell = line.strip_prefix('|').and_then(|r| r.split('|').next());
        if inside && first_cell.is_some_and(|c| c.contains(&format!("`{key}`"))) {
            continue;
        }
        out.push(line);
    }
    out.join("\n") + "\n"
}

/// Each key without a row in its section, and each row naming no key.
fn out_of_step(text: &str) -> Vec<String> {
    let sections = sections();
    let roots: BTreeSet<&'static str> = sections.iter().map(|s| s.root).collect();
    let mut missing = Vec::new();
    let mut stale = Vec::new();
    for s in &sections {
        let Some(rows) = documented_keys(text, &s.heading) else {
            missing.push(format!(
                "{}: no section headed \"{}\" in {REFERENCE}",
                s.root, s.heading
            ));
            continue;
        };
        let keys = (s.walk)(&roots);
        for key in &keys {
            if !rows.contains(&key.path) {
                missing.push(format!(
                    "{} key `{}` has no row in section \"{}\"",
                    key.owner, key.path, s.heading
                ));
            }
        }
        for row in &rows {
            if !keys.iter().any(|k| &k.path == row) && !s.shared.contains(row) {
                stale.push(format!(
                    "section \"{}\" documents `{row}`, which {} does not have",
                    s.heading, s.root
                ));
            }
        }
    }
    missing.extend(stale);
    missing
}

/// Every source and sink type the loader accepts has a line in
/// `sections()`, and every component section of the reference is one of them.
#[test]
fn every_component_type_has_a_section() {
    let text = std::fs::read_to_string(REFERENCE).expect("read docs/configuration.md");
    let listed: BTreeSet<String> = sections().into_iter().map(|s| s.heading).collect();
    let mut problems = Vec::new();
    for (what, kinds) in [
        ("Source", available_kinds("sources")),
        ("Sink", available_kinds("sinks")),
    ] {
        assert!(!kinds.is_empty(), "no {what} type found");
        for kind in kinds {
            let heading = format!("{what} `{kind}`");
            if !listed.contains(&heading) {
                problems.push(format!(
                    "{what} type `{kind}` is accepted by the loader but missing from sections() in {}",
                    file!()
                ));
            }
        }
    }
    for line in text.lines() {
        let heading = line.trim_start_matches('#').trim();
        let is_component = line.starts_with('#')
            && (heading.starts_with("Source `") || heading.starts_with("Sink `"));
        if is_component && !listed.contains(heading) {
            problems.push(format!(
                "{REFERENCE} has a section \"{heading}\" that no line of sections() checks"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The walker finds nested tables, and a key missing from a section is
/// reported with its struct and path.
#[test]
fn walker_reports_nested_keys_with_their_struct() {
    let roots = BTreeSet::from(["RetryConfig", "TlsConfig"]);
    let keys = walk_pull::<source::http_pull::HttpPullConfig>(&roots);
    let find = |p: &str| keys.iter().find(|k| k.path == p);
    let mode = find("pagination.mode").expect("pagination.mode is walked");
    assert_eq!(mode.owner, "PaginationConfig");
    let overlap = find("overlap").expect("a shared key is walked");
    assert_eq!(overlap.owner, "PullCommon");
    assert!(
        find("retry").is_some(),
        "a table with its own section is named"
    );
    assert!(find("retry.initial").is_none(), "and not descended into");

    let doc = "### Source `x`\n| key | type |\n|---|---|\n| `url` / `retry` | x |\n### Next\n| `pagination.mode` | y |\n";
    let rows = documented_keys(doc, "Source `x`").expect("section found");
    assert_eq!(
        rows,
        BTreeSet::from(["url".to_string(), "retry".to_string()])
    );
}

/// The source or sink types the loader accepts, from its own error message
/// for an unknown type (the one list the code keeps of them).
fn available_kinds(part: &str) -> Vec<String> {
    let fig = Figment::from(Toml::string(&format!(
        "[{part}.x]\ntype = \"no such type\"\n"
    )));
    let path = format!("{part}.x");
    let problems = if part == "sources" {
        SourceConfig::from_figment(&fig, &path).err()
    } else {
        SinkConfig::from_figment(&fig, &path).err()
    }
    .expect("an unknown type is refused");
    let message = &problems[0].message;
    let list = message
        .split("available: ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no list of available types in {message:?}"));
    list.split(',').map(|k| k.trim().to_string()).collect()
}

/// The key names in the first cell of every table row of the section under
/// `heading` (up to the next heading): each `code span` there is one key.
fn documented_keys(text: &str, heading: &str) -> Option<BTreeSet<String>> {
    let mut lines = text.lines();
    lines.find(|l| l.starts_with('#') && l.trim_start_matches('#').trim() == heading)?;
    let mut keys = BTreeSet::new();
    for line in lines.take_while(|l| !l.starts_with('#')) {
        let Some(first_cell) = line.strip_prefix('|').and_then(|r| r.split('|').next()) else {
            continue;
        };
        keys.extend(first_cell.split('`').skip(1).step_by(2).map(str::to_string));
    }
    Some(keys)
}

/// Prints every key path per section (`cargo test --test integration
/// config_reference::dump -- --ignored --nocapture`): a start for a new
/// section's table.
#[test]
#[ignore]
fn dump() {
    let sections = sections();
    let roots: BTreeSet<&'static str> = sections.iter().map(|s| s.root).collect();
    for s in &sections {
        println!("## {}", s.heading);
        for k in (s.walk)(&roots) {
            println!("  {:40} {}", k.path, k.owner);
        }
    }
}
