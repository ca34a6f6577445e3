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

use std::collections::BTreeSet;

use auditrelay::config::{struct_fields, RetryConfig, TlsConfig};
use auditrelay::config_file::{PipelineConfig, ServerConfig, TopLevel};
use auditrelay::sink::{self, BatchConfig, FilterConfig, SinkCommon, SinkConfig};
use auditrelay::source::pull::{PullConfig, PullKind};
use auditrelay::source::{self, SourceConfig};
use figment::providers::{Format, Toml};
use figment::Figment;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor,
};

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
        // Tables documented once and only named by their key elsewhere.
        section::<RetryConfig>("`retry` table"),
        section::<TlsConfig>("`tls` table"),
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

/// A key path below a section's root and the struct that declares its last
/// segment.
#[derive(Debug)]
struct Key {
    path: String,
    owner: &'static str,
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

// ---- Walking a Deserialize type ----------------------------------------
//
// `struct_fields` gives the keys of one struct. To reach nested tables the
// walker deserializes the type again for each key path, from a deserializer
// that offers just that path and reports what the derive asks for at its
// end: a struct (its name and keys), a map, or anything else (a leaf).

/// Every key path below `T`, descending into nested structs except those
/// whose name is in `stop` (they have a section of their own), and into the
/// values of maps as `NAME`.
fn walk<T: DeserializeOwned>(stop: &BTreeSet<&'static str>) -> Vec<Key> {
    let Shape::Struct(root, fields) = shape_at::<T>(&[]) else {
        panic!("{} is not a struct", std::any::type_name::<T>());
    };
    let mut keys = Vec::new();
    let mut todo: Vec<(Vec<String>, &'static str, &'static [&'static str])> =
        vec![(Vec::new(), root, fields)];
    while let Some((prefix, owner, fields)) = todo.pop() {
        assert!(
            prefix.len() < 8,
            "{owner}: nesting deeper than 8 at {prefix:?}"
        );
        for field in fields {
            let mut path = prefix.clone();
            path.push(field.to_string());
            keys.push(Key {
                path: path.join("."),
                owner,
            });
            let mut at = path.clone();
            let mut shape = shape_at::<T>(&at);
            while shape == Shape::Map {
                at.push("NAME".into());
                shape = shape_at::<T>(&at);
            }
            if let Shape::Struct(name, fields) = shape {
                if !stop.contains(name) {
                    todo.push((at, name, fields));
                }
            }
        }
    }
    keys.sort_by(|a, b| a.path.cmp(&b.path));
    keys
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    Leaf,
    Map,
    Struct(&'static str, &'static [&'static str]),
}

fn shape_at<T: DeserializeOwned>(path: &[String]) -> Shape {
    let mut found = Shape::Leaf;
    let _ = T::deserialize(Probe {
        path,
        found: &mut found,
    });
    found
}

struct Probe<'a> {
    path: &'a [String],
    found: &'a mut Shape,
}

fn stop() -> de::value::Error {
    de::Error::custom("probe ends here")
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        *self.found = Shape::Leaf;
        Err(stop())
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.path.split_first() {
            None => {
                *self.found = Shape::Struct(name, fields);
                Err(stop())
            }
            Some((key, rest)) => visitor.visit_map(OneEntry::new(key, rest, self.found)),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.path.split_first() {
            None => {
                *self.found = Shape::Map;
                Err(stop())
            }
            Some((key, rest)) => visitor.visit_map(OneEntry::new(key, rest, self.found)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    /// A list's elements are described like the list's key.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_seq(OneElement(Some(self)))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct tuple tuple_struct enum identifier
        ignored_any
    }
}

/// A map of one entry: the next key of the path, then a probe for the rest.
struct OneEntry<'a> {
    key: Option<&'a str>,
    value: Option<Probe<'a>>,
}

impl<'a> OneEntry<'a> {
    fn new(key: &'a str, rest: &'a [String], found: &'a mut Shape) -> Self {
        OneEntry {
            key: Some(key),
            value: Some(Probe { path: rest, found }),
        }
    }
}

impl<'de> MapAccess<'de> for OneEntry<'_> {
    type Error = de::value::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.key.take() {
            Some(key) => seed
                .deserialize(de::value::StrDeserializer::<Self::Error>::new(key))
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        seed.deserialize(self.value.take().ok_or_else(stop)?)
    }
}

struct OneElement<'a>(Option<Probe<'a>>);

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = de::value::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        match self.0.take() {
            Some(probe) => seed.deserialize(probe).map(Some),
            None => Ok(None),
        }
    }
}

/// Prints every key path per section (`cargo test --test config_reference
/// -- --ignored --nocapture dump`): a start for a new section's table.
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
