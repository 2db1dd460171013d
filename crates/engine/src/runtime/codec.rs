//! Codecs: how a task's result becomes a payload and a payload becomes a handler's message.
//!
//! | codec | types | payload |
//! |---|---|---|
//! | [`Json`] (default) | any `serde` type | JSON |
//! | [`Raw`] | `Vec<u8>`, `bytes::Bytes` | the bytes as they are |
//! | [`Text`] | `String` | UTF-8 text (a payload that is not UTF-8 does not decode) |
//! | [`Protobuf`] (feature `protobuf`) | any `prost::Message` | protobuf binary |
//!
//! A payload that does not decode is poison: dead-lettered with reason `decode`, never retried.
//!
//! ```
//! use backstop_engine::runtime::{Decoder, Encoder, Json, Raw, Text};
//! let bytes = Encoder::<serde_json::Value>::encode(&Json, &serde_json::json!({"a": 1})).unwrap();
//! assert_eq!(bytes, br#"{"a":1}"#);
//! assert_eq!(Decoder::<Vec<u8>>::decode(&Raw, b"\x00\x01").unwrap(), vec![0, 1]);
//! assert!(Decoder::<String>::decode(&Text, b"\xff").is_err());
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A payload could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{codec}: {message}")]
pub struct CodecError {
    /// The codec's name.
    pub codec: &'static str,
    /// What went wrong.
    pub message: String,
}

impl CodecError {
    fn new(codec: &'static str, e: impl std::fmt::Display) -> CodecError {
        CodecError {
            codec,
            message: e.to_string(),
        }
    }
}

/// Turns a payload into a `T`.
pub trait Decoder<T>: Send + Sync + 'static {
    /// Decodes.
    fn decode(&self, payload: &[u8]) -> Result<T, CodecError>;
}

/// Turns a `T` into a payload.
pub trait Encoder<T>: Send + Sync + 'static {
    /// Encodes.
    fn encode(&self, value: &T) -> Result<Vec<u8>, CodecError>;

    /// Encodes into a buffer that starts with room for about `size_hint` bytes (a task passes
    /// the size of its previous payload, so a codec that writes into a growing buffer need not
    /// grow it step by step). The bytes must be those of [`encode`](Self::encode), which the
    /// default calls.
    fn encode_sized(&self, value: &T, size_hint: usize) -> Result<Vec<u8>, CodecError> {
        let _ = size_hint;
        self.encode(value)
    }
}

/// JSON through `serde` (the default codec).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<T: DeserializeOwned> Decoder<T> for Json {
    fn decode(&self, payload: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(payload).map_err(|e| CodecError::new("json", e))
    }
}

impl<T: Serialize> Encoder<T> for Json {
    fn encode(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(|e| CodecError::new("json", e))
    }

    fn encode_sized(&self, value: &T, size_hint: usize) -> Result<Vec<u8>, CodecError> {
        // `to_vec` starts at 128 bytes; capped so one huge payload does not make every later
        // one reserve as much.
        let mut buf = Vec::with_capacity(size_hint.clamp(128, 1 << 20));
        serde_json::to_writer(&mut buf, value).map_err(|e| CodecError::new("json", e))?;
        Ok(buf)
    }
}

/// The payload's bytes as they are (`Vec<u8>` or `bytes::Bytes`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

impl Decoder<Vec<u8>> for Raw {
    fn decode(&self, payload: &[u8]) -> Result<Vec<u8>, CodecError> {
        Ok(payload.to_vec())
    }
}
impl Encoder<Vec<u8>> for Raw {
    fn encode(&self, value: &Vec<u8>) -> Result<Vec<u8>, CodecError> {
        Ok(value.clone())
    }
}
impl Decoder<bytes::Bytes> for Raw {
    fn decode(&self, payload: &[u8]) -> Result<bytes::Bytes, CodecError> {
        Ok(bytes::Bytes::copy_from_slice(payload))
    }
}
impl Encoder<bytes::Bytes> for Raw {
    fn encode(&self, value: &bytes::Bytes) -> Result<Vec<u8>, CodecError> {
        Ok(value.to_vec())
    }
}

/// UTF-8 text (`String`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Text;

impl Decoder<String> for Text {
    fn decode(&self, payload: &[u8]) -> Result<String, CodecError> {
        String::from_utf8(payload.to_vec()).map_err(|e| CodecError::new("text", e))
    }
}
impl Encoder<String> for Text {
    fn encode(&self, value: &String) -> Result<Vec<u8>, CodecError> {
        Ok(value.as_bytes().to_vec())
    }
}

/// Protobuf binary through `prost` (feature `protobuf`; `#[derive(prost::Message)]` types need
/// no `protoc`).
#[cfg(feature = "protobuf")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Protobuf;

#[cfg(feature = "protobuf")]
impl<T: prost::Message + Default> Decoder<T> for Protobuf {
    fn decode(&self, payload: &[u8]) -> Result<T, CodecError> {
        T::decode(payload).map_err(|e| CodecError::new("protobuf", e))
    }
}

#[cfg(feature = "protobuf")]
impl<T: prost::Message> Encoder<T> for Protobuf {
    fn encode(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        Ok(value.encode_to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let v = serde_json::json!({"user_id": 7});
        let b = Json.encode(&v).unwrap();
        assert_eq!(Decoder::<serde_json::Value>::decode(&Json, &b).unwrap(), v);
        let e = Decoder::<serde_json::Value>::decode(&Json, b"{").unwrap_err();
        assert_eq!(e.codec, "json");
        let raw = vec![0u8, 255, 10];
        assert_eq!(
            Decoder::<Vec<u8>>::decode(&Raw, &Raw.encode(&raw).unwrap()).unwrap(),
            raw
        );
        let by = bytes::Bytes::from_static(b"\x00x");
        assert_eq!(
            Decoder::<bytes::Bytes>::decode(&Raw, &Raw.encode(&by).unwrap()).unwrap(),
            by
        );
        let s = "héllo".to_string();
        assert_eq!(
            Decoder::<String>::decode(&Text, &Text.encode(&s).unwrap()).unwrap(),
            s
        );
        assert_eq!(
            Decoder::<String>::decode(&Text, b"\xff").unwrap_err().codec,
            "text"
        );
    }

    #[cfg(feature = "protobuf")]
    #[test]
    fn protobuf_round_trips_without_protoc() {
        #[derive(Clone, PartialEq, prost::Message)]
        struct Update {
            #[prost(int64, tag = "1")]
            user_id: i64,
            #[prost(string, tag = "2")]
            status: String,
        }
        let u = Update {
            user_id: 42,
            status: "success".into(),
        };
        let b = Protobuf.encode(&u).unwrap();
        assert_eq!(Decoder::<Update>::decode(&Protobuf, &b).unwrap(), u);
        assert!(Decoder::<Update>::decode(&Protobuf, b"\xff\xff\xff").is_err());
    }
}
