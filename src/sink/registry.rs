//! `register_sinks!`: the one list of sink types, from which the enum of
//! sink configs and its dispatch are generated.

/// Generates `SinkKind` (one variant per registered [`SinkType`]), `KINDS`
/// and `kind()` (see `config::kinds_enum!`), and the methods that read,
/// validate and build a sink by its `type`.
/// Each line is `Variant(module::ConfigType)`; `KINDS` (and so the list of
/// error messages) keeps the order of the lines.
///
/// [`SinkType`]: super::SinkType
macro_rules! register_sinks {
    ($($variant:ident($config:ty)),+ $(,)?) => {
        $crate::config::kinds_enum! {
            /// The keys of a sink's type, by `type`.
            SinkKind: $crate::sink::SinkType, "a sink type is registered twice",
            $($variant($config)),+
        }

        impl SinkKind {
            fn validate(
                &self,
                path: &str,
                common: &$crate::sink::SinkCommon,
                problems: &mut $crate::config::Problems,
            ) {
                match self {
                    $(SinkKind::$variant(c) => {
                        $crate::sink::SinkType::validate(c, path, common, problems)
                    })+
                }
            }

            fn build(
                &self,
                common: &$crate::sink::SinkCommon,
                ctx: $crate::sink::SinkContext,
            ) -> anyhow::Result<Box<dyn $crate::sink::Sink>> {
                match self {
                    $(SinkKind::$variant(c) => $crate::sink::SinkType::build(c, common, ctx),)+
                }
            }
        }
    };
}

pub(super) use register_sinks;
