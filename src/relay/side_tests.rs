use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::*;
use crate::relay::frame::{Frame, next_frame, parse};

const WINDOWS: Windows = Windows {
    stream: 1 << 16,
    connection: 1 << 20,
};

/// What a side wrote, frame by frame, in a readable form; header blocks
/// decoded with a decoder that lives as long as the peer's would.
fn written(side: &Side, decoder: &mut hpack::Decoder) -> Vec<String> {
    let mut buf = BytesMut::from(&std::mem::take(&mut side.lock().out)[..]);
    let mut frames = Vec::new();
    let mut block = Vec::new();
    while let Some((head, payload)) = next_frame(&mut buf, frame::MAX_MAX_FRAME_SIZE).unwrap() {
        match parse(&head, &payload).unwrap() {
            Frame::Data {
                stream,
                end_stream,
                data,
                ..
            } => frames.push(format!(
                "DATA {stream} {}{}",
                data.len(),
                if end_stream { " end" } else { "" }
            )),
            Frame::Headers {
                stream,
                end_stream,
                end_headers,
                fragment,
            } => {
                block.extend_from_slice(fragment);
                if end_headers {
                    frames.push(format!(
                        "HEADERS {stream} {}{}",
                        fields(decoder, &block),
                        if end_stream { " end" } else { "" }
                    ));
                    block.clear();
                } else {
                    frames.push(format!(
                        "HEADERS {stream} (continued){}",
                        if end_stream { " end" } else { "" }
                    ));
                }
            }
            Frame::Continuation {
                end_headers, fragment, ..
            } => {
                block.extend_from_slice(fragment);
                if end_headers {
                    frames.push(format!("CONTINUATION {}", fields(decoder, &block)));
                    block.clear();
                } else {
                    frames.push("CONTINUATION".into());
                }
            }
            Frame::WindowUpdate { stream, increment } => frames.push(format!("WINDOW_UPDATE {stream} {increment}")),
            Frame::RstStream { stream, reason } => frames.push(format!("RST_STREAM {stream} {reason:?}")),
            Frame::SettingsAck => frames.push("SETTINGS ack".into()),
            other => frames.push(format!("{other:?}")),
        }
    }
    frames
}

fn fields(decoder: &mut hpack::Decoder, block: &[u8]) -> String {
    let mut shown = Vec::new();
    decoder
        .decode(block, |name, value| {
            shown.push(format!(
                "{}={}",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(value)
            ))
        })
        .unwrap();
    shown.join(",")
}

fn decoder() -> hpack::Decoder {
    hpack::Decoder::new(4096, 1 << 20)
}

fn block(pairs: &[(&str, &str)]) -> Fields {
    let mut fields = Fields::default();
    for (name, value) in pairs {
        fields.push(name.as_bytes(), value.as_bytes());
    }
    fields
}

fn credited(credits: &mut Vec<Credit>) -> Vec<(u32, u32)> {
    credits.drain(..).map(|c| (c.stream, c.bytes)).collect()
}

/// A client leg (stream 1) whose other leg is stream 3 of an upstream side.
fn pair() -> (Arc<Side>, Arc<Side>) {
    let client = Side::new(Role::Client, WINDOWS, std::sync::Weak::new());
    let upstream = Side::new(Role::Client, WINDOWS, std::sync::Weak::new());
    client.lock().open(1, upstream.clone(), 3);
    upstream.lock().open(3, client.clone(), 1);
    (client, upstream)
}

#[test]
fn data_within_the_windows_goes_at_once_and_is_credited() {
    let (client, _upstream) = pair();
    let mut credits = Vec::new();
    let mut decoder = decoder();
    client.lock().send_headers(1, &block(&[(":status", "200")]), false);
    client
        .lock()
        .send_data(1, Bytes::from(vec![7; 100]), false, &mut credits);
    assert_eq!(credited(&mut credits), [(3, 100)]);
    let done = client.lock().send_headers(1, &block(&[("grpc-status", "0")]), true);
    assert!(done.is_none(), "the client has not ended its side yet");
    assert_eq!(
        written(&client, &mut decoder),
        ["HEADERS 1 :status=200", "DATA 1 100", "HEADERS 1 grpc-status=0 end"]
    );
    assert!(
        client.lock().received_end(1).is_some(),
        "both ends: the stream is forgotten"
    );
    assert_eq!(client.lock().stream_count(), 0);
}

