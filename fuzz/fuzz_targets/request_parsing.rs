//! libFuzzer target: everything the API parses from a request (target,
//! headers, idempotency key, bearer token, forwarded addresses, JSON bodies)
//! through `checkline_api::fuzzing::parse_request`, which panics only when
//! an invariant of the parsers breaks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    checkline_api::fuzzing::parse_request(data);
});
