//! The sans-IO client: resend timing, failover order, reply acceptance, the bound on requests
//! in flight, and (by property) that every request ends exactly once whatever the network does.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use dqe_core::Millis;
use dqe_core::client::{
    Client, ClientConfig, Entry, Event, Finished, Ignored, NEVER, Outcome, Received, Schedule,
    Silence, StartError, Transmit,
};
use dqe_core::hash::{key_of, word_value};
use dqe_core::wire::{self, Body, ClientRequest, Envelope, MAX_DATAGRAM, Reason, Reply};
use proptest::prelude::*;

fn portal(i: u16) -> SocketAddr {
    ([127, 0, 0, 1], 8101 + 10 * i).into()
}

fn portals(n: u16) -> Vec<SocketAddr> {
    (0..n).map(portal).collect()
}

fn test_of(word: &str) -> ClientRequest {
    ClientRequest::Test {
        key: key_of(&word_value(word.as_bytes())),
    }
}

type Vc = Client<Vec<SocketAddr>, Vec<Entry>>;

fn client(config: ClientConfig, n: u16, slots: usize) -> Vc {
    Client::new(config, portals(n), vec![Entry::EMPTY; slots])
}

/// Every datagram waiting, decoded.
fn transmits(c: &mut Vc) -> Vec<(Transmit, Envelope)> {
    let mut out = Vec::new();
    let mut buf = [0u8; MAX_DATAGRAM];
    while let Some(t) = c.poll_transmit(&mut buf) {
        out.push((t, wire::decode(&buf[..t.len]).unwrap()));
    }
    out
}

fn events(c: &mut Vc) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn reply(to: &Envelope, body: Body) -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM];
    wire::encode(&to.reply(body), &mut buf).unwrap().to_vec()
}

/// Run with nobody answering until the client has nothing left to wait for; every send with
/// its time, and every event.
fn run_silent(c: &mut Vc, mut now: Millis) -> (Vec<(Millis, Transmit, Envelope)>, Vec<Event>) {
    let (mut sent, mut evs) = (Vec::new(), Vec::new());
    loop {
        sent.extend(transmits(c).into_iter().map(|(t, e)| (now, t, e)));
        evs.extend(events(c));
        let Some(next) = c.poll_timeout() else {
            return (sent, evs);
        };
        assert!(next >= now, "a deadline in the past");
        now = next;
        c.handle_timeout(now);
    }
}

