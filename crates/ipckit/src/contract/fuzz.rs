//! The contract fuzz target (`ipckit::fuzzing::contract`): a body as a server receives it
//! and as a client receives a reply or an event.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::wire::{self, Kind, Reply};
use super::{Event, Method, NoError, Object, OneWay, Service};

/// `add(a, b)`, the method every contract example starts from; the unit tests call it
/// too.
#[derive(Serialize, Deserialize)]
pub(super) struct Add {
    pub(super) a: i64,
    pub(super) b: i64,
}

impl Method for Add {
    const NAME: &'static str = "add";
    type Output = i64;
    type Error = NoError;
}

#[derive(Serialize, Deserialize)]
struct Echo {
    text: String,
    times: Option<u8>,
}

impl Method for Echo {
    const NAME: &'static str = "echo";
    type Output = String;
    type Error = String;
}

#[derive(Serialize, Deserialize)]
struct Log {
    line: String,
}

impl OneWay for Log {
    const NAME: &'static str = "log";
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Said {
    text: String,
}

impl Event for Said {
    const NAME: &'static str = "said";
}

/// The service the target answers with (and the unit tests of `service` use).
pub(super) fn service() -> &'static Service {
    static SERVICE: OnceLock<Service> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let mut service = Service::new();
        let object = Object::new()
            .method(|_: &(), args: Add| Ok(args.a.wrapping_add(args.b)))
            .method(|_: &(), args: Echo| match args.times {
                Some(0) => Err("zero times".to_string()),
                times => Ok(args.text.repeat(usize::from(times.unwrap_or(1)))),
            })
            .oneway(|_: &(), _: Log| {})
            .event::<Said>();
        service.shared("calc", object, ());
        service.shared("other", Object::<()>::new(), ());
        service
    })
}

/// Bodies that a peer can send: answered by a service as a server would, read as a reply
/// and as an event. The service always answers a two-way body with a reply its clients
/// can read, answers a call it could not read with a `bad_call` or `codec` failure, and
/// adds as the method says.
pub(crate) fn run(data: &[u8]) {
    if let Some(answer) = service().answer(None, data) {
        let reply = wire::parse_reply(&answer).expect("an answer that is no reply");
        let call = wire::parse_call(data);
        match (&reply, &call) {
            (Reply::Failed(failure, _), Err(_)) => {
                assert!(matches!(failure.kind, Kind::BadCall | Kind::Codec))
            }
            (_, Err(e)) => panic!("an unreadable call was answered: {e}"),
            (_, Ok(call)) if *call.method == *b"add" => {
                if let (Reply::Ok(sum), Ok(args)) = (&reply, call.codec.decode::<Add>(call.args)) {
                    assert_eq!(
                        call.codec.decode::<i64>(sum),
                        Ok(args.a.wrapping_add(args.b))
                    );
                }
            }
            _ => {}
        }
    }
    let _ = wire::parse_reply(data);
    if let Ok(event) = wire::parse_event(data) {
        if let Ok(said) = event.codec.decode::<Said>(event.data) {
            let object = event.object.as_deref().unwrap_or("calc");
            let again = wire::event(event.codec, object, &event.name, &said).unwrap();
            let back = wire::parse_event(&again).unwrap();
            assert_eq!(back.codec.decode::<Said>(back.data), Ok(said));
        }
    }
}

/// Valid bodies, made by the encoders.
pub(crate) fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for codec in [wire::Codec::Json, wire::Codec::Postcard] {
        seeds.push(wire::call(codec, Some("calc"), "add", &Add { a: 2, b: 3 }).unwrap());
        let echo = Echo {
            text: "hi".into(),
            times: Some(2),
        };
        seeds.push(wire::call(codec, None, "echo", &echo).unwrap());
        seeds.push(wire::event(codec, "calc", "said", &Said { text: "x".into() }).unwrap());
        seeds.push(wire::ok(codec, &5i64).unwrap());
    }
    seeds.push(br#"{"object":"calc","method":"ipckit.describe"}"#.to_vec());
    seeds.push(
        br#"{"object":"calc","method":"ipckit.subscribe","args":{"events":["said"]}}"#.to_vec(),
    );
    seeds
}
