//! `register_sinks!`: the one list of sink types, from which the enum of
//! sink configs and its dispatch are generated.

/// Generates `SinkKind` (one variant per registered [`SinkType`]), `KINDS`,
/// `kind()` and `component()` (see `config::kinds_enum!`): the keys of a
/// sink's type, by `type`. Each line is `Variant(module::ConfigType)`;
/// `KINDS` (and so the list of error messages) keeps the order of the lines.
///
/// [`SinkType`]: super::SinkType
macro_rules! register_sinks {
    ($($line:tt)*) => {
        $crate::config::kinds_enum! { SinkKind: SinkType as AnySink, $($line)* }
    };
}

pub(super) use register_sinks;