#[test]
fn the_end_rides_on_the_last_data_frame() {
    let (_client, upstream) = pair();
    let mut credits = Vec::new();
    upstream
        .lock()
        .send_data(3, Bytes::from_static(b"hello"), true, &mut credits);
    upstream
        .lock()
        .send_data(3, Bytes::from_static(b"late"), false, &mut credits);
    assert_eq!(
        written(&upstream, &mut decoder()),
        ["DATA 3 5 end"],
        "nothing after the end"
    );
}

#[test]
fn data_past_the_stream_window_waits_and_headers_wait_behind_it() {
    let (client, _upstream) = pair();
    let mut credits = Vec::new();
    let mut decoder = decoder();
    // Room on the connection, so only the stream's window holds data back.
    client.lock().window_update(0, 1 << 20, &mut credits).unwrap();
    client
        .lock()
        .send_data(1, Bytes::from(vec![0; 70_000]), false, &mut credits);
    assert_eq!(credited(&mut credits), [(3, 65_535)], "only what went out is credited");
    client.lock().send_headers(1, &block(&[("grpc-status", "0")]), true);
    assert_eq!(
        written(&client, &mut decoder),
        ["DATA 1 16384", "DATA 1 16384", "DATA 1 16384", "DATA 1 16383"],
        "frames cut at the peer's frame size; the trailers wait"
    );
    client.lock().window_update(1, 4000, &mut credits).unwrap();
    assert_eq!(credited(&mut credits), [(3, 4000)]);
    assert_eq!(written(&client, &mut decoder), ["DATA 1 4000"]);
    client.lock().window_update(1, 10_000, &mut credits).unwrap();
    assert_eq!(credited(&mut credits), [(3, 465)]);
    assert_eq!(
        written(&client, &mut decoder),
        ["DATA 1 465", "HEADERS 1 grpc-status=0 end"]
    );
}

#[test]
fn the_connection_window_is_shared_and_released_in_order() {
    let client = Side::new(Role::Client, WINDOWS, std::sync::Weak::new());
    let upstream = Side::new(Role::Client, WINDOWS, std::sync::Weak::new());
    let mut credits = Vec::new();
    {
        let mut state = client.lock();
        state
            .apply_settings(
                &Settings {
                    initial_window_size: Some(1 << 20),
                    max_frame_size: Some(frame::MAX_MAX_FRAME_SIZE),
                    ..Settings::default()
                },
                &mut credits,
            )
            .unwrap();
        for stream in [1, 3, 5] {
            state.open(stream, upstream.clone(), stream + 10);
        }
        state.send_data(1, Bytes::from(vec![0; 40_000]), false, &mut credits);
        state.send_data(3, Bytes::from(vec![0; 40_000]), true, &mut credits);
        state.send_data(5, Bytes::from(vec![0; 10]), true, &mut credits);
    }
    assert_eq!(credited(&mut credits), [(11, 40_000), (13, 25_535)]);
    let mut decoder = decoder();
    assert_eq!(
        written(&client, &mut decoder),
        ["SETTINGS ack", "DATA 1 40000", "DATA 3 25535"]
    );
    client.lock().window_update(0, 20_000, &mut credits).unwrap();
    assert_eq!(
        credited(&mut credits),
        [(13, 14_465), (15, 10)],
        "oldest blocked stream first"
    );
    assert_eq!(written(&client, &mut decoder), ["DATA 3 14465 end", "DATA 5 10 end"]);
}

#[test]
fn a_smaller_initial_window_can_go_negative() {
    let (client, _upstream) = pair();
    let mut credits = Vec::new();
    client
        .lock()
        .send_data(1, Bytes::from(vec![0; 1000]), false, &mut credits);
    client
        .lock()
        .apply_settings(
            &Settings {
                initial_window_size: Some(0),
                ..Settings::default()
            },
            &mut credits,
        )
        .unwrap();
    client
        .lock()
        .send_data(1, Bytes::from(vec![0; 10]), false, &mut credits);
    credits.clear();
    let mut decoder = decoder();
    assert_eq!(written(&client, &mut decoder), ["DATA 1 1000", "SETTINGS ack"]);
    // The window is -1000: 1000 more only bring it to zero.
    client.lock().window_update(1, 1000, &mut credits).unwrap();
    assert!(written(&client, &mut decoder).is_empty());
    client.lock().window_update(1, 5, &mut credits).unwrap();
    assert_eq!(written(&client, &mut decoder), ["DATA 1 5"]);
    assert_eq!(credited(&mut credits), [(3, 5)]);
}

