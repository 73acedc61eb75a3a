//! Fuzzes the YAML configuration: the input, when UTF-8, is loaded as a
//! configuration file. Nothing may panic or hang (anchors and aliases,
//! merge keys, nesting); an error names at least one problem, and a
//! configuration that loads serializes to a form that loads back the same,
//! as checked inside `grpc_edge::fuzzing::config_yaml`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    grpc_edge::fuzzing::config_yaml(data);
});
