//! How pull-source sections are read: per-source defaults of the shared
//! keys, unknown keys and bad values by key path.

use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Figment;

use crate::source::{Paths, SourceConfig};

fn read(toml: &str) -> Result<SourceConfig, Vec<String>> {
    let fig = Figment::from(Toml::string(toml));
    SourceConfig::from_figment(&fig, "sources.s")
        .map_err(|list| list.iter().map(ToString::to_string).collect())
}

const AUTH: &str = "url = \"https://api.example\"\ntoken_env = \"T\"\n";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn each_source_keeps_its_own_defaults() {
    let section =
        |kind: &str, extra: &str| format!("[sources.s]\ntype = \"{kind}\"\n{AUTH}{extra}");
    let Ok(SourceConfig::Veza(v)) = read(&section("veza", "")) else {
        panic!("veza")
    };
    let c = &v.common;
    assert_eq!(
        (
            c.poll_interval,
            c.overlap,
            c.recent_ids,
            c.timeout,
            c.auth_retry
        ),
        (secs(5), secs(300), 5000, secs(30), secs(30))
    );
    assert_eq!(
        (c.rate_limit_wait, c.rate_limit_jitter),
        (secs(60), secs(5))
    );
    assert_eq!(c.start_at, "-24h");
    assert_eq!(c.id_path, Paths::of(&["request_id", "id"]));
    assert_eq!(
        c.time_path,
        Paths::of(&["persisted_at", "ended_at", "timestamp"])
    );
    assert_eq!(v.page_size, 1000);

    let Ok(SourceConfig::VezaList(l)) = read(&section("veza_list", "")) else {
        panic!("veza_list")
    };
    assert_eq!(l.common.time_path, Paths::of(&["ended_at", "timestamp"]));
    assert_eq!(l.common.timeout, secs(30));

    let Ok(SourceConfig::Quickztna(q)) = read(&section("quickztna", "org_id = \"o\"\n")) else {
        panic!("quickztna")
    };
    let c = &q.common;
    assert_eq!(
        (
            c.poll_interval,
            c.overlap,
            c.recent_ids,
            c.timeout,
            c.auth_retry
        ),
        (secs(60), secs(600), 50_000, secs(120), secs(60))
    );
    assert_eq!(c.time_path, Paths::One("created_at".into()));
    assert_eq!(c.type_path, Paths::One("action".into()));

    let Ok(SourceConfig::Certifyclouds(cc)) = read(&section("certifyclouds", "")) else {
        panic!("certifyclouds")
    };
    let c = &cc.common;
    assert_eq!(
        (c.poll_interval, c.overlap, c.recent_ids, c.timeout),
        (secs(30), secs(300), 50_000, secs(30))
    );
    assert_eq!(c.id_path, Paths::One("id".into()));
    assert_eq!(c.type_path, Paths::One("event_type".into()));

    let pull = "path = \"/e\"\npagination = { mode = \"none\" }\n";
    let Ok(SourceConfig::HttpPull(h)) = read(&section("http_pull", pull)) else {
        panic!("http_pull")
    };
    let c = &h.common;
    assert_eq!((c.poll_interval, c.recent_ids), (secs(30), 50_000));
    assert_eq!(c.id_path, Paths::of(&["event_id", "id"]));
    assert_eq!(c.type_path, Paths::of(&["action", "event_type", "type"]));
}

#[test]
fn set_keys_override_the_defaults() {
    let toml = format!(
        "[sources.s]\ntype = \"veza\"\n{AUTH}poll_interval = \"9s\"\nrecent_ids = 7\nid_path = \"uid\"\npage_size = 10\n"
    );
    let Ok(SourceConfig::Veza(v)) = read(&toml) else {
        panic!("veza")
    };
    assert_eq!((v.common.poll_interval, v.common.recent_ids), (secs(9), 7));
    assert_eq!(v.common.id_path, Paths::One("uid".into()));
    assert_eq!(v.page_size, 10);
}

/// Serde stops a struct at its first bad value: the shared keys and the
/// source's own are two structs, so one of each is reported.
#[test]
fn problems_name_their_key_path_once() {
    let toml = format!(
        "[sources.s]\ntype = \"certifyclouds\"\n{AUTH}colour = 1\npage_size = \"x\"\n[sources.s.retry]\ninitial = \"never\"\n"
    );
    let problems = read(&toml).unwrap_err();
    let with = |key: &str| problems.iter().filter(|p| p.starts_with(key)).count();
    assert_eq!(with("sources.s.colour: unknown key"), 1, "{problems:?}");
    assert_eq!(with("sources.s.page_size:"), 1, "{problems:?}");
    assert_eq!(with("sources.s.retry.initial:"), 1, "{problems:?}");
}

#[test]
fn a_source_without_a_window_refuses_the_window_keys() {
    let toml = format!(
        "[sources.s]\ntype = \"veza_list\"\n{AUTH}poll_interval = \"bad\"\noverlap = \"5m\"\n"
    );
    let problems = read(&toml).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("sources.s.poll_interval: unknown key")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("sources.s.overlap: unknown key")),
        "{problems:?}"
    );
    assert_eq!(problems.len(), 2, "one problem per key: {problems:?}");
}

#[test]
fn a_missing_url_is_reported_by_path() {
    let problems = read("[sources.s]\ntype = \"veza\"\ntoken_env = \"T\"\n").unwrap_err();
    assert!(
        problems.iter().any(|p| p.starts_with("sources.s.url")),
        "{problems:?}"
    );
}
