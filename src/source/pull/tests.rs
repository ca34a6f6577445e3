//! How pull-source sections are read: per-source defaults of the shared
//! keys, unknown keys and bad values by key path.

use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Figment;

use super::PullCommon;
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

/// The shared keys of a `kind` section holding only `url`, a token and
/// `extra`.
fn common(kind: &str, extra: &str) -> PullCommon {
    let toml = format!("[sources.s]\ntype = \"{kind}\"\n{AUTH}{extra}");
    match read(&toml).unwrap_or_else(|p| panic!("{kind}: {p:?}")) {
        SourceConfig::Veza(c) => c.common,
        SourceConfig::VezaList(c) => c.common,
        SourceConfig::Quickztna(c) => c.common,
        SourceConfig::Certifyclouds(c) => c.common,
        SourceConfig::HttpPull(c) => c.common,
        other => panic!("{} is not a pull source", other.kind()),
    }
}

/// The keys quickztna and http_pull cannot do without.
const ZTNA_KEYS: &str = "org_id = \"o\"\n";
const PULL_KEYS: &str = "path = \"/e\"\npagination = { mode = \"none\" }\n";

/// (poll_interval, overlap, recent_ids, timeout, auth_retry)
fn timing(c: &PullCommon) -> (Duration, Duration, usize, Duration, Duration) {
    (
        c.poll_interval,
        c.overlap,
        c.recent_ids,
        c.timeout,
        c.auth_retry,
    )
}

#[test]
fn each_source_keeps_its_own_defaults() {
    let c = common("veza", "");
    assert_eq!(timing(&c), (secs(5), secs(300), 5000, secs(30), secs(30)));
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

    let c = common("veza_list", "");
    assert_eq!(c.time_path, Paths::of(&["ended_at", "timestamp"]));
    assert_eq!((c.timeout, c.auth_retry), (secs(30), secs(30)));

    let one = |p: &str| Paths::One(p.into());
    let window_sources = [
        // (type, required keys, [poll, overlap, timeout, auth_retry] in s, type_path)
        ("quickztna", ZTNA_KEYS, [60, 600, 120, 60], one("action")),
        ("certifyclouds", "", [30, 300, 30, 30], one("event_type")),
        (
            "http_pull",
            PULL_KEYS,
            [30, 300, 30, 30],
            Paths::of(&["action", "event_type", "type"]),
        ),
    ];
    for (kind, keys, [poll, overlap, timeout, auth_retry], type_path) in window_sources {
        let c = common(kind, keys);
        let expected = [poll, overlap, timeout, auth_retry].map(secs);
        let got = [c.poll_interval, c.overlap, c.timeout, c.auth_retry];
        assert_eq!(
            (got, c.recent_ids, c.type_path),
            (expected, 50_000, type_path),
            "{kind}"
        );
    }
    assert_eq!(common("quickztna", ZTNA_KEYS).time_path, one("created_at"));
    assert_eq!(common("certifyclouds", "").id_path, one("id"));
    assert_eq!(
        common("http_pull", PULL_KEYS).id_path,
        Paths::of(&["event_id", "id"])
    );
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

/// The problems reading a `kind` section holding `url`, a token and
/// `extra` reports.
fn problems(kind: &str, extra: &str) -> Vec<String> {
    let toml = format!("[sources.s]\ntype = \"{kind}\"\n{AUTH}{extra}");
    match read(&toml) {
        Ok(_) => panic!("{kind} with {extra:?} was accepted"),
        Err(problems) => problems,
    }
}

/// How many of `problems` start with `key`.
fn reported(problems: &[String], key: &str) -> usize {
    problems.iter().filter(|p| p.starts_with(key)).count()
}

/// Serde stops a struct at its first bad value: the shared keys and the
/// source's own are two structs, so one of each is reported.
#[test]
fn problems_name_their_key_path_once() {
    let problems = problems(
        "certifyclouds",
        "colour = 1\npage_size = \"x\"\n[sources.s.retry]\ninitial = \"never\"\n",
    );
    let with = |key: &str| reported(&problems, key);
    assert_eq!(with("sources.s.colour: unknown key"), 1, "{problems:?}");
    assert_eq!(with("sources.s.page_size:"), 1, "{problems:?}");
    assert_eq!(with("sources.s.retry.initial:"), 1, "{problems:?}");
}

/// The problems of a `veza_list` source (one without a window) given a
/// bad `poll_interval` and `extra`, having checked that the window key is
/// refused as unknown.
fn window_key_refused(extra: &str) -> Vec<String> {
    let problems = problems("veza_list", &format!("poll_interval = \"bad\"\n{extra}"));
    assert!(
        reported(&problems, "sources.s.poll_interval: unknown key") > 0,
        "{problems:?}"
    );
    problems
}

#[test]
fn a_source_without_a_window_refuses_the_window_keys() {
    let problems = window_key_refused("overlap = \"5m\"\n");
    let with = |key: &str| reported(&problems, key);
    assert!(with("sources.s.overlap: unknown key") > 0, "{problems:?}");
    assert_eq!(problems.len(), 2, "one problem per key: {problems:?}");
}

#[test]
fn a_missing_url_is_reported_by_path() {
    let problems = read("[sources.s]\ntype = \"veza\"\ntoken_env = \"T\"\n").unwrap_err();
    assert!(reported(&problems, "sources.s.url") > 0, "{problems:?}");
}

/// A window key a source does not take is an unknown key, not a bad value
/// that hides the shared keys read after it (serde stops at the first).
#[test]
fn a_refused_window_key_hides_no_bad_shared_value() {
    let problems = window_key_refused("timeout = \"x\"\n");
    assert!(
        reported(&problems, "sources.s.timeout:") > 0,
        "the bad timeout went unreported: {problems:?}"
    );
}