#[test]
fn windows_may_not_overflow() {
    let (client, _upstream) = pair();
    let mut credits = Vec::new();
    let error = client.lock().window_update(1, MAX_WINDOW, &mut credits).unwrap_err();
    assert_eq!(error.stream, Some(1));
    let error = client.lock().window_update(0, MAX_WINDOW, &mut credits).unwrap_err();
    assert_eq!(error.stream, None);
    // Up to the limit is fine; an update for a stream it does not know is ignored.
    client
        .lock()
        .window_update(1, MAX_WINDOW - 65_535, &mut credits)
        .unwrap();
    client.lock().window_update(99, 1, &mut credits).unwrap();
    let error = client
        .lock()
        .apply_settings(
            &Settings {
                initial_window_size: Some(MAX_WINDOW),
                ..Settings::default()
            },
            &mut credits,
        )
        .unwrap_err();
    assert_eq!(error.stream, None);
}

#[test]
fn a_large_header_block_continues_in_continuation_frames() {
    let (client, _upstream) = pair();
    let big = "x".repeat(40_000);
    let fields = block(&[(":status", "200"), ("x-big", &big), ("x-after", "1")]);
    client.lock().send_headers(1, &fields, true);
    let frames = written(&client, &mut decoder());
    assert_eq!(
        frames.len(),
        3,
        "{:?}",
        frames.iter().map(|f| &f[..f.len().min(40)]).collect::<Vec<_>>()
    );
    assert_eq!(frames[0], "HEADERS 1 (continued) end");
    assert_eq!(frames[1], "CONTINUATION");
    assert_eq!(frames[2], format!("CONTINUATION :status=200,x-big={big},x-after=1"));
}

#[test]
fn forwarded_bytes_are_credited_in_half_windows() {
    let (client, _upstream) = pair();
    let mut decoder = decoder();
    {
        let mut state = client.lock();
        state.credit(1, 20_000);
        state.credit(1, 20_000);
    }
    assert_eq!(
        written(&client, &mut decoder),
        ["WINDOW_UPDATE 1 40000"],
        "half of the 64 KiB stream window"
    );
    {
        let mut state = client.lock();
        for _ in 0..13 {
            state.credit(1, 40_000);
        }
    }
    let frames = written(&client, &mut decoder);
    assert!(frames.contains(&"WINDOW_UPDATE 0 560000".to_string()), "{frames:?}");
    // Once the client ended the stream it needs no stream window.
    client.lock().received_end(1);
    client.lock().credit(1, 60_000);
    assert!(written(&client, &mut decoder).is_empty());
}

#[test]
fn a_reset_forgets_the_stream_and_its_queue() {
    let (client, _upstream) = pair();
    let mut credits = Vec::new();
    client
        .lock()
        .send_data(1, Bytes::from(vec![0; 70_000]), false, &mut credits);
    assert!(client.lock().reset(1, Reason::CANCEL).is_some());
    client.lock().window_update(1, 10_000, &mut credits).unwrap();
    let frames = written(&client, &mut decoder());
    assert_eq!(frames.last().map(String::as_str), Some("RST_STREAM 1 CANCEL"));
    assert_eq!(client.lock().stream_count(), 0);
    // A closed side writes nothing more.
    let (client, _upstream) = pair();
    let dropped = client.lock().close();
    assert_eq!(dropped.len(), 1);
    client.lock().send_data(1, Bytes::from_static(b"x"), true, &mut credits);
    assert!(written(&client, &mut decoder()).is_empty());
}

