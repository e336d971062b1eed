//! What "diverged" means: the first difference between what the live build and the new build
//! did with the same recorded inputs, in what users and other systems observe. In order: a
//! request the recording could not answer, the failure (its kind: a trap's message names code
//! offsets that differ between any two builds), the response status, its headers (but `date`),
//! its body, the data the committed transactions left (and the keys they deleted, read or
//! not), the outbound requests (method, URL, body) and the queue sends. The order of host
//! calls, logs and timings are not compared.

use super::run::Observed;
use crate::record::tape::show_bytes;
use crate::record::trace::Output;

/// The first difference, as `what: live build …, new build …`.
pub fn first_difference(live: &Observed, new: &Observed) -> Option<String> {
    if let Some(divergence) = &new.divergence {
        return Some(divergence.clone());
    }
    let differ = |what: &str, live: String, new: String| Some(format!("{what}: live build {live}, new build {new}"));
    let failure = |output: &Output| output.failure.as_ref().map(|failure| failure.kind.clone());
    if failure(&live.output) != failure(&new.output) {
        let show = |kind: Option<String>| kind.unwrap_or_else(|| "no failure".into());
        return differ("failure", show(failure(&live.output)), show(failure(&new.output)));
    }
    let status = |output: &Output| output.response.as_ref().map(|response| response.status);
    if status(&live.output) != status(&new.output) {
        let show = |status: Option<u16>| status.map_or_else(|| "no response".into(), |status| status.to_string());
        return differ("status", show(status(&live.output)), show(status(&new.output)));
    }
    let (live_headers, new_headers) = (headers(&live.output), headers(&new.output));
    if live_headers != new_headers {
        let (name, live_value, new_value) = first_header_difference(&live_headers, &new_headers);
        return differ(&format!("header {name}"), live_value, new_value);
    }
    if live.output.body != new.output.body {
        return differ("body", show_bytes(&live.output.body), show_bytes(&new.output.body));
    }
    if live.data != new.data {
        let keys = live.data.keys().chain(new.data.keys());
        let key = keys.filter(|key| live.data.get(*key) != new.data.get(*key)).min().expect("the maps differ");
        let show = |value: Option<&Option<Vec<u8>>>| match value {
            None => "nothing".into(),
            Some(None) => "deleted it".into(),
            Some(Some(value)) => show_bytes(value),
        };
        return differ(&format!("data {}", show_bytes(key)), show(live.data.get(key)), show(new.data.get(key)));
    }
    let outbound = |observed: &Observed| -> Vec<String> {
        observed.effects.outbound.iter().map(|(request, body)| format!("{request} {}", show_bytes(body))).collect()
    };
    if let Some((live_request, new_request)) = first_of_lists(&outbound(live), &outbound(new)) {
        return differ("outbound request", live_request, new_request);
    }
    if let Some((live_send, new_send)) = first_of_lists(&live.effects.sends, &new.effects.sends) {
        return differ("queue send", live_send, new_send);
    }
    None
}

/// The response headers that count, in a stable order (names lowercase, as a trace keeps them).
fn headers(output: &Output) -> Vec<(String, Vec<u8>)> {
    let mut headers: Vec<(String, Vec<u8>)> = output
        .response
        .iter()
        .flat_map(|response| response.headers.iter().cloned())
        .filter(|(name, _)| name != "date")
        .collect();
    headers.sort();
    headers
}

fn first_header_difference(live: &[(String, Vec<u8>)], new: &[(String, Vec<u8>)]) -> (String, String, String) {
    let value = |headers: &[(String, Vec<u8>)], name: &str| {
        let values: Vec<String> = headers.iter().filter(|(n, _)| n == name).map(|(_, v)| show_bytes(v)).collect();
        if values.is_empty() { "absent".to_string() } else { values.join(", ") }
    };
    let names = live.iter().chain(new).map(|(name, _)| name.as_str());
    let name = names.filter(|name| value(live, name) != value(new, name)).min().unwrap_or_default().to_string();
    (name.clone(), value(live, &name), value(new, &name))
}

/// The first place two lists differ: an element each, or one side's extra element.
fn first_of_lists(live: &[String], new: &[String]) -> Option<(String, String)> {
    let none = || "none".to_string();
    (0..live.len().max(new.len())).find_map(|at| {
        let (l, n) = (live.get(at), new.get(at));
        (l != n).then(|| (l.cloned().unwrap_or_else(none), n.cloned().unwrap_or_else(none)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tape::Effects;
    use crate::record::trace::RecordedResponse;

    fn observed(status: u16, headers: &[(&str, &str)], body: &str) -> Observed {
        Observed {
            output: Output {
                response: Some(RecordedResponse {
                    status,
                    headers: headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect(),
                }),
                body: body.as_bytes().to_vec(),
                ..Output::default()
            },
            effects: Effects::default(),
            data: Default::default(),
            divergence: None,
            overflowed: false,
        }
    }

    #[test]
    fn the_date_and_the_header_order_do_not_count_and_the_first_difference_is_named() {
        let live = observed(200, &[("date", "Mon"), ("a", "1"), ("b", "2")], "hi");
        let same = observed(200, &[("b", "2"), ("a", "1"), ("date", "Tue")], "hi");
        assert_eq!(first_difference(&live, &same), None);
        let header = observed(200, &[("a", "1"), ("b", "3")], "hi");
        assert_eq!(first_difference(&live, &header).unwrap(), "header b: live build \"2\", new build \"3\"");
        let body = observed(200, &[("a", "1"), ("b", "2")], "ho");
        assert_eq!(first_difference(&live, &body).unwrap(), "body: live build \"hi\", new build \"ho\"");
        let mut wrote = observed(200, &[("a", "1"), ("b", "2")], "hi");
        wrote.data.insert(b"f/x/k".to_vec(), Some(b"v".to_vec()));
        assert_eq!(first_difference(&live, &wrote).unwrap(), "data \"f/x/k\": live build nothing, new build \"v\"");
        let mut deleted = observed(200, &[("a", "1"), ("b", "2")], "hi");
        deleted.data.insert(b"f/x/gone".to_vec(), None);
        assert_eq!(
            first_difference(&live, &deleted).unwrap(),
            "data \"f/x/gone\": live build nothing, new build deleted it"
        );
        let mut sent = observed(200, &[("a", "1"), ("b", "2")], "hi");
        sent.effects.sends.push("send".into());
        assert_eq!(first_difference(&live, &sent).unwrap(), "queue send: live build none, new build send");
    }
}
