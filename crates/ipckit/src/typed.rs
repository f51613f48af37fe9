//! Typed payloads: a serde value as one shape byte and then its postcard bytes
//! (docs/PROTOCOL.md, *Typed payloads*).
//!
//! postcard is not self-describing: a unit variant 0 and an empty string are both `00`, so
//! a decode that merely succeeds proves nothing. The shape byte names the value's
//! top-level serde shape, which the encoder learns from the one `serialize_*` call the
//! value makes and the decoder from the one `deserialize_*` hint the expected type gives:
//! a mismatch is an error, and so is a payload not consumed to its end. Both probes stop
//! at that first call and allocate nothing.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::ser::{self, Impossible, Serialize};

use crate::error::{Error, Result};

/// A value's top-level serde shape, as its one byte on the wire. A newtype struct has the
/// shape of what it wraps (postcard writes nothing for it either).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Shape {
    /// No shape was learned (a type that asks for `deserialize_any`, or a `Serialize`
    /// that failed before its first call): a decoder of such a type checks nothing.
    Any = 0,
    Bool,
    I8,
    I16,
    I32,
    I64,
    I128,
    U8,
    U16,
    U32,
    U64,
    U128,
    F32,
    F64,
    Char,
    String,
    Bytes,
    Option,
    Unit,
    UnitStruct,
    Seq,
    Tuple,
    TupleStruct,
    Map,
    Struct,
    Enum,
}

impl Shape {
    const ALL: [Shape; 26] = [
        Shape::Any,
        Shape::Bool,
        Shape::I8,
        Shape::I16,
        Shape::I32,
        Shape::I64,
        Shape::I128,
        Shape::U8,
        Shape::U16,
        Shape::U32,
        Shape::U64,
        Shape::U128,
        Shape::F32,
        Shape::F64,
        Shape::Char,
        Shape::String,
        Shape::Bytes,
        Shape::Option,
        Shape::Unit,
        Shape::UnitStruct,
        Shape::Seq,
        Shape::Tuple,
        Shape::TupleStruct,
        Shape::Map,
        Shape::Struct,
        Shape::Enum,
    ];

    fn from_byte(byte: u8) -> Option<Shape> {
        Shape::ALL.get(usize::from(byte)).copied()
    }

    /// What the shape is called in an error: "the payload holds {name}".
    fn name(self) -> &'static str {
        match self {
            Shape::Any => "a value of unknown shape",
            Shape::Bool => "a bool",
            Shape::I8 => "an i8",
            Shape::I16 => "an i16",
            Shape::I32 => "an i32",
            Shape::I64 => "an i64",
            Shape::I128 => "an i128",
            Shape::U8 => "a u8",
            Shape::U16 => "a u16",
            Shape::U32 => "a u32",
            Shape::U64 => "a u64",
            Shape::U128 => "a u128",
            Shape::F32 => "an f32",
            Shape::F64 => "an f64",
            Shape::Char => "a char",
            Shape::String => "a string",
            Shape::Bytes => "a byte string",
            Shape::Option => "an option",
            Shape::Unit => "a unit ()",
            Shape::UnitStruct => "a unit struct",
            Shape::Seq => "a sequence",
            Shape::Tuple => "a tuple",
            Shape::TupleStruct => "a tuple struct",
            Shape::Map => "a map",
            Shape::Struct => "a struct",
            Shape::Enum => "an enum",
        }
    }
}

/// `value` as a typed payload: its shape byte, then its postcard bytes.
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    endpoint: &dyn fmt::Display,
) -> Result<Vec<u8>> {
    let shape = shape_of(value);
    postcard::to_extend(value, vec![shape as u8]).map_err(|e| Error::Codec {
        endpoint: endpoint.to_string(),
        op: "encode",
        detail: e.to_string(),
    })
}

/// The value of type `T` in a typed payload, which must hold a `T`'s shape and nothing
/// after it.
pub(crate) fn decode<T: DeserializeOwned>(
    payload: &[u8],
    endpoint: &dyn fmt::Display,
) -> Result<T> {
    let failed = |detail: String| Error::Codec {
        endpoint: endpoint.to_string(),
        op: "decode",
        detail,
    };
    let expected = std::any::type_name::<T>();
    let Some((&byte, bytes)) = payload.split_first() else {
        return Err(failed(format!(
            "an empty payload holds no {expected} (a typed payload starts with its shape byte); \
             was it sent with send rather than send_value?"
        )));
    };
    let Some(shape) = Shape::from_byte(byte) else {
        return Err(failed(format!(
            "the payload is not a typed value (its first byte, {byte:#04x}, names no shape), \
             so it holds no {expected}; was it sent with send rather than send_value?"
        )));
    };
    let wanted = hint_of::<T>();
    // A byte of 0 comes from no encoder that succeeded (postcard fails where the probe
    // learned nothing), so it matches only a type whose shape is not known either.
    if shape != wanted && wanted != Shape::Any {
        return Err(failed(format!(
            "the payload holds {}, not the {expected} expected",
            shape.name()
        )));
    }
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(failed(format!(
            "{} bytes were left over after the {expected} expected",
            rest.len()
        ))),
        Err(e) => Err(failed(format!("{e} (reading a {expected})"))),
    }
}

