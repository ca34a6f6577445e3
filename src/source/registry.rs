//! `register_sources!`: the one list of source types, from which the
//! `[sources.NAME]` config enum and its dispatch are generated.

/// Generates `SourceConfig` (one variant per registered [`SourceType`]),
/// `KINDS` and `kind()` (see `config::kinds_enum!`), and the methods that
/// read, validate and build a source by its `type`. Each line is
/// `Variant(module::ConfigType)`; `KINDS` (and so the list of error
/// messages) keeps the order of the lines.
///
/// [`SourceType`]: super::SourceType
macro_rules! register_sources {
    ($($variant:ident($config:ty)),+ $(,)?) => {
        $crate::config::kinds_enum! {
            /// `[sources.NAME]`, by `type`.
            SourceConfig: $crate::source::SourceType, "a source type is registered twice",
            $($variant($config)),+
        }

        impl SourceConfig {
            /// Reads `[sources.NAME]` at `path` as the type its `type` key names.
            pub fn from_figment(
                fig: &figment::Figment,
                path: &str,
            ) -> Result<Self, Vec<$crate::config::Problem>> {
                let kind = $crate::config::read_type(fig, path, KINDS)?;
                Self::read_kind(&kind, fig, path).unwrap_or_else(|| {
                    Err($crate::config::type_problem(
                        path,
                        format!(
                            "unknown source type \"{kind}\" (available: {})",
                            KINDS.join(", ")
                        ),
                    ))
                })
            }

            pub fn validate(&self, path: &str, problems: &mut $crate::config::Problems) {
                match self {
                    $(SourceConfig::$variant(c) => {
                        $crate::source::SourceType::validate(c, path, problems)
                    })+
                }
            }

            /// The state `auditrelay checkpoint set` writes for this source type.
            pub fn manual_checkpoint(
                &self,
                token: Option<String>,
                time: Option<chrono::DateTime<chrono::Utc>>,
            ) -> Result<Vec<u8>, String> {
                if token.is_some() == time.is_some() {
                    return Err("give exactly one of --token and --time".into());
                }
                match self {
                    $(SourceConfig::$variant(c) => {
                        $crate::source::SourceType::manual_checkpoint(c, token, time)
                    })+
                }
            }

            pub fn build(
                &self,
                ctx: $crate::source::SourceContext,
            ) -> anyhow::Result<Box<dyn $crate::source::Source>> {
                match self {
                    $(SourceConfig::$variant(c) => $crate::source::SourceType::build(c, ctx),)+
                }
            }
        }
    };
}

pub(super) use register_sources;