#[test]
fn resends_back_off_then_the_portal_is_given_up() {
    let mut c = client(ClientConfig::default(), 1, 4);
    let h = c.start(1_000, 7, test_of("a"), 0).unwrap();
    let (sent, evs) = run_silent(&mut c, 1_000);
    let times: Vec<Millis> = sent.iter().map(|s| s.0 - 1_000).collect();
    assert_eq!(
        times,
        [0, 200, 600, 1_400],
        "200 ms, then doubling up to 800 ms"
    );
    assert!(
        sent.iter().all(|s| s.2.id == 7),
        "every resend reuses the id"
    );
    assert_eq!(
        sent.iter().map(|s| s.1.resend).collect::<Vec<_>>(),
        [false, true, true, true]
    );
    assert_eq!(
        evs,
        [
            Event::PassedOver {
                request: h,
                portal: 0,
                why: Silence::NoAnswer {
                    sends: 4,
                    waited: 2_000
                }
            },
            Event::Finished(Finished {
                request: h,
                id: 7,
                asked: test_of("a"),
                started: 1_000,
                outcome: Outcome::Unanswered
            })
        ]
    );
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn a_send_limit_stops_resends_and_never_waits_forever_on_a_timer() {
    let schedule = Schedule {
        first_resend: 500,
        max_gap: 500,
        max_sends: 3,
        per_portal: NEVER,
    };
    let config = ClientConfig {
        schedule,
        ..ClientConfig::default()
    };
    let mut c = client(config, 1, 1);
    c.start(0, 1, test_of("b"), 0).unwrap();
    let (sent, evs) = run_silent(&mut c, 0);
    assert_eq!(
        sent.iter().map(|s| s.0).collect::<Vec<_>>(),
        [0, 500, 1_000]
    );
    assert!(evs.is_empty(), "still waiting for a reply");
    assert_eq!(c.poll_timeout(), None);
    assert_eq!(c.in_flight(), 1);
}

#[test]
fn failover_asks_portals_in_list_order_from_the_first_with_one_id() {
    let mut c = client(ClientConfig::default(), 3, 2);
    let h = c.start(0, 99, test_of("c"), 1).unwrap();
    let (sent, evs) = run_silent(&mut c, 0);
    let firsts: Vec<(Millis, SocketAddr)> = sent
        .iter()
        .filter(|s| !s.1.resend)
        .map(|s| (s.0, s.1.to))
        .collect();
    assert_eq!(
        firsts,
        [(0, portal(1)), (2_000, portal(2)), (4_000, portal(0))]
    );
    assert!(sent.iter().all(|s| s.2.id == 99));
    let passed: Vec<usize> = evs
        .iter()
        .filter_map(|e| match e {
            Event::PassedOver {
                request, portal, ..
            } if *request == h => Some(*portal),
            _ => None,
        })
        .collect();
    assert_eq!(passed, [1, 2, 0]);
    assert!(matches!(
        evs.last(),
        Some(Event::Finished(Finished {
            outcome: Outcome::Unanswered,
            ..
        }))
    ));
}

#[test]
fn one_portal_per_request_means_no_failover() {
    let config = ClientConfig {
        portals_per_request: 1,
        ..ClientConfig::default()
    };
    let mut c = client(config, 3, 1);
    c.start(0, 5, test_of("d"), 2).unwrap();
    let (sent, _) = run_silent(&mut c, 0);
    assert!(sent.iter().all(|s| s.1.to == portal(2)));
}

#[test]
fn an_unreachable_portal_is_left_at_once() {
    let mut c = client(ClientConfig::default(), 2, 1);
    let h = c.start(0, 5, test_of("e"), 0).unwrap();
    let (t, _) = transmits(&mut c).remove(0);
    assert_eq!(t.to, portal(0));
    c.unreachable(3, h);
    let next = transmits(&mut c);
    assert_eq!(next.len(), 1);
    assert_eq!((next[0].0.to, next[0].0.resend), (portal(1), false));
    assert_eq!(
        events(&mut c),
        [Event::PassedOver {
            request: h,
            portal: 0,
            why: Silence::Unreachable
        }]
    );
}

#[test]
fn a_found_whose_value_does_not_hash_to_the_key_is_ignored() {
    let v = word_value(b"f");
    let asked = ClientRequest::Set {
        key: key_of(&v),
        value: v,
    };
    let mut c = client(ClientConfig::default(), 1, 1);
    let h = c.start(0, 11, asked, 0).unwrap();
    let (_, env) = transmits(&mut c).remove(0);
    let forged = reply(&env, Body::Found { value: [1; 20] });
    assert_eq!(
        c.handle(10, portal(0), &forged),
        Received::Ignored(Ignored::BadFound)
    );
    assert!(events(&mut c).is_empty(), "still in flight");
    assert_eq!(
        c.handle(20, portal(0), &reply(&env, Body::Found { value: v })),
        Received::Answer(h)
    );
    let [Event::Finished(f)] = events(&mut c)[..] else {
        panic!()
    };
    assert_eq!(
        f.outcome,
        Outcome::Answered {
            portal: 0,
            reply: Reply::Found { value: v }
        }
    );
}

#[test]
fn a_portal_that_only_forges_found_is_named_as_misbehaving() {
    let mut c = client(ClientConfig::default(), 1, 1);
    c.start(0, 12, test_of("g"), 0).unwrap();
    let (_, env) = transmits(&mut c).remove(0);
    for t in [1, 2] {
        c.handle(t, portal(0), &reply(&env, Body::Found { value: [2; 20] }));
    }
    let (_, evs) = run_silent(&mut c, 2);
    assert!(matches!(
        evs[0],
        Event::PassedOver {
            why: Silence::BadFound {
                replies: 2,
                waited: 2_000
            },
            ..
        }
    ));
}

/// Issue 15: a reply that does not echo the request's cluster tag (rule 2) comes from a node
/// of another cluster (or a forger), not from our request's portal: it is no answer, and a
/// portal that sends only such replies is named, with the tag it sent.
#[test]
fn a_reply_that_does_not_echo_our_cluster_tag_is_ignored_and_named() {
    let config = ClientConfig {
        cluster: 0x1111_2222,
        ..ClientConfig::default()
    };
    let mut c = client(config, 2, 1);
    let h = c.start(0, 31, test_of("tag"), 0).unwrap();
    let (_, env) = transmits(&mut c).remove(0);
    assert_eq!(env.cluster, 0x1111_2222);
    let foreign = reply(
        &Envelope {
            cluster: 0x3333_4444,
            ..env
        },
        Body::NotFound,
    );
    for t in [1, 2] {
        assert_eq!(
            c.handle(t, portal(0), &foreign),
            Received::Ignored(Ignored::ForeignCluster { tag: 0x3333_4444 })
        );
    }
    c.handle_timeout(2_000);
    let evs = events(&mut c);
    assert_eq!(
        evs[..],
        [Event::PassedOver {
            request: h,
            portal: 0,
            why: Silence::ForeignCluster {
                ours: 0x1111_2222,
                theirs: 0x3333_4444,
                replies: 2,
                waited: 2_000
            }
        }]
    );
    // The next portal is asked, and its echoing reply is the answer.
    let (_, next) = transmits(&mut c)
        .into_iter()
        .find(|(t, _)| t.portal == 1)
        .unwrap();
    assert_eq!(
        c.handle(2_001, portal(1), &reply(&next, Body::NotFound)),
        Received::Answer(h)
    );
    // A client of any cluster (tag 0) accepts any echo of 0 only.
    let mut any = client(ClientConfig::default(), 1, 1);
    any.start(0, 32, test_of("any"), 0).unwrap();
    let (_, env) = transmits(&mut any).remove(0);
    let tagged = reply(&Envelope { cluster: 7, ..env }, Body::NotFound);
    assert_eq!(
        any.handle(1, portal(0), &tagged),
        Received::Ignored(Ignored::ForeignCluster { tag: 7 })
    );
}

#[test]
fn replies_from_another_address_or_for_another_id_are_ignored() {
    let mut c = client(ClientConfig::default(), 2, 2);
    let h = c.start(0, 21, test_of("h"), 0).unwrap();
    let (_, env) = transmits(&mut c).remove(0);
    let good = reply(&env, Body::NotFound);
    assert_eq!(
        c.handle(1, portal(1), &good),
        Received::Ignored(Ignored::WrongSource),
        "another portal of the client, but not the one asked"
    );
    let other_id = reply(&Envelope { id: 22, ..env }, Body::NotFound);
    assert_eq!(
        c.handle(1, portal(0), &other_id),
        Received::Ignored(Ignored::UnknownId)
    );
    assert_eq!(
        c.handle(1, portal(0), &[1, 2, 3]),
        Received::Ignored(Ignored::Undecodable)
    );
    let mut buf = [0u8; MAX_DATAGRAM];
    let request = wire::encode(&env, &mut buf).unwrap().to_vec();
    assert_eq!(
        c.handle(1, portal(0), &request),
        Received::Ignored(Ignored::NotAReply)
    );
    assert!(events(&mut c).is_empty());
    assert_eq!(c.handle(2, portal(0), &good), Received::Answer(h));
    assert_eq!(events(&mut c).len(), 1);
    assert_eq!(
        c.handle(3, portal(0), &good),
        Received::Ignored(Ignored::UnknownId),
        "a duplicate reply after the request finished"
    );
}

#[test]
fn the_table_bounds_requests_in_flight_and_refuses_beyond_it() {
    let mut c = client(ClientConfig::default(), 1, 2);
    c.start(0, 1, test_of("i"), 0).unwrap();
    assert_eq!(
        c.start(0, 1, test_of("j"), 0),
        Err(StartError::IdInUse { id: 1 })
    );
    c.start(0, 2, test_of("j"), 0).unwrap();
    let full = c.start(0, 3, test_of("k"), 0).unwrap_err();
    assert_eq!(full, StartError::Full { capacity: 2 });
    assert!(full.to_string().contains("2 requests already in flight"));
    assert_eq!(
        c.start(0, 4, test_of("k"), 5),
        Err(StartError::NoSuchPortal {
            portal: 5,
            portals: 1
        })
    );
    // A finished request frees its entry once its event is taken, not before.
    let sent = transmits(&mut c);
    c.handle(1, portal(0), &reply(&sent[0].1, Body::NotFound));
    assert!(matches!(
        c.start(1, 3, test_of("k"), 0),
        Err(StartError::Full { .. })
    ));
    assert_eq!(events(&mut c).len(), 1);
    c.start(1, 3, test_of("k"), 0).unwrap();
    let mut none = Client::new(ClientConfig::default(), portals(1), Vec::new());
    assert_eq!(
        none.start(0, 1, test_of("l"), 0),
        Err(StartError::Full { capacity: 0 })
    );
}

#[test]
fn busy_and_wrong_cluster_move_on_and_are_the_answer_only_when_nothing_better_came() {
    let config = ClientConfig {
        cluster: 0xabcd,
        ..ClientConfig::default()
    };
    let mut c = client(config, 3, 1);
    let h = c.start(0, 31, test_of("m"), 0).unwrap();
    let (_, env) = transmits(&mut c).remove(0);
    assert_eq!(env.cluster, 0xabcd, "requests carry the configured tag");
    let busy = Body::Refused {
        reason: Reason::Busy,
    };
    c.handle(1, portal(0), &reply(&env, busy));
    let (t, env) = transmits(&mut c).remove(0);
    assert_eq!(t.to, portal(1));
    assert_eq!(
        events(&mut c),
        [Event::PassedOver {
            request: h,
            portal: 0,
            why: Silence::Busy
        }]
    );
    let foreign = Body::Refused {
        reason: Reason::WrongCluster,
    };
    c.handle(2, portal(1), &reply(&env, foreign));
    assert_eq!(
        events(&mut c),
        [Event::PassedOver {
            request: h,
            portal: 1,
            why: Silence::WrongCluster { tag: 0xabcd }
        }]
    );
    // The last portal is silent: the best answer heard is Busy.
    let (_, evs) = run_silent(&mut c, 2);
    let Some(Event::Finished(f)) = evs.last() else {
        panic!("{evs:?}")
    };
    assert_eq!(
        f.outcome,
        Outcome::Answered {
            portal: 0,
            reply: Reply::Refused {
                reason: Reason::Busy
            }
        }
    );
    // A definitive answer from a later portal wins over both.
    let h = c.start(10_000, 32, test_of("n"), 0).unwrap();
    let (_, env) = transmits(&mut c).remove(0);
    c.handle(10_001, portal(0), &reply(&env, foreign));
    transmits(&mut c);
    events(&mut c);
    c.handle(10_002, portal(1), &reply(&env, Body::NotFound));
    let evs = events(&mut c);
    assert_eq!(
        evs.last(),
        Some(&Event::Finished(Finished {
            request: h,
            id: 32,
            asked: test_of("n"),
            started: 10_000,
            outcome: Outcome::Answered {
                portal: 1,
                reply: Reply::NotFound
            }
        }))
    );
}

#[test]
fn epochs_follow_the_one_rule() {
    use dqe_core::client::epoch_of;
    assert_eq!(epoch_of(1_764_115_200, 86_400), 20_418);
    assert_eq!(epoch_of(59, 60), 0);
    assert_eq!(epoch_of(60, 60), 1);
}

/// What the simulated network does with one datagram.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Lost,
    Answer { delay: Millis, body: u8 },
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        2 => Just(Fate::Lost),
        3 => (0..3_000u64, 0..6u8).prop_map(|(delay, body)| Fate::Answer { delay, body }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever is lost, delayed, forged or refused: every request started ends with exactly
    /// one `Finished`, at most `capacity` are held, every send carries its request's id and
    /// goes to the portal it asks, no portal gets more than `max_sends` or sends closer than
    /// `first_resend` apart, and a `Found` reported always hashes to the key.
    #[test]
    fn every_request_ends_once_whatever_the_network_does(
        starts in proptest::collection::vec((0..2_000u64, 0..3usize), 1..64),
        fates in proptest::collection::vec(fate(), 64),
        capacity in 1..40usize,
        max_sends in 1..5u32,
    ) {
        let schedule = Schedule { first_resend: 100, max_gap: 400, max_sends, per_portal: 900 };
        let config = ClientConfig { schedule, ..ClientConfig::default() };
        let mut c = client(config, 3, capacity);
        let mut pending: BTreeMap<(Millis, u64), (SocketAddr, Vec<u8>)> = BTreeMap::new();
        let mut started: HashMap<u64, ClientRequest> = HashMap::new();
        let mut finished: HashMap<u64, Outcome> = HashMap::new();
        let mut sends: HashMap<(u64, SocketAddr), Vec<Millis>> = HashMap::new();
        let mut asking: HashMap<u64, SocketAddr> = HashMap::new();
        let mut starts = starts;
        starts.sort();
        let (mut now, mut seq, mut next_fate, mut next_id) = (0u64, 0u64, 0usize, 1u64);
        let mut i = 0;
        for _ in 0..10_000 {
            // Start what is due.
            while i < starts.len() && starts[i].0 <= now {
                let asked = test_of(&format!("w{next_id}"));
                match c.start(now, next_id, asked, starts[i].1) {
                    Ok(_) => { started.insert(next_id, asked); }
                    Err(StartError::Full { capacity: cap }) => {
                        prop_assert_eq!(cap, capacity);
                        prop_assert_eq!(c.in_flight(), capacity);
                    }
                    Err(e) => prop_assert!(false, "{e}"),
                }
                next_id += 1;
                i += 1;
            }
            prop_assert!(c.in_flight() <= capacity);
            for (t, env) in transmits(&mut c) {
                prop_assert!(started.contains_key(&env.id));
                prop_assert!(!finished.contains_key(&env.id), "a send after the end");
                prop_assert_eq!(Body::from(started[&env.id]), env.body);
                asking.insert(env.id, t.to);
                let times = sends.entry((env.id, t.to)).or_default();
                if let Some(last) = times.last() {
                    prop_assert!(now - last >= 100, "resent after {} ms", now - last);
                }
                times.push(now);
                prop_assert!(times.len() <= max_sends as usize);
                let f = fates[next_fate % fates.len()];
                next_fate += 1;
                if let Fate::Answer { delay, body } = f {
                    let body = match body {
                        0 => Body::NotFound,
                        1 => Body::Stored,
                        2 => Body::Found { value: [9; 20] },
                        3 => Body::Refused { reason: Reason::Busy },
                        4 => Body::Refused { reason: Reason::WrongCluster },
                        _ => Body::Refused { reason: Reason::Unavailable },
                    };
                    seq += 1;
                    pending.insert((now + delay, seq), (t.to, reply(&env, body)));
                }
            }
            for e in events(&mut c) {
                if let Event::Finished(f) = e {
                    prop_assert!(finished.insert(f.id, f.outcome).is_none(), "finished twice");
                    prop_assert_eq!(f.asked, started[&f.id]);
                    if let Outcome::Answered { reply: Reply::Found { value }, .. } = f.outcome {
                        prop_assert!(dqe_core::hash::matches(&f.asked.key(), &value));
                    }
                }
            }
            // The next thing to happen.
            let next = [
                pending.keys().next().map(|k| k.0),
                c.poll_timeout(),
                starts.get(i).map(|s| s.0),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next else { break };
            prop_assert!(next >= now);
            now = next;
            while let Some(entry) = pending.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let (from, bytes) = entry.remove();
                let id = wire::decode(&bytes).unwrap().id;
                let r = c.handle(now, from, &bytes);
                if asking.get(&id) != Some(&from) || finished.contains_key(&id) {
                    prop_assert!(matches!(r, Received::Ignored(_)), "{:?}", r);
                }
            }
            c.handle_timeout(now);
        }
        prop_assert_eq!(finished.len(), started.len(), "every request ends");
        prop_assert_eq!(c.in_flight(), 0);
    }
}
