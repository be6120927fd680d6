//! Fuzzes the control-message decoder (`ordo_wire::group::Control`): ISIS
//! proposals and finals, sequencer orders and topic declarations, as they
//! arrive inside a reliable stream from another broker.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ordo_wire::group::Control;

fuzz_target!(|data: &[u8]| {
    if let Ok(control) = Control::decode(data) {
        // Whatever decodes must re-encode to bytes that decode the same.
        let again = Control::decode(&control.encode());
        assert_eq!(again, Ok(control), "re-encoded control did not round-trip");
    }
});
