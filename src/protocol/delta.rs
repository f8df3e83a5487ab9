//! Delta compression of publications, as Centrifugo's `fossil` delta type:
//! the forms a publication takes for a subscription that negotiated deltas.
//!
//! Such a subscription receives each publication either *full* or as a
//! *delta* (a [`fossil`](super::fossil) patch of its data against the data of
//! the publication the subscription received just before). In JSON both
//! carry `data` as a JSON string (the data's JSON text, or the patch), the
//! delta one with `"delta":true`, as Centrifugo writes them and the SDKs
//! expect; in Protobuf `data` is the bytes themselves, a full publication is
//! as any other. Herald builds the JSON form of a delta once and the
//! Protobuf codec reads a publication object that has a `delta` field that
//! way (`protobuf::publication_from_json`).
//!
//! A delta is sent only when it is smaller than the data (as Centrifugo) and
//! is text (UTF-8), so it fits a JSON string in either encoding; otherwise
//! the publication goes full.
//!
//! Knows nothing of subscribers, feeds or which publication came before:
//! the caller hands the base.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::fossil;

/// The one delta type: Fossil's delta format.
pub const FOSSIL: &str = "fossil";

/// What a publication object holds, borrowed.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow, default)]
    info: Option<&'a RawValue>,
    #[serde(default)]
    offset: u64,
    #[serde(borrow, default)]
    tags: Option<&'a RawValue>,
}

/// The data (its JSON text) of a publication object; `None` if it is not one.
pub fn publication_data(publication: &[u8]) -> Option<&[u8]> {
    let e: Envelope<'_> = serde_json::from_slice(publication).ok()?;
    // The borrowed text lies inside `publication`: find it there.
    let text = e.data.get().as_bytes();
    let start = text.as_ptr() as usize - publication.as_ptr() as usize;
    publication.get(start..start + text.len())
}

/// The patch turning `base` into `data` when a delta is worth sending:
/// smaller than `data`, and UTF-8 (a JSON string holds it).
pub fn patch(base: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    let p = fossil::create(base, data);
    (p.len() < data.len() && std::str::from_utf8(&p).is_ok()).then_some(p)
}

/// `publication` (an object as `encode_publication` writes it) in the JSON
/// form a delta subscription receives (without `epoch`, as Centrifugo's):
/// `data` as a JSON string of the
/// data's text, or of `patch` with `"delta":true` (the form the Protobuf
/// codec reads too). `None` if it is not a publication.
pub fn delta_form(publication: &[u8], patch: Option<&[u8]>) -> Option<Bytes> {
    let e: Envelope<'_> = serde_json::from_slice(publication).ok()?;
    let payload = match patch {
        Some(p) => std::str::from_utf8(p).ok()?,
        None => e.data.get(),
    };
    let data = serde_json::to_string(payload).ok()?;
    let mut b = BytesMut::with_capacity(data.len() + 64);
    b.put_slice(br#"{"data":"#);
    b.put_slice(data.as_bytes());
    if let Some(info) = e.info {
        b.put_slice(br#","info":"#);
        b.put_slice(info.get().as_bytes());
    }
    if e.offset > 0 {
        b.put_slice(br#","offset":"#);
        b.put_slice(e.offset.to_string().as_bytes());
    }
    if let Some(tags) = e.tags {
        b.put_slice(br#","tags":"#);
        b.put_slice(tags.get().as_bytes());
    }
    if patch.is_some() {
        b.put_slice(br#","delta":true"#);
    }
    b.put_slice(b"}");
    Some(b.freeze())
}

/// Recovered publications for a delta subscription, as Centrifugo sends
/// them: the first full, each next a delta against the one before when
/// that is smaller. A full one stays as it is for a Protobuf connection
/// (`json` false). One that is not a publication object stays as it is.
pub fn recovered(publications: Vec<Box<RawValue>>, json: bool) -> Vec<Box<RawValue>> {
    let mut base: Option<Vec<u8>> = None;
    publications
        .into_iter()
        .map(|p| {
            let object = p.get().as_bytes();
            let Some(data) = publication_data(object) else {
                base = None;
                return p;
            };
            let patch = base.as_deref().and_then(|b| patch(b, data));
            base = Some(data.to_vec());
            if patch.is_none() && !json {
                return p;
            }
            let form = delta_form(object, patch.as_deref());
            form.and_then(|f| String::from_utf8(f.to_vec()).ok())
                .and_then(|s| RawValue::from_string(s).ok())
                .unwrap_or(p)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encode_publication;

    #[derive(Deserialize)]
    struct Form {
        data: String,
        #[serde(default)]
        delta: bool,
        #[serde(default)]
        offset: u64,
        info: Option<serde_json::Value>,
    }

    fn state(tick: u64) -> Vec<u8> {
        format!(
            r#"{{"tick":{tick},"players":[{{"id":1,"name":"alpha","x":{x}}},{{"id":2,"name":"beta","x":7}}],"status":"running"}}"#,
            x = tick * 3
        )
        .into_bytes()
    }

    #[test]
    fn data_is_found_in_place() {
        let p = encode_publication(br#"{"a":[1, 2]}"#, Some(br#"{"user":"u"}"#), 3, "e");
        assert_eq!(publication_data(&p).unwrap(), br#"{"a":[1, 2]}"#);
        assert!(publication_data(b"not json").is_none());
    }

    #[test]
    fn full_and_delta_forms_carry_data_as_a_string() {
        let (a, b) = (state(1), state(2));
        let p = encode_publication(&b, Some(br#"{"user":"u","client":"c"}"#), 2, "e");
        let full: Form = serde_json::from_slice(&delta_form(&p, None).unwrap()).unwrap();
        assert_eq!(full.data.as_bytes(), &b[..]);
        assert!(!full.delta);
        assert_eq!(full.offset, 2);
        assert_eq!(full.info.unwrap()["user"], "u");
        let patch = patch(&a, &b).expect("a small change gives a smaller delta");
        let d: Form = serde_json::from_slice(&delta_form(&p, Some(&patch)).unwrap()).unwrap();
        assert!(d.delta);
        assert_eq!(fossil::apply(&a, d.data.as_bytes()).unwrap(), b);
    }

    #[test]
    fn no_delta_when_it_would_not_be_smaller() {
        assert!(patch(b"{\"x\":1}", b"{\"x\":2}").is_none(), "tiny data");
        assert!(patch(&state(1), br#"{"completely":"different","n":123456789}"#).is_none());
    }

    #[test]
    fn recovered_publications_go_full_then_delta() {
        let pubs: Vec<Box<RawValue>> = (1..=3)
            .map(|o| {
                let p = encode_publication(&state(o), None, o, "e");
                RawValue::from_string(String::from_utf8(p.to_vec()).unwrap()).unwrap()
            })
            .collect();
        let out = recovered(pubs.clone(), true);
        let forms: Vec<Form> = out
            .iter()
            .map(|p| serde_json::from_str(p.get()).unwrap())
            .collect();
        assert!(!forms[0].delta);
        assert!(forms[1].delta && forms[2].delta);
        let mut prev = forms[0].data.clone().into_bytes();
        assert_eq!(prev, state(1));
        for (f, tick) in forms[1..].iter().zip(2..) {
            prev = fossil::apply(&prev, f.data.as_bytes()).unwrap();
            assert_eq!(prev, state(tick));
        }
        // For Protobuf the full one stays an ordinary publication.
        let out = recovered(pubs, false);
        assert_eq!(
            out[0].get().as_bytes(),
            &encode_publication(&state(1), None, 1, "e")[..]
        );
        assert!(out[1].get().contains(r#""delta":true"#));
    }
}
