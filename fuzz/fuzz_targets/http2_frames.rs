//! Fuzzes the relay's HTTP/2 frame reading: the first input byte says how
//! many of the next bytes are piece lengths, the rest is what a client
//! sends after its preface, fed whole and in those pieces. Nothing may
//! panic; the frames, header blocks and first error must be the same in
//! any chunking, as checked inside `grpc_edge::fuzzing::http2_frames`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    grpc_edge::fuzzing::http2_frames(data);
});
