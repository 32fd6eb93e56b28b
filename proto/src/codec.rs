//! The protobuf codec of every generated client and server: tonic's prost
//! codec with small starting buffers.
//!
//! A gRPC call holds an encode and a decode buffer for as long as it lasts;
//! tonic starts each at 8 KiB. For unary calls that is brief, but an open
//! stream (a chat connection) keeps them while idle, and thousands of
//! streams would hold tens of MiB of mostly empty buffers. Buffers start
//! small and grow with the messages that need more.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::BufferSettings;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Where a call's buffers start, in bytes.
pub const INITIAL_BUFFER: usize = 512;
/// Encoded bytes after which a stream yields to send them (tonic's default).
pub const YIELD_THRESHOLD: usize = 32 * 1024;

/// The buffer settings of Agora's gRPC calls.
pub fn buffer_settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD)
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(buffer_settings())
    }
}
