//! `register_sources!`: the one list of source types, from which the
//! `[sources.NAME]` config enum and its dispatch are generated.

use super::{ManualPosition, Source, SourceContext};
use crate::config::{read_type, type_problem, Problem, Problems};

/// Generates `SourceConfig` (one variant per registered [`SourceType`]),
/// `KINDS`, `kind()` and `component()` (see `config::kinds_enum!`). Each
/// line is `Variant(module::ConfigType)`; `KINDS` (and so the list of
/// error messages) keeps the order of the lines.
///
/// [`SourceType`]: super::SourceType
macro_rules! register_sources {
    ($($line:tt)*) => {
        $crate::config::kinds_enum! { SourceConfig: SourceType as AnySource, $($line)* }
    };
}

pub(super) use register_sources;

/// `[sources.NAME]`, by `type`.
impl super::SourceConfig {
    /// Reads `[sources.NAME]` at `path` as the type its `type` key names.
    pub fn from_figment(fig: &figment::Figment, path: &str) -> Result<Self, Vec<Problem>> {
        let kind = read_type(fig, path, super::KINDS)?;
        Self::read_kind(&kind, fig, path).unwrap_or_else(|| {
            let available = super::KINDS.join(", ");
            Err(type_problem(
                path,
                format!("unknown source type \"{kind}\" (available: {available})"),
            ))
        })
    }

    pub fn validate(&self, path: &str, problems: &mut Problems) {
        self.component().validate(path, problems)
    }

    /// The state `auditrelay checkpoint set` writes for this source type.
    pub fn manual_checkpoint(
        &self,
        token: Option<String>,
        time: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<u8>, String> {
        let at = match (token, time) {
            (Some(token), None) => ManualPosition::Token(token),
            (None, Some(time)) => ManualPosition::Time(time),
            _ => return Err("give exactly one of --token and --time".into()),
        };
        self.component().manual_checkpoint(at)
    }

    pub fn build(&self, ctx: SourceContext) -> anyhow::Result<Box<dyn Source>> {
        self.component().build(ctx)
    }
}
