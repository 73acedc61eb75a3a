//! Fuzzes the upstream transport's GOAWAY watch: the first input byte says
//! how many of the next bytes are piece lengths, the rest is what an
//! upstream sends, fed whole and in those pieces. Nothing may panic; the
//! GOAWAY code noted must be the same in any chunking and the same as a
//! reference walk of the frames finds, as checked inside
//! `grpc_edge::fuzzing::http2_goaway`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    grpc_edge::fuzzing::http2_goaway(data);
});
