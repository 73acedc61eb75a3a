//! Fuzzes length-prefixed gRPC frame streams: the first input byte says how
//! many of the next bytes are piece lengths, the rest is the stream, fed to
//! the gRPC-Web request scanner and the message decoder in those pieces and
//! whole, with a small and a large message limit. Nothing may panic; both
//! must give the same frames, errors and offsets in any chunking, the same
//! as a reference parser, and frames made by the encoder must decode back,
//! as checked inside `grpc_edge::fuzzing::grpc_frames`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    grpc_edge::fuzzing::grpc_frames(data);
});
