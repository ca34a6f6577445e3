//! `serde_defaults!`: the functions `#[serde(default = "…")]` names, one
//! line each, instead of a three-line function per default.

/// Generates each `fn NAME() -> TYPE = VALUE;` line as a function returning
/// `VALUE`, for `#[serde(default = "NAME")]`:
///
/// ```ignore
/// serde_defaults! {
///     fn default_method() -> String = "GET".into();
///     pub fn default_page_size() -> u32 = 100;
/// }
/// ```
macro_rules! serde_defaults {
    ($($(#[$meta:meta])* $vis:vis fn $name:ident() -> $ty:ty = $value:expr;)*) => {
        $($(#[$meta])* $vis fn $name() -> $ty { $value })*
    };
}

pub(crate) use serde_defaults;
