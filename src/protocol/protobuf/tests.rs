//! The Protobuf codec against hand-assembled bytes (field numbers from
//! `proto/client.proto`), round trips through the generated types, and
//! malformed input.

use super::*;
use crate::protocol::codes::{ProtocolError, Unsubscribe};
use crate::protocol::wire::{
    Empty, HistoryResult, JoinLeave, PresenceResult, PresenceStatsResult, PublishResult,
    RefreshResult, RpcResult,
};
use crate::protocol::{Method, encode_publication};

const LIMIT: usize = 65536;

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).unwrap()
}

/// Length-delimited encodings of `cmds`, concatenated: one frame.
fn frame(cmds: &[pb::Command]) -> Bytes {
    let mut out = Vec::new();
    for c in cmds {
        c.encode_length_delimited(&mut out).unwrap();
    }
    Bytes::from(out)
}

fn one(frame: Bytes) -> Method {
    let mut cmds = decode_commands(frame, LIMIT).unwrap();
    assert_eq!(cmds.len(), 1);
    cmds.remove(0).method().unwrap()
}

/// The replies in a server frame.
fn replies(mut bytes: Bytes) -> Vec<pb::Reply> {
    let mut out = Vec::new();
    while bytes.has_remaining() {
        out.push(pb::Reply::decode_length_delimited(&mut bytes).unwrap());
    }
    out
}

fn reply(bytes: Bytes) -> pb::Reply {
    let mut r = replies(bytes);
    assert_eq!(r.len(), 1);
    r.remove(0)
}

// ---- byte-level vectors -----------------------------------------------------

#[test]
fn connect_command_from_bytes() {
    // Command { id (1, varint) = 1, connect (4, len) = ConnectRequest {
    //   token (1, len) = "t", name (4, len) = "js" } }, length 11.
    let bytes = [
        0x0b, 0x08, 0x01, 0x22, 0x07, 0x0a, 0x01, b't', 0x22, 0x02, b'j', b's',
    ];
    let cmds = decode_commands(Bytes::copy_from_slice(&bytes), LIMIT).unwrap();
    assert_eq!(cmds.len(), 1);
    let cmd = cmds.into_iter().next().unwrap();
    assert_eq!(cmd.id, 1);
    let Ok(Method::Connect(c)) = cmd.method() else {
        panic!("not a connect")
    };
    assert_eq!((c.token.as_str(), c.name.as_str()), ("t", "js"));
}

