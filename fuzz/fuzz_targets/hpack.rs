//! Fuzzes the frame relay's HPACK decoder: the first input byte says how
//! many of the next bytes are piece lengths, and each piece of the rest is
//! one header block, all on one connection. Nothing may panic; a list over
//! the limit must leave the table in step, and what decodes must survive
//! re-encoding and Huffman coding, as checked inside
//! `grpc_edge::fuzzing::hpack`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    grpc_edge::fuzzing::hpack(data);
});
