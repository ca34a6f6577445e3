//! `auditrelay probe URL`: the container HEALTHCHECK (the image has no shell
//! or curl).

use std::process::ExitCode;
use std::time::Duration;

use super::with_runtime;

/// Exit 0 when `url` answers 2xx within 5 s.
pub fn run(url: &str) -> ExitCode {
    with_runtime(|| async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build();
        let answered = match client {
            Ok(c) => c.get(url).send().await.map(|r| r.status().is_success()),
            Err(e) => Err(e),
        };
        match answered {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                eprintln!("{url}: not healthy");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("{url}: {}", auditrelay::http::describe_error(e));
                ExitCode::FAILURE
            }
        }
    })
}
