//! Panel replies: node config, user list, alive list, and the report bodies the simulator reads.
#![no_main]
use libfuzzer_sys::fuzz_target;
use v2sp_shared::panel::{decode_alive, decode_push, AliveList, NodeInfo, UserList};

fuzz_target!(|data: &[u8]| {
    let _ = NodeInfo::decode(data);
    let _ = UserList::decode(data);
    let _ = AliveList::decode(data);
    let _ = decode_push(data);
    let _ = decode_alive(data);
});
