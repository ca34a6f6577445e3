//! Finds the field names of a `Deserialize` struct, so that unknown keys can
//! be reported even where a section is read as two structs (shared sink keys
//! plus the keys of one sink type) and serde's `deny_unknown_fields` cannot
//! see the whole section.

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// The keys `T` accepts, as serde's derive lists them.
pub fn struct_fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldCapture(&mut fields));
    fields
}

struct FieldCapture<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldCapture<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("field capture"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("field capture"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Example {
        url: String,
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        page_size: u32,
    }

    #[test]
    fn lists_serde_names() {
        assert_eq!(struct_fields::<Example>(), &["url", "type", "page_size"]);
    }
}
