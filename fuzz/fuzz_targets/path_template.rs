//! Fuzzes `google.api.http` path templates: the input up to the first
//! newline is parsed (UTF-8, lossily) as a template; if it parses, a small
//! route table is built around it and the rest of the input is matched
//! against it as a request path. Nothing may panic, and the properties
//! checked inside `grpc_edge::fuzzing::path_template` must hold.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (template, path) = text.split_once('\n').unwrap_or((&text, "/"));
    grpc_edge::fuzzing::path_template(template, path);
});
