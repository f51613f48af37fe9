//! What a served contract says of itself when asked (`ipckit introspect`, as
//! `busctl introspect` for D-Bus): its objects, their methods with argument names and
//! types, one-way or not, and their events.

use std::fmt;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Deserialize, Serialize};

use crate::typed::Stop;

/// An argument as a contract declares it, for [`Method::PARAMS`](super::Method::PARAMS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param {
    /// Its name.
    pub name: &'static str,
    /// Its type, as written in Rust.
    pub ty: &'static str,
}

/// Everything a service hosts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    /// The objects, in the order they were added.
    pub objects: Vec<ObjectInfo>,
}

/// One object of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// Its name, after `#` in a client's URL.
    pub name: String,
    /// `"shared"` or `"per_connection"`.
    pub instance: String,
    /// Its methods, two-way and one-way, in the order they were added.
    pub methods: Vec<MethodInfo>,
    /// The events it pushes.
    #[serde(default)]
    pub events: Vec<EventInfo>,
}

/// One method of an object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodInfo {
    /// Its name.
    pub name: String,
    /// True when nothing answers it.
    pub oneway: bool,
    /// Its arguments: name and type.
    pub args: Vec<ArgInfo>,
    /// What it returns (`()` for a one-way method).
    pub returns: String,
    /// Its application error's type, if it can fail.
    #[serde(default)]
    pub error: Option<String>,
}

/// One event of an object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInfo {
    /// Its name.
    pub name: String,
    /// Its fields: name and type.
    pub args: Vec<ArgInfo>,
}

/// An argument or field: its name and its type as written in Rust (`?` when the contract
/// did not say).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgInfo {
    /// Its name.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: String,
}

/// The arguments of `T`: as declared, or else the names of its fields as serde has them.
pub(super) fn args_of<T: DeserializeOwned>(declared: &[Param]) -> Vec<ArgInfo> {
    if !declared.is_empty() {
        return declared
            .iter()
            .map(|p| ArgInfo {
                name: p.name.to_string(),
                ty: p.ty.to_string(),
            })
            .collect();
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldProbe(&mut fields));
    fields
        .iter()
        .map(|name| ArgInfo {
            name: name.to_string(),
            ty: "?".to_string(),
        })
        .collect()
}

/// `T`'s name without its module paths: `Option<String>`, not
/// `core::option::Option<alloc::string::String>`.
pub(super) fn type_name<T: ?Sized>() -> String {
    let full = std::any::type_name::<T>();
    let mut short = String::with_capacity(full.len());
    let mut word = String::new();
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            short.push_str(word.rsplit("::").next().unwrap_or(""));
            word.clear();
            short.push(c);
        }
    }
    short.push_str(word.rsplit("::").next().unwrap_or(""));
    short
}

/// A deserializer that learns a struct's field names from its one `deserialize_struct`
/// call, and stops there.
struct FieldProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> de::Deserializer<'de> for FieldProbe<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        *self.0 = fields;
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
        identifier ignored_any
    }
}

impl fmt::Display for Description {
    /// A table as `busctl introspect` prints one: a row per object, then a row per
    /// method and event of it, their names, arguments and results in aligned columns.
    ///
    /// ```text
    /// NAME         TYPE    ARGUMENTS       RESULT  FLAGS
    /// #calculator  object  -               -       shared
    /// .add         method  a: i64, b: i64  i64     -
    /// .clear       method  -               ()      oneway
    /// .computed    event   result: i64     -       -
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dash = || "-".to_string();
        let mut rows = vec![[
            "NAME".to_string(),
            "TYPE".to_string(),
            "ARGUMENTS".to_string(),
            "RESULT".to_string(),
            "FLAGS".to_string(),
        ]];
        for object in &self.objects {
            rows.push([
                format!("#{}", object.name),
                "object".to_string(),
                dash(),
                dash(),
                object.instance.clone(),
            ]);
            for method in &object.methods {
                let returns = match &method.error {
                    Some(error) => format!("Result<{}, {error}>", method.returns),
                    None => method.returns.clone(),
                };
                let flags = if method.oneway { "oneway" } else { "-" };
                rows.push([
                    format!(".{}", method.name),
                    "method".to_string(),
                    join(&method.args),
                    returns,
                    flags.to_string(),
                ]);
            }
            for event in &object.events {
                rows.push([
                    format!(".{}", event.name),
                    "event".to_string(),
                    join(&event.args),
                    dash(),
                    dash(),
                ]);
            }
        }
        let mut widths = [0; 5];
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for row in &rows {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  "));
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

fn join(args: &[ArgInfo]) -> String {
    if args.is_empty() {
        return "-".to_string();
    }
    args.iter()
        .map(|a| format!("{}: {}", a.name, a.ty))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Add {
        a: i64,
        b: i64,
    }

    #[test]
    fn field_names_come_from_serde_when_not_declared() {
        let args = args_of::<Add>(&[]);
        let names: Vec<_> = args.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let declared = args_of::<Add>(&[Param {
            name: "x",
            ty: "i64",
        }]);
        assert_eq!(declared[0].ty, "i64");
    }

    #[test]
    fn type_names_lose_their_paths() {
        assert_eq!(type_name::<Option<String>>(), "Option<String>");
        assert_eq!(
            type_name::<Vec<(i64, std::path::PathBuf)>>(),
            "Vec<(i64, PathBuf)>"
        );
    }

    #[test]
    fn a_description_prints_as_an_aligned_table() {
        let described = Description {
            objects: vec![ObjectInfo {
                name: "calculator".into(),
                instance: "shared".into(),
                methods: vec![
                    MethodInfo {
                        name: "add".into(),
                        oneway: false,
                        args: args_of::<Add>(&[]),
                        returns: "i64".into(),
                        error: None,
                    },
                    MethodInfo {
                        name: "clear".into(),
                        oneway: true,
                        args: vec![],
                        returns: "()".into(),
                        error: None,
                    },
                ],
                events: vec![],
            }],
        };
        assert_eq!(
            described.to_string(),
            "NAME         TYPE    ARGUMENTS   RESULT  FLAGS\n\
             #calculator  object  -           -       shared\n\
             .add         method  a: ?, b: ?  i64     -\n\
             .clear       method  -           ()      oneway\n"
        );
    }
}
