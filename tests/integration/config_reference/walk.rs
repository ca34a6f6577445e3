//! Walking a Deserialize type: `struct_fields` gives the keys of one
//! struct. To reach nested tables the walker deserializes the type again
//! for each key path, from a deserializer that offers just that path and
//! reports what the derive asks for at its end: a struct (its name and
//! keys), a map, or anything else (a leaf).

use std::collections::BTreeSet;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor,
};

/// A key path below a section's root and the struct that declares its last
/// segment.
#[derive(Debug)]
pub(super) struct Key {
    pub(super) path: String,
    pub(super) owner: &'static str,
}

/// Every key path below `T`, descending into nested structs except those
/// whose name is in `stop` (they have a section of their own), and into the
/// values of maps as `NAME`.
pub(super) fn walk<T: DeserializeOwned>(stop: &BTreeSet<&'static str>) -> Vec<Key> {
    let Shape::Struct(root, fields) = shape_at::<T>(&[]) else {
        panic!("{} is not a struct", std::any::type_name::<T>());
    };
    let mut keys = Vec::new();
    let mut todo: Vec<(Vec<String>, &'static str, &'static [&'static str])> =
        vec![(Vec::new(), root, fields)];
    while let Some((prefix, owner, fields)) = todo.pop() {
        assert!(
            prefix.len() < 8,
            "{owner}: nesting deeper than 8 at {prefix:?}"
        );
        for field in fields {
            let mut path = prefix.clone();
            path.push(field.to_string());
            keys.push(Key {
                path: path.join("."),
                owner,
            });
            let mut at = path.clone();
            let mut shape = shape_at::<T>(&at);
            while shape == Shape::Map {
                at.push("NAME".into());
                shape = shape_at::<T>(&at);
            }
            if let Shape::Struct(name, fields) = shape {
                if !stop.contains(name) {
                    todo.push((at, name, fields));
                }
            }
        }
    }
    keys.sort_by(|a, b| a.path.cmp(&b.path));
    keys
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Shape {
    Leaf,
    Map,
    Struct(&'static str, &'static [&'static str]),
}

pub(super) fn shape_at<T: DeserializeOwned>(path: &[String]) -> Shape {
    let mut found = Shape::Leaf;
    let _ = T::deserialize(Probe {
        path,
        found: &mut found,
    });
    found
}

struct Probe<'a> {
    path: &'a [String],
    found: &'a mut Shape,
}

fn stop() -> de::value::Error {
    de::Error::custom("probe ends here")
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        *self.found = Shape::Leaf;
        Err(stop())
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.path.split_first() {
            None => {
                *self.found = Shape::Struct(name, fields);
                Err(stop())
            }
            Some((key, rest)) => visitor.visit_map(OneEntry::new(key, rest, self.found)),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.path.split_first() {
            None => {
                *self.found = Shape::Map;
                Err(stop())
            }
            Some((key, rest)) => visitor.visit_map(OneEntry::new(key, rest, self.found)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    /// A list's elements are described like the list's key.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_seq(OneElement(Some(self)))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct tuple tuple_struct enum identifier
        ignored_any
    }
}

/// A map of one entry: the next key of the path, then a probe for the rest.
struct OneEntry<'a> {
    key: Option<&'a str>,
    value: Option<Probe<'a>>,
}

impl<'a> OneEntry<'a> {
    fn new(key: &'a str, rest: &'a [String], found: &'a mut Shape) -> Self {
        OneEntry {
            key: Some(key),
            value: Some(Probe { path: rest, found }),
        }
    }
}

impl<'de> MapAccess<'de> for OneEntry<'_> {
    type Error = de::value::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.key.take() {
            Some(key) => seed
                .deserialize(de::value::StrDeserializer::<Self::Error>::new(key))
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        seed.deserialize(self.value.take().ok_or_else(stop)?)
    }
}

struct OneElement<'a>(Option<Probe<'a>>);

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = de::value::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        match self.0.take() {
            Some(probe) => seed.deserialize(probe).map(Some),
            None => Ok(None),
        }
    }
}
