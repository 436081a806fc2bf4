//! The gateway read path as a connection runs it: transport decompression
//! (none, zlib-stream or zstd-stream, one context per connection) of a
//! sequence of websocket messages, then every completed payload through
//! `Frame::parse`, `dispatch_keys` and `d_range`.
//!
//! Input layout: `mode` byte (compression = mode % 3, payload bound =
//! 4 KiB * (1 + mode / 3)), then messages, each a little-endian u16 length
//! followed by that many bytes (the last one takes what is left).
#![no_main]

use gateway_protocol::{Compression, Decompressor, Frame};
use libfuzzer_sys::fuzz_target;

fn next_message(data: &[u8]) -> (&[u8], &[u8]) {
    match data {
        [a, b, rest @ ..] => {
            let len = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
            rest.split_at(len)
        }
        _ => (data, &[]),
    }
}

fn read_frame(payload: &[u8]) {
    let Ok(frame) = Frame::parse(payload) else {
        return;
    };
    if frame.op == gateway_protocol::op::DISPATCH {
        assert!(frame.s.is_some() && !frame.event().is_empty());
    }
    let _ = frame.dispatch_keys();
    match (frame.d, frame.d_range(payload)) {
        (Some(d), Some(r)) => assert_eq!(&payload[r], d),
        (None, None) => {}
        (d, r) => panic!("d {d:?} but range {r:?}"),
    }
    let _ = frame.data::<Option<bool>>();
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let compression = match mode % 3 {
        0 => Compression::None,
        1 => Compression::ZlibStream,
        _ => Compression::ZstdStream,
    };
    let max_payload = 4096 * (1 + usize::from(mode / 3));
    let Ok(mut inflater) = Decompressor::new(compression, max_payload) else {
        return;
    };
    while !rest.is_empty() {
        let (message, tail) = next_message(rest);
        rest = tail;
        match inflater.push(message) {
            Ok(Some(payload)) => {
                assert!(payload.len() <= max_payload, "payload above the bound");
                read_frame(&payload);
            }
            Ok(None) => {}
            // Any error closes the connection; its context is dropped.
            Err(_) => return,
        }
    }
});
