//! `register_sinks!`: the one list of sink types, from which the enum of
//! sink configs and its dispatch are generated.

/// Generates `SinkKind` (one variant per registered [`SinkType`]), `KINDS`,
/// and the methods that read, validate and build a sink by its `type`.
/// Each line is `Variant(module::ConfigType)`; `KINDS` (and so the list of
/// error messages) keeps the order of the lines.
///
/// [`SinkType`]: super::SinkType
macro_rules! register_sinks {
    ($($variant:ident($config:ty)),+ $(,)?) => {
        /// The keys of a sink's type, by `type`.
        #[derive(Clone, Debug)]
        #[allow(clippy::large_enum_variant)] // built once at startup
        pub enum SinkKind {
            $($variant($config),)+
        }

        /// The `type` of every sink this build provides, in registration order.
        pub const KINDS: &[&str] = &[$(<$config as $crate::sink::SinkType>::KIND,)+];
        const _: () = assert!(
            $crate::config::all_distinct(KINDS),
            "a sink type is registered twice"
        );

        impl SinkKind {
            /// Reads the keys of type `kind` of the section at `path`, or
            /// `None` when no sink of that type is registered.
            fn read(
                kind: &str,
                fig: &figment::Figment,
                path: &str,
            ) -> Option<Result<Self, Vec<$crate::config::Problem>>> {
                $(
                    if kind == <$config as $crate::sink::SinkType>::KIND {
                        let read = <$config as $crate::sink::SinkType>::read(fig, path);
                        return Some(read.map(SinkKind::$variant));
                    }
                )+
                None
            }

            /// The `type` this sink was configured with.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(SinkKind::$variant(_) => <$config as $crate::sink::SinkType>::KIND,)+
                }
            }

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
