//! What the source and sink registries share: from one list of component
//! types, the enum of their configs, `KINDS`, reading by `type`, and
//! `kind()`.

/// Generates enum `$name` (one variant per line `Variant(ConfigType)`, each
/// config implementing `$component`, whose `KIND` is its `type` value),
/// `KINDS` in the order of the lines, a compile-time check that no `type`
/// is registered twice, `read_kind()`, `kind()`, and `component()`: the
/// config as `&dyn $dyn` (the object-safe half of `$component`), so
/// dispatch is written once instead of as one match per method.
macro_rules! kinds_enum {
    (
        $(#[$meta:meta])*
        $name:ident: $component:path as $dyn:path,
        $($variant:ident($config:ty)),+ $(,)?
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug)]
        #[allow(clippy::large_enum_variant)] // built once at startup
        pub enum $name {
            $($variant($config),)+
        }

        /// The `type` of every one this build provides, in registration order.
        pub const KINDS: &[&str] = &[$(<$config as $component>::KIND,)+];
        const _: () = assert!(
            $crate::config::all_distinct(KINDS),
            concat!("a type is registered twice in ", stringify!($name))
        );

        impl $name {
            /// Reads the section at `path` as the registered type `kind`,
            /// or `None` when no type of that name is registered.
            fn read_kind(
                kind: &str,
                fig: &figment::Figment,
                path: &str,
            ) -> Option<Result<Self, Vec<$crate::config::Problem>>> {
                $(
                    if kind == <$config as $component>::KIND {
                        let read = <$config as $component>::read(fig, path);
                        return Some(read.map($name::$variant));
                    }
                )+
                None
            }

            /// The `type` this one was configured with.
            pub fn kind(&self) -> &'static str {
                match self {
                    $($name::$variant(_) => <$config as $component>::KIND,)+
                }
            }

            /// The configured component, whatever its type.
            fn component(&self) -> &dyn $dyn {
                match self {
                    $($name::$variant(c) => c,)+
                }
            }
        }
    };
}

pub(crate) use kinds_enum;