/// The shape of `value`: the first `serialize_*` call it makes.
fn shape_of<T: Serialize + ?Sized>(value: &T) -> Shape {
    let seen = Cell::new(Shape::Any);
    let _ = value.serialize(Probe(&seen));
    seen.get()
}

/// The shape a `T` asks for: the first `deserialize_*` hint it gives.
fn hint_of<T: DeserializeOwned>() -> Shape {
    let seen = Cell::new(Shape::Any);
    let _ = T::deserialize(Probe(&seen));
    seen.get()
}

/// Both probes: a serializer and a deserializer that note the first call's shape and
/// stop there.
#[derive(Clone, Copy)]
struct Probe<'a>(&'a Cell<Shape>);

impl Probe<'_> {
    fn saw<T>(self, shape: Shape) -> Probed<T> {
        self.0.set(shape);
        Err(Stop)
    }
}

type Probed<T> = std::result::Result<T, Stop>;

/// How a probe stops: carries nothing, so that stopping allocates nothing. (Also the
/// contracts' probe for a struct's field names.)
#[derive(Debug)]
pub(crate) struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("probed")
    }
}

impl std::error::Error for Stop {}

impl ser::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Stop {
        Stop
    }
}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Stop {
        Stop
    }
}

impl ser::Serializer for Probe<'_> {
    type Ok = ();
    type Error = Stop;
    type SerializeSeq = Impossible<(), Stop>;
    type SerializeTuple = Impossible<(), Stop>;
    type SerializeTupleStruct = Impossible<(), Stop>;
    type SerializeTupleVariant = Impossible<(), Stop>;
    type SerializeMap = Impossible<(), Stop>;
    type SerializeStruct = Impossible<(), Stop>;
    type SerializeStructVariant = Impossible<(), Stop>;

    fn is_human_readable(&self) -> bool {
        false // as postcard, so that a type picks the form postcard will get
    }

    fn serialize_bool(self, _: bool) -> Probed<()> {
        self.saw(Shape::Bool)
    }
    fn serialize_i8(self, _: i8) -> Probed<()> {
        self.saw(Shape::I8)
    }
    fn serialize_i16(self, _: i16) -> Probed<()> {
        self.saw(Shape::I16)
    }
    fn serialize_i32(self, _: i32) -> Probed<()> {
        self.saw(Shape::I32)
    }
    fn serialize_i64(self, _: i64) -> Probed<()> {
        self.saw(Shape::I64)
    }
    fn serialize_i128(self, _: i128) -> Probed<()> {
        self.saw(Shape::I128)
    }
    fn serialize_u8(self, _: u8) -> Probed<()> {
        self.saw(Shape::U8)
    }
    fn serialize_u16(self, _: u16) -> Probed<()> {
        self.saw(Shape::U16)
    }
    fn serialize_u32(self, _: u32) -> Probed<()> {
        self.saw(Shape::U32)
    }
    fn serialize_u64(self, _: u64) -> Probed<()> {
        self.saw(Shape::U64)
    }
    fn serialize_u128(self, _: u128) -> Probed<()> {
        self.saw(Shape::U128)
    }
    fn serialize_f32(self, _: f32) -> Probed<()> {
        self.saw(Shape::F32)
    }
    fn serialize_f64(self, _: f64) -> Probed<()> {
        self.saw(Shape::F64)
    }
    fn serialize_char(self, _: char) -> Probed<()> {
        self.saw(Shape::Char)
    }
    fn serialize_str(self, _: &str) -> Probed<()> {
        self.saw(Shape::String)
    }
    // The default formats the value into a String first.
    fn collect_str<T: fmt::Display + ?Sized>(self, _: &T) -> Probed<()> {
        self.saw(Shape::String)
    }
    fn serialize_bytes(self, _: &[u8]) -> Probed<()> {
        self.saw(Shape::Bytes)
    }
    fn serialize_none(self) -> Probed<()> {
        self.saw(Shape::Option)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Probed<()> {
        self.saw(Shape::Option)
    }
    fn serialize_unit(self) -> Probed<()> {
        self.saw(Shape::Unit)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Probed<()> {
        self.saw(Shape::UnitStruct)
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Probed<()> {
        self.saw(Shape::Enum)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Probed<()> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Probed<()> {
        self.saw(Shape::Enum)
    }
    fn serialize_seq(self, _: Option<usize>) -> Probed<Self::SerializeSeq> {
        self.saw(Shape::Seq)
    }
    fn serialize_tuple(self, _: usize) -> Probed<Self::SerializeTuple> {
        self.saw(Shape::Tuple)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Probed<Self::SerializeTupleStruct> {
        self.saw(Shape::TupleStruct)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Probed<Self::SerializeTupleVariant> {
        self.saw(Shape::Enum)
    }
    fn serialize_map(self, _: Option<usize>) -> Probed<Self::SerializeMap> {
        self.saw(Shape::Map)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Probed<Self::SerializeStruct> {
        self.saw(Shape::Struct)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Probed<Self::SerializeStructVariant> {
        self.saw(Shape::Enum)
    }
}

/// A `deserialize_*` method that notes its shape.
macro_rules! hint {
    ($($method:ident($($arg:ty),*) => $shape:expr;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, $(_: $arg,)* _: V) -> Probed<V::Value> {
                self.saw($shape)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    fn is_human_readable(&self) -> bool {
        false
    }

    hint! {
        // A self-describing type: nothing to check it against.
        deserialize_any() => Shape::Any;
        deserialize_ignored_any() => Shape::Any;
        deserialize_identifier() => Shape::Any;
        deserialize_bool() => Shape::Bool;
        deserialize_i8() => Shape::I8;
        deserialize_i16() => Shape::I16;
        deserialize_i32() => Shape::I32;
        deserialize_i64() => Shape::I64;
        deserialize_i128() => Shape::I128;
        deserialize_u8() => Shape::U8;
        deserialize_u16() => Shape::U16;
        deserialize_u32() => Shape::U32;
        deserialize_u64() => Shape::U64;
        deserialize_u128() => Shape::U128;
        deserialize_f32() => Shape::F32;
        deserialize_f64() => Shape::F64;
        deserialize_char() => Shape::Char;
        deserialize_str() => Shape::String;
        deserialize_string() => Shape::String;
        deserialize_bytes() => Shape::Bytes;
        deserialize_byte_buf() => Shape::Bytes;
        deserialize_option() => Shape::Option;
        deserialize_unit() => Shape::Unit;
        deserialize_unit_struct(&'static str) => Shape::UnitStruct;
        deserialize_seq() => Shape::Seq;
        deserialize_tuple(usize) => Shape::Tuple;
        deserialize_tuple_struct(&'static str, usize) => Shape::TupleStruct;
        deserialize_map() => Shape::Map;
        deserialize_struct(&'static str, &'static [&'static str]) => Shape::Struct;
        deserialize_enum(&'static str, &'static [&'static str]) => Shape::Enum;
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Probed<V::Value> {
        visitor.visit_newtype_struct(self)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fmt::Debug;

    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Reply {
        Done,
        Failed(String),
        Moved { to: u32 },
        Pair(u8, i64),
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Job {
        id: u32,
        name: String,
        tags: Vec<String>,
        parent: Option<Box<Job>>,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Meters(f64);

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Point(i32, i32);

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Nothing;

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: T) {
        let payload = encode(&value, &"test://").unwrap();
        let back: T = decode(&payload, &"test://").unwrap_or_else(|e| panic!("{value:?}: {e}"));
        assert_eq!(back, value);
    }

    fn decode_error<T: DeserializeOwned + Debug>(payload: &[u8]) -> String {
        match decode::<T>(payload, &"test://") {
            Err(Error::Codec {
                op: "decode",
                detail,
                ..
            }) => detail,
            other => panic!("{payload:?} as {}: {other:?}", std::any::type_name::<T>()),
        }
    }

    #[test]
    fn every_shape_round_trips() {
        round_trip(true);
        round_trip(-5i8);
        round_trip(-500i16);
        round_trip(-5_000_000i32);
        round_trip(i64::MIN);
        round_trip(i128::MAX);
        round_trip(u8::MAX);
        round_trip(u16::MAX);
        round_trip(u32::MAX);
        round_trip(u64::MAX);
        round_trip(u128::MAX);
        round_trip(1.5f32);
        round_trip(-2.25f64);
        round_trip('ü');
        round_trip(String::new());
        round_trip("text".to_owned());
        round_trip(serde_bytes_like());
        round_trip(None::<u32>);
        round_trip(Some("x".to_owned()));
        round_trip(());
        round_trip(Nothing);
        round_trip(vec![1u16, 2, 3]);
        round_trip(Vec::<u8>::new());
        round_trip((1u8, "two".to_owned(), 3.0f64));
        round_trip([7u32; 4]);
        round_trip(Point(-1, 1));
        round_trip(BTreeMap::from([("a".to_owned(), 1u8)]));
        round_trip(Meters(3.5));
        for reply in [
            Reply::Done,
            Reply::Failed("why".into()),
            Reply::Moved { to: 9 },
            Reply::Pair(1, -1),
        ] {
            round_trip(reply);
        }
        let child = Job {
            id: 2,
            name: "child".into(),
            tags: vec![],
            parent: None,
        };
        round_trip(Job {
            id: 1,
            name: "job".into(),
            tags: vec!["a".into(), "b".into()],
            parent: Some(Box::new(child)),
        });
    }

    /// A byte string (`serialize_bytes`), as serde_bytes would make it.
    fn serde_bytes_like() -> BytesOf {
        BytesOf(vec![0, 1, 255])
    }

    #[derive(Debug, PartialEq)]
    struct BytesOf(Vec<u8>);

    impl Serialize for BytesOf {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for BytesOf {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct Bytes;
            impl<'de> Visitor<'de> for Bytes {
                type Value = BytesOf;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> std::result::Result<BytesOf, E> {
                    Ok(BytesOf(v.to_vec()))
                }
            }
            d.deserialize_byte_buf(Bytes)
        }
    }

    /// The case: an enum read as a String was `Ok("")` (a unit variant) or a
    /// string of the variant's data.
    #[test]
    fn another_type_is_an_error() {
        for reply in [Reply::Done, Reply::Failed("data".into())] {
            let payload = encode(&reply, &"test://").unwrap();
            let said = decode_error::<String>(&payload);
            assert!(
                said.contains("holds an enum, not the alloc::string::String expected"),
                "{said}"
            );
            assert!(said.contains("String"), "{said}");
        }
        let said = decode_error::<u64>(&encode(&7u32, &"test://").unwrap());
        assert!(said.contains("u32") && said.contains("u64"), "{said}");
        let said = decode_error::<Job>(&encode(&(1u32, "x"), &"test://").unwrap());
        assert!(said.contains("tuple") && said.contains("Job"), "{said}");
        decode_error::<()>(&encode(&Nothing, &"test://").unwrap());
        decode_error::<Option<u8>>(&encode(&1u8, &"test://").unwrap());
        // No encoder writes shape 0: a payload with it is no String either.
        let said = decode_error::<String>(&[0, 0]);
        assert!(said.contains("unknown shape"), "{said}");
    }

    #[test]
    fn bytes_left_over_are_an_error() {
        let mut payload = encode(&7u32, &"test://").unwrap();
        payload.extend_from_slice(&[1, 2, 3]);
        let said = decode_error::<u32>(&payload);
        assert!(
            said.contains("3 bytes were left over after the u32"),
            "{said}"
        );
        let said = decode_error::<(u8, u8)>(&encode(&(1u8, 2u8, 3u8), &"test://").unwrap());
        assert!(said.contains("1 bytes were left over"), "{said}");
    }

    /// A payload sent with plain `send` is an error that says so, not a value.
    #[test]
    fn plain_bytes_are_an_error() {
        for raw in [&b"hello"[..], b"", &[0xff, 0], b"{\"id\": 1}"] {
            let said = decode_error::<Job>(raw);
            assert!(said.contains("send_value"), "{raw:?}: {said}");
        }
    }

    /// What the shape byte says for the types a user is likeliest to send.
    #[test]
    fn shapes_are_learned_from_both_sides() {
        assert_eq!(shape_of(&Meters(1.0)), Shape::F64);
        assert_eq!(hint_of::<Meters>(), Shape::F64);
        assert_eq!(shape_of("str"), Shape::String);
        assert_eq!(hint_of::<String>(), Shape::String);
        assert_eq!(shape_of(&Reply::Done), Shape::Enum);
        assert_eq!(hint_of::<Reply>(), Shape::Enum);
        assert_eq!(hint_of::<Box<Job>>(), Shape::Struct);
        assert_eq!(shape_of(&[1u8, 2]), Shape::Tuple);
        for byte in 0..=u8::MAX {
            if let Some(shape) = Shape::from_byte(byte) {
                assert_eq!(shape as u8, byte);
            }
        }
    }
}