#[test]
fn publish_and_history_commands_from_bytes() {
    // Command { id = 2, publish (7) = { channel (1) = "a", data (2) = `{"x":1}` } }
    let publish = [
        0x10, 0x08, 0x02, 0x3a, 0x0c, 0x0a, 0x01, b'a', 0x12, 0x07, b'{', b'"', b'x', b'"', b':',
        b'1', b'}',
    ];
    // Command { id = 3, history (10) = { channel (1) = "a", limit (7) = 5,
    //   since (8) = { offset (1) = 9, epoch (2) = "e" }, reverse (9) = true } }
    let history = [
        0x12, 0x08, 0x03, 0x52, 0x0e, 0x0a, 0x01, b'a', 0x38, 0x05, 0x42, 0x05, 0x08, 0x09, 0x12,
        0x01, b'e', 0x48, 0x01,
    ];
    let frame = Bytes::from([&publish[..], &history[..]].concat());
    let mut cmds = decode_commands(frame, LIMIT).unwrap().into_iter();
    let Ok(Method::Publish(p)) = cmds.next().unwrap().method() else {
        panic!("not a publish")
    };
    assert_eq!(p.channel, "a");
    assert_eq!(p.data.unwrap().get(), r#"{"x":1}"#);
    let Ok(Method::History(h)) = cmds.next().unwrap().method() else {
        panic!("not a history")
    };
    assert_eq!((h.channel.as_str(), h.limit, h.reverse), ("a", 5, true));
    let since = h.since.unwrap();
    assert_eq!((since.offset, since.epoch.as_str()), (9, "e"));
    assert!(cmds.next().is_none());
}

#[test]
fn publication_push_to_bytes() {
    let publication = encode_publication(b"1", None, 7, "");
    let bytes = publication_push("a", &publication).unwrap();
    // Reply { push (4) = Push { channel (2) = "a", pub (4) = Publication {
    //   data (4) = "1", offset (6) = 7 } } }
    let expected = [
        0x0c, 0x22, 0x0a, 0x12, 0x01, b'a', 0x22, 0x05, 0x22, 0x01, b'1', 0x30, 0x07,
    ];
    assert_eq!(&bytes[..], &expected[..]);
}

#[test]
fn error_reply_to_bytes() {
    let r = Reply::error(6, ProtocolError::PermissionDenied.into());
    let bytes = encode_reply(&r).unwrap();
    // Reply { id (1) = 6, error (2) = Error { code (1) = 103, message (2) =
    //   "permission denied" } }; `temporary` false is left out.
    let mut expected = vec![0x19, 0x08, 0x06, 0x12, 0x15, 0x08, 103, 0x12, 17];
    expected.extend_from_slice(b"permission denied");
    assert_eq!(&bytes[..], &expected[..]);
    // A temporary error carries field 3.
    let bytes = encode_reply(&Reply::error(1, ProtocolError::Internal.into())).unwrap();
    assert_eq!(&bytes[bytes.len() - 2..], &[0x18, 0x01]);
}

#[test]
fn ping_is_an_empty_reply_and_an_empty_command_is_a_pong() {
    assert_eq!(reply(Bytes::from_static(PING_FRAME)), pb::Reply::default());
    assert!(matches!(one(Bytes::from_static(&[0])), Method::Pong));
}

#[test]
fn publish_reply_has_no_fields_but_its_own() {
    let r = Reply::ok(
        5,
        ReplyResult::Publish(PublishResult {
            offset: 3,
            epoch: "e".into(),
        }),
    );
    // Reply { id (1) = 5, publish (8) = {} }: no field for Herald's offset.
    assert_eq!(
        &encode_reply(&r).unwrap()[..],
        &[0x04, 0x08, 0x05, 0x42, 0x00]
    );
}

// ---- round trips --------------------------------------------------------------

#[test]
fn every_command_round_trips() {
    let sub = pb::SubscribeRequest {
        channel: "news".into(),
        token: "st".into(),
        recover: true,
        epoch: "ep".into(),
        offset: 41,
        data: Bytes::from_static(b"[1]"),
        positioned: true,
        recoverable: true,
        join_leave: true,
        delta: "fossil".into(),
    };
    let cmds = [
        pb::Command {
            id: 1,
            connect: Some(pb::ConnectRequest {
                token: "tok".into(),
                data: Bytes::from_static(br#"{"a":"b"}"#),
                subs: [("news".to_owned(), sub.clone())].into(),
                name: "java".into(),
                version: "1.0".into(),
            }),
            ..Default::default()
        },
        pb::Command {
            id: 2,
            subscribe: Some(sub),
            ..Default::default()
        },
        pb::Command {
            id: 3,
            unsubscribe: Some(pb::UnsubscribeRequest {
                channel: "u".into(),
            }),
            ..Default::default()
        },
        pb::Command {
            id: 4,
            presence: Some(pb::PresenceRequest {
                channel: "p".into(),
            }),
            ..Default::default()
        },
        pb::Command {
            id: 5,
            presence_stats: Some(pb::PresenceStatsRequest {
                channel: "ps".into(),
            }),
            ..Default::default()
        },
        pb::Command {
            id: 6,
            ping: Some(pb::PingRequest {}),
            ..Default::default()
        },
        pb::Command {
            send: Some(pb::SendRequest {
                data: Bytes::from_static(b"\xff binary is fine: it goes nowhere"),
            }),
            ..Default::default()
        },
        pb::Command {
            id: 8,
            rpc: Some(pb::RpcRequest {
                data: Bytes::from_static(b"true"),
                method: "m".into(),
            }),
            ..Default::default()
        },
        pb::Command {
            id: 9,
            refresh: Some(pb::RefreshRequest { token: "rt".into() }),
            ..Default::default()
        },
        pb::Command {
            id: 10,
            sub_refresh: Some(pb::SubRefreshRequest {
                channel: "s".into(),
                token: "srt".into(),
            }),
            ..Default::default()
        },
    ];
    let decoded = decode_commands(frame(&cmds), LIMIT).unwrap();
    let ids: Vec<u32> = decoded.iter().map(|c| c.id).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6, 0, 8, 9, 10]);
    let mut methods = decoded.into_iter().map(|c| c.method().unwrap());
    let Some(Method::Connect(c)) = methods.next() else {
        panic!("connect")
    };
    assert_eq!((c.token.as_str(), c.name.as_str()), ("tok", "java"));
    assert_eq!(c.version, "1.0");
    assert_eq!(c.data.unwrap().get(), r#"{"a":"b"}"#);
    let s = &c.subs["news"];
    assert_eq!(
        (s.channel.as_str(), s.offset, s.epoch.as_str()),
        ("news", 41, "ep")
    );
    let Some(Method::Subscribe(s)) = methods.next() else {
        panic!("subscribe")
    };
    assert_eq!((s.channel.as_str(), s.token.as_str()), ("news", "st"));
    assert!(s.recover && s.positioned && s.recoverable && s.join_leave);
    assert_eq!((s.offset, s.epoch.as_str(), s.kind), (41, "ep", 0));
    assert_eq!(s.delta, "fossil");
    assert_eq!(s.data.unwrap().get(), "[1]");
    assert!(matches!(methods.next(), Some(Method::Unsubscribe(r)) if r.channel == "u"));
    assert!(matches!(methods.next(), Some(Method::Presence(r)) if r.channel == "p"));
    assert!(matches!(methods.next(), Some(Method::PresenceStats(r)) if r.channel == "ps"));
    assert!(matches!(methods.next(), Some(Method::Ping)));
    assert!(matches!(methods.next(), Some(Method::Send)));
    let Some(Method::Rpc(r)) = methods.next() else {
        panic!("rpc")
    };
    assert_eq!((r.method.as_str(), r.data.unwrap().get()), ("m", "true"));
    assert!(matches!(methods.next(), Some(Method::Refresh(r)) if r.token == "rt"));
    assert!(
        matches!(methods.next(), Some(Method::SubRefresh(r)) if r.channel == "s" && r.token == "srt")
    );
    assert!(methods.next().is_none());
}

#[test]
fn two_methods_in_one_command_is_bad_request_as_in_json() {
    let c = pb::Command {
        id: 1,
        presence: Some(pb::PresenceRequest::default()),
        history: Some(pb::HistoryRequest::default()),
        ..Default::default()
    };
    let mut cmds = decode_commands(frame(&[c]), LIMIT).unwrap();
    assert_eq!(
        cmds.remove(0).method().unwrap_err(),
        ProtocolError::BadRequest
    );
    // An id and no method: MethodNotFound, which the session turns into 3501.
    let c = pb::Command {
        id: 1,
        ..Default::default()
    };
    let mut cmds = decode_commands(frame(&[c]), LIMIT).unwrap();
    assert_eq!(
        cmds.remove(0).method().unwrap_err(),
        ProtocolError::MethodNotFound
    );
}

#[test]
fn data_that_is_not_json_is_a_bad_request() {
    for data in [&b"\xff\xfe"[..], b"not json", b"{\"a\":", b"1 2"] {
        let c = pb::Command {
            id: 1,
            publish: Some(pb::PublishRequest {
                channel: "a".into(),
                data: Bytes::copy_from_slice(data),
            }),
            ..Default::default()
        };
        let mut cmds = decode_commands(frame(&[c]), LIMIT).unwrap();
        assert_eq!(
            cmds.remove(0).method().unwrap_err(),
            ProtocolError::BadRequest,
            "{data:?}"
        );
    }
    // Also inside a connect's subscriptions.
    let c = pb::Command {
        id: 1,
        connect: Some(pb::ConnectRequest {
            subs: [(
                "a".to_owned(),
                pb::SubscribeRequest {
                    data: Bytes::from_static(b"x"),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut cmds = decode_commands(frame(&[c]), LIMIT).unwrap();
    assert!(cmds.remove(0).method().is_err());
    // Empty data is no data (publish refuses it later, as for JSON).
    let c = pb::Command {
        id: 1,
        publish: Some(pb::PublishRequest::default()),
        ..Default::default()
    };
    assert!(matches!(one(frame(&[c])), Method::Publish(p) if p.data.is_none()));
}

#[test]
fn publication_data_is_carried_byte_for_byte() {
    // Whitespace and number formatting survive: the bytes are not re-encoded.
    let data = br#"{ "x" : 1.50, "y": [ ] }"#;
    let c = pb::Command {
        id: 1,
        publish: Some(pb::PublishRequest {
            channel: "a".into(),
            data: Bytes::from_static(data),
        }),
        ..Default::default()
    };
    let Method::Publish(p) = one(frame(&[c])) else {
        panic!("not a publish")
    };
    let stored = encode_publication(
        p.data.unwrap().get().as_bytes(),
        Some(br#"{"user":"u","client":"c","conn_info":{"k": 2}}"#),
        12,
        "e",
    );
    let push = reply(publication_push("ch", &stored).unwrap())
        .push
        .unwrap();
    assert_eq!(push.channel, "ch");
    let publication = push.r#pub.unwrap();
    assert_eq!(&publication.data[..], &data[..]);
    assert_eq!(publication.offset, 12);
    let info = publication.info.unwrap();
    assert_eq!((info.user.as_str(), info.client.as_str()), ("u", "c"));
    assert_eq!(&info.conn_info[..], br#"{"k": 2}"#);
    assert!(info.chan_info.is_empty());
}

#[test]
fn every_reply_round_trips() {
    let p1 = encode_publication(b"\"one\"", None, 1, "ep");
    let p2 = encode_publication(b"2", None, 2, "ep");
    let pubs = || {
        [&p1, &p2]
            .iter()
            .map(|p| raw(std::str::from_utf8(p).unwrap()))
            .collect::<Vec<_>>()
    };
    let sub = || SubscribeResult {
        expires: true,
        ttl: 30,
        recoverable: true,
        epoch: "ep".into(),
        publications: pubs(),
        recovered: true,
        offset: 2,
        positioned: true,
        was_recovering: true,
        data: None,
        delta: true,
    };
    let info = r#"{"user":"u","client":"c1","chan_info":"ci"}"#;
    let list = [
        Reply::ok(
            1,
            ReplyResult::Connect(ConnectResult {
                client: "c1".into(),
                version: "herald".into(),
                expires: true,
                ttl: 60,
                subs: [("news".to_owned(), sub())].into(),
                ping: 25,
                pong: true,
                data: None,
                session: "s1".into(),
                node: "n1".into(),
            }),
        ),
        Reply::ok(2, ReplyResult::Subscribe(sub())),
        Reply::ok(3, ReplyResult::Unsubscribe(Empty {})),
        Reply::ok(
            4,
            ReplyResult::History(HistoryResult {
                publications: pubs(),
                epoch: "ep".into(),
                offset: 2,
            }),
        ),
        Reply::ok(
            5,
            ReplyResult::Refresh(RefreshResult {
                expires: true,
                ttl: 7,
            }),
        ),
        Reply::ok(6, ReplyResult::Ping(Empty {})),
        Reply::ok(
            7,
            ReplyResult::Presence(PresenceResult {
                presence: [("c1".to_owned(), raw(info))].into(),
            }),
        ),
        Reply::ok(
            8,
            ReplyResult::PresenceStats(PresenceStatsResult {
                num_clients: 3,
                num_users: u64::MAX,
            }),
        ),
        Reply::ok(
            9,
            ReplyResult::Rpc(RpcResult {
                data: raw("[1, 2]"),
            }),
        ),
        Reply::push(Push::unsubscribe("news", Unsubscribe::EXPIRED)),
        Reply::push(Push {
            channel: "news".into(),
            join: Some(JoinLeave { info: raw(info) }),
            ..Push::default()
        }),
        Reply::push(Push {
            channel: "news".into(),
            leave: Some(JoinLeave { info: raw(info) }),
            ..Push::default()
        }),
        Reply::push(Push {
            refresh: Some(RefreshResult {
                expires: true,
                ttl: 9,
            }),
            ..Push::default()
        }),
        Reply::push(Push {
            channel: "news".into(),
            subscribe: Some(sub()),
            ..Push::default()
        }),
    ];
    // Several replies in one frame, as the writer batches them.
    let mut bytes = Vec::new();
    for r in &list {
        bytes.extend_from_slice(&encode_reply(r).unwrap());
    }
    let got = replies(Bytes::from(bytes));
    assert_eq!(got.len(), list.len());
    let ids: Vec<u32> = got.iter().map(|r| r.id).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0, 0, 0]);

    let check_sub = |s: &pb::SubscribeResult| {
        assert!(
            s.expires
                && s.recoverable
                && s.recovered
                && s.positioned
                && s.was_recovering
                && s.delta
        );
        assert_eq!((s.ttl, s.epoch.as_str(), s.offset), (30, "ep", 2));
        let data: Vec<&[u8]> = s.publications.iter().map(|p| &p.data[..]).collect();
        assert_eq!(data, [&b"\"one\""[..], b"2"]);
        let offsets: Vec<u64> = s.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, [1, 2]);
    };
    let c = got[0].connect.as_ref().unwrap();
    assert_eq!((c.client.as_str(), c.version.as_str()), ("c1", "herald"));
    assert!(c.expires && c.pong);
    assert_eq!((c.ttl, c.ping), (60, 25));
    check_sub(&c.subs["news"]);
    check_sub(got[1].subscribe.as_ref().unwrap());
    assert!(got[2].unsubscribe.is_some());
    let h = got[3].history.as_ref().unwrap();
    assert_eq!(
        (h.epoch.as_str(), h.offset, h.publications.len()),
        ("ep", 2, 2)
    );
    let r = got[4].refresh.as_ref().unwrap();
    assert!(r.expires && r.ttl == 7);
    assert!(got[5].ping.is_some());
    let p = &got[6].presence.as_ref().unwrap().presence["c1"];
    assert_eq!((p.user.as_str(), p.client.as_str()), ("u", "c1"));
    assert_eq!(&p.chan_info[..], b"\"ci\"");
    let ps = got[7].presence_stats.as_ref().unwrap();
    assert_eq!((ps.num_clients, ps.num_users), (3, u32::MAX));
    assert_eq!(&got[8].rpc.as_ref().unwrap().data[..], b"[1, 2]");
    let u = got[9].push.as_ref().unwrap();
    let unsub = u.unsubscribe.as_ref().unwrap();
    assert_eq!(
        (u.channel.as_str(), unsub.code, unsub.reason.as_str()),
        ("news", 2501, "subscription expired")
    );
    let join = got[10].push.as_ref().unwrap().join.as_ref().unwrap();
    assert_eq!(join.info.as_ref().unwrap().client, "c1");
    let leave = got[11].push.as_ref().unwrap().leave.as_ref().unwrap();
    assert_eq!(leave.info.as_ref().unwrap().user, "u");
    let refresh = got[12].push.as_ref().unwrap().refresh.as_ref().unwrap();
    assert!(refresh.expires && refresh.ttl == 9);
    let s = got[13].push.as_ref().unwrap().subscribe.as_ref().unwrap();
    assert!(s.recoverable && s.positioned);
    assert_eq!((s.epoch.as_str(), s.offset), ("ep", 2));
}

#[test]
fn a_publication_that_is_not_herald_json_is_an_encode_error() {
    assert!(publication_push("a", b"{\"offset\":1}").is_err());
    assert!(publication_push("a", b"\xff").is_err());
    let r = Reply::ok(
        1,
        ReplyResult::History(HistoryResult {
            publications: vec![raw("[]")],
            ..HistoryResult::default()
        }),
    );
    assert!(encode_reply(&r).is_err());
}

// ---- malformed input ------------------------------------------------------------

#[test]
fn malformed_frames_are_clean_errors() {
    let err = |bytes: &[u8]| decode_commands(Bytes::copy_from_slice(bytes), LIMIT).unwrap_err();
    // Truncated length varint (continuation bit set, nothing follows).
    assert!(matches!(err(&[0x80]), DecodeError::Length(_)));
    assert!(matches!(
        err(&[0x02, 0x08, 0x01, 0x80]),
        DecodeError::Length(_)
    ));
    // A varint longer than ten bytes.
    assert!(matches!(err(&[0xff; 11]), DecodeError::Length(_)));
    // Length past the end of the frame, small and huge.
    assert!(matches!(
        err(&[0x05, 0x08, 0x01]),
        DecodeError::PastEnd { len: 5, left: 2 }
    ));
    let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    assert!(matches!(err(&huge), DecodeError::PastEnd { .. }));
    // A good command then a truncated one: the whole frame is refused.
    assert!(matches!(
        err(&[0x02, 0x08, 0x01, 0x03, 0x08]),
        DecodeError::PastEnd { .. }
    ));
    // Wrong wire types: `id` (1) sent as length-delimited, `connect` (4) as
    // a varint.
    assert!(matches!(
        err(&[0x03, 0x0a, 0x01, b'x']),
        DecodeError::Command(_)
    ));
    assert!(matches!(err(&[0x02, 0x20, 0x01]), DecodeError::Command(_)));
    // A string field that is not UTF-8.
    assert!(matches!(
        err(&[0x05, 0x32, 0x03, 0x0a, 0x01, 0xff]),
        DecodeError::Command(_)
    ));
    // A nested message whose length runs past its parent.
    assert!(matches!(
        err(&[0x04, 0x22, 0x09, 0x0a, 0x01]),
        DecodeError::Command(_)
    ));
    // Wire type 7 does not exist; group wire types are refused.
    assert!(matches!(err(&[0x02, 0x0f, 0x00]), DecodeError::Command(_)));
    assert!(matches!(err(&[0x01, 0x0b]), DecodeError::Command(_)));
    // Nothing at all.
    assert!(matches!(err(&[]), DecodeError::Empty));
    for e in [
        err(&[0x80]),
        err(&[0x05]),
        err(&[0x02, 0x20, 0x01]),
        err(&[]),
    ] {
        assert_eq!(e.disconnect(), Disconnect::BAD_REQUEST);
    }
}

#[test]
fn unknown_fields_are_ignored() {
    // Command { id = 7, field 99 (varint) = 5, presence (8) = { channel (1) =
    //   "a", field 20 (len) = "zz" }, field 16 (fixed32) }
    let body = [
        0x08, 0x07, 0x98, 0x06, 0x05, 0x42, 0x08, 0x0a, 0x01, b'a', 0xa2, 0x01, 0x02, b'z', b'z',
        0x85, 0x01, 1, 2, 3, 4,
    ];
    let mut bytes = vec![body.len() as u8];
    bytes.extend_from_slice(&body);
    let mut cmds = decode_commands(Bytes::from(bytes), LIMIT).unwrap();
    assert_eq!(cmds[0].id, 7);
    assert!(matches!(cmds.remove(0).method(), Ok(Method::Presence(r)) if r.channel == "a"));
    // Reserved v1 fields (method 2, params 3) are unknown fields too.
    let mut cmds = decode_commands(
        Bytes::from_static(&[0x06, 0x08, 0x01, 0x10, 0x07, 0x1a, 0x00]),
        LIMIT,
    )
    .unwrap();
    assert_eq!(
        cmds.remove(0).method().unwrap_err(),
        ProtocolError::MethodNotFound
    );
}

#[test]
fn frames_are_bounded_like_json() {
    let limit = 30;
    // Over the size limit: 1009, as a JSON frame.
    let big = Bytes::from(vec![0u8; limit + 1]);
    let e = decode_commands(big, limit).unwrap_err();
    assert!(matches!(e, DecodeError::TooBig(31)));
    assert_eq!(e.disconnect(), Disconnect::MESSAGE_TOO_BIG);
    assert_eq!(e.disconnect().code, 1009);
    // As many commands as a JSON frame of the limit holds: accepted; one
    // more: 3501. (Empty commands are one byte, a JSON one at least three.)
    let max = crate::protocol::max_commands(limit);
    assert_eq!(max, 10);
    assert_eq!(
        decode_commands(Bytes::from(vec![0u8; max]), limit)
            .unwrap()
            .len(),
        max
    );
    let e = decode_commands(Bytes::from(vec![0u8; max + 1]), limit).unwrap_err();
    assert!(matches!(e, DecodeError::TooManyCommands(10)));
    assert_eq!(e.disconnect(), Disconnect::BAD_REQUEST);
}

#[test]
fn no_input_panics() {
    // Every prefix and every one-byte corruption of a valid frame, and a run
    // of pseudo-random frames: each decodes or fails cleanly.
    let valid = frame(&[
        pb::Command {
            id: 1,
            connect: Some(pb::ConnectRequest {
                token: "tok".into(),
                subs: [("a".to_owned(), pb::SubscribeRequest::default())].into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        pb::Command {
            id: 2,
            history: Some(pb::HistoryRequest {
                channel: "a".into(),
                since: Some(pb::StreamPosition::default()),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]);
    let mut inputs: Vec<Vec<u8>> = (0..valid.len()).map(|n| valid[..n].to_vec()).collect();
    for i in 0..valid.len() {
        for b in [0x00, 0x7f, 0x80, 0xff] {
            let mut v = valid.to_vec();
            v[i] = b;
            inputs.push(v);
        }
    }
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..2000 {
        let len = (seed % 64) as usize;
        let mut v = Vec::with_capacity(len);
        for _ in 0..len {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            v.push((seed >> 56) as u8);
        }
        inputs.push(v);
    }
    let mut ok = 0;
    for input in inputs {
        if let Ok(cmds) = decode_commands(Bytes::from(input), LIMIT) {
            ok += 1;
            for c in cmds {
                let _ = c.method();
            }
        }
    }
    // Some inputs are valid (the prefix that ends after the first command),
    // so the loop did reach the decoder's success path too.
    assert!(ok > 0);
}
