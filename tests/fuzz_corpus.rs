//! Replays the fuzz seeds (`fuzz/seeds/<target>/`) and deterministic
//! mutations of them through the same entry points the `cargo fuzz` targets
//! use, so every CI run exercises the parsers and encoders with hostile
//! input even where the fuzzer itself cannot run.
//!
//! Needs the `fuzzing` feature (`cargo test --all-features`).
#![cfg(feature = "fuzzing")]

use std::path::Path;

use auditrelay::fuzzing;

/// A small deterministic PRNG (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\n",
    b"\r",
    b"\0",
    b"\xff",
    b"null",
    b"\"values\"",
    b"\"next_page_token\"",
    b"\"request_id\"",
    b"1e999",
    b"-0",
    b"\"\\ud800\"",
    b"=",
    b"[sinks.x]",
    b"type = \"webhook\"",
    b"\"\"\"",
    b"|",
    b"^",
    b"\t",
    b"\\n",
    b"\xff",
    b"\xe2\x98\x83",
    b"\"logs\"",
    b"\"entries\"",
    b"\"data\"",
    b"\"csv\"",
    b"\n\n",
    b"253402300800000",
    b"\"0000-01-01T00:00:00+23:59\"",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let i = rng.below(d.len());
                d.truncate(i);
            }
            2 => {
                let i = rng.below(d.len() + 1);
                let ins = INTERESTING[rng.below(INTERESTING.len())];
                d.splice(i..i, ins.iter().copied());
            }
            3 if d.len() > 1 => {
                let (a, b) = (rng.below(d.len()), rng.below(d.len()));
                let (a, b) = (a.min(b), a.max(b));
                let chunk = d[a..b].to_vec();
                d.splice(b..b, chunk);
            }
            _ if !d.is_empty() => {
                let i = rng.below(d.len());
                d.remove(i);
            }
            _ => {}
        }
    }
    d
}

fn replay(target: &str, run: fn(&[u8]), mutations: usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| std::fs::read(e.path()).expect("read seed"))
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds.push(Vec::new());
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for seed in &seeds {
        run(seed);
    }
    for _ in 0..mutations {
        let seed = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, seed);
        run(&input);
    }
}

#[test]
fn veza_page_parser_survives_hostile_pages() {
    replay("veza_page", fuzzing::veza_page, 20_000);
}

#[test]
fn config_loader_survives_hostile_text() {
    replay("config_loader", fuzzing::config_text, 3_000);
}

#[test]
fn encoders_keep_one_line_per_event() {
    replay("ndjson_encoder", fuzzing::encoders, 20_000);
}

#[test]
fn quickztna_parsers_survive_hostile_answers() {
    replay("quickztna_page", fuzzing::quickztna_page, 10_000);
}

#[test]
fn quickztna_csv_rows_become_objects_alone_and_in_an_answer() {
    replay("quickztna_csv", fuzzing::quickztna_csv, 10_000);
}

#[test]
fn certifyclouds_parser_survives_hostile_pages() {
    replay("certifyclouds_page", fuzzing::certifyclouds_page, 10_000);
}

#[test]
fn http_pull_parser_follows_only_valid_cursors() {
    replay("http_pull_page", fuzzing::http_pull_page, 10_000);
}

#[test]
fn veza_list_parser_survives_hostile_pages() {
    replay("veza_list_page", fuzzing::veza_list_page, 10_000);
}

#[test]
fn webhook_in_bodies_keep_each_event_byte_for_byte() {
    replay("webhook_in_body", fuzzing::webhook_in_body, 10_000);
}

#[test]
fn syslog_frames_read_back_valid_whatever_the_event() {
    replay("syslog_encoder", fuzzing::syslog_encoder, 10_000);
}