#[test]
fn a_refused_call_keeps_its_request_and_data_that_comes_while_it_waits() {
    let (client, _upstream) = pair();
    let sent = block(&[(":path", "/a.B/C")]);
    client.lock().keep_replay(1, &sent, 7, 100);
    let link = client
        .lock()
        .received_data(1, 10, &Bytes::from(vec![1; 10]), false)
        .unwrap();
    assert!(link.is_some(), "forwarded while the call is on its first endpoint");
    // Forwarded upstream and credited: a resend must not credit it again.
    client.lock().credit(1, 10);
    let why = Status::new(Code::Unavailable, "refused");
    assert!(client.lock().refuse(1, &why));
    assert!(client.lock().refuse(1, &why), "refused twice, listed once");
    assert_eq!(client.lock().take_refused(), [1]);
    let link = client
        .lock()
        .received_data(1, 5, &Bytes::from(vec![2; 5]), true)
        .unwrap();
    assert!(link.is_none(), "nowhere to forward while it waits");
    let state = client.lock();
    let replay = state.half(1).and_then(|h| h.replay.as_ref()).unwrap();
    assert_eq!(replay.fields.get(b":path"), Some(&b"/a.B/C"[..]));
    assert_eq!(replay.data.iter().map(Bytes::len).collect::<Vec<_>>(), [10, 5]);
    assert_eq!((replay.credited, replay.tried.as_slice()), (10, &[7][..]));
    assert!(replay.refused.is_some());
}

#[test]
fn a_request_over_the_replay_limit_or_answered_is_no_longer_kept() {
    let (client, _upstream) = pair();
    client.lock().keep_replay(1, &block(&[(":path", "/a.B/C")]), 7, 8);
    client
        .lock()
        .received_data(1, 10, &Bytes::from(vec![1; 10]), false)
        .unwrap();
    let why = Status::new(Code::Unavailable, "refused");
    assert!(!client.lock().refuse(1, &why), "too large to resend");
    assert!(client.lock().take_refused().is_empty());
    // Answered: the backend took it, nothing is kept.
    let (client, _upstream) = pair();
    client.lock().keep_replay(1, &block(&[(":path", "/a.B/C")]), 7, 100);
    client.lock().send_headers(1, &block(&[(":status", "200")]), false);
    assert!(client.lock().half(1).unwrap().replay.is_none());
    assert!(!client.lock().refuse(1, &why));
}

#[test]
fn a_resent_request_credits_only_what_was_not_credited_before() {
    let (_client, upstream) = pair();
    let mut credits = Vec::new();
    upstream.lock().half_mut(3).unwrap().credited_before = 30;
    upstream
        .lock()
        .send_data(3, Bytes::from(vec![0; 20]), false, &mut credits);
    assert!(credited(&mut credits).is_empty());
    upstream
        .lock()
        .send_data(3, Bytes::from(vec![0; 25]), true, &mut credits);
    assert_eq!(credited(&mut credits), [(1, 15)]);
}

#[test]
fn a_cancel_moments_after_the_request_went_out_is_held_back_until_it_is_older() {
    let upstream_pair = || {
        let client = Side::new(Role::Client, WINDOWS, std::sync::Weak::new());
        let upstream = Side::new(Role::Upstream, WINDOWS, std::sync::Weak::new());
        client.lock().open(1, upstream.clone(), 3);
        upstream.lock().open(3, client.clone(), 1);
        (client, upstream)
    };
    let (_client, upstream) = upstream_pair();
    let sent = Instant::now();
    upstream.lock().half_mut(3).unwrap().sent_at = Some(sent);
    let status = Status::new(Code::Cancelled, "the client cancelled the call");
    assert!(upstream.lock().fail(3, &status).is_some(), "the leg is gone at once");
    assert_eq!(upstream.lock().stream_count(), 0);
    assert!(written(&upstream, &mut decoder()).is_empty(), "its reset waits");
    let due = upstream.lock().next_held_reset().unwrap();
    assert_eq!(due, sent + HOLD_YOUNG_RESETS);
    assert_eq!(
        upstream.lock().release_held_resets(due - Duration::from_millis(1)),
        Some(due)
    );
    assert!(written(&upstream, &mut decoder()).is_empty());
    assert_eq!(upstream.lock().release_held_resets(due), None);
    assert_eq!(written(&upstream, &mut decoder()), ["RST_STREAM 3 CANCEL"]);
    // An answered call (or one sent long ago) is reset at once.
    let (_client, upstream) = upstream_pair();
    upstream.lock().fail(3, &status);
    assert_eq!(written(&upstream, &mut decoder()), ["RST_STREAM 3 CANCEL"]);
}
