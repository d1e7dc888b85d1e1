//! Public behaviour of the scheduler core: caps and their order, messages, oldest-first, retries,
//! rebuilds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentplane_api::condition::ConditionStatus;
use agentplane_control::{
    AgentKey, CapKind, Caps, Error, OrderKey, QueuedRun, RunKey, RunState, RunningRun, Scheduler, blocked_condition,
};
use chrono::{DateTime, Duration, TimeZone, Utc};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap()
}

fn key(ns: &str, name: &str) -> RunKey {
    RunKey::new(ns, name)
}

fn run(ns: &str, name: &str, agent: &str, seq: u64) -> QueuedRun {
    QueuedRun::new(key(ns, name), agent, OrderKey::from_seq(seq))
}

fn names(d: &[agentplane_control::Dispatch]) -> Vec<String> {
    d.iter().map(|d| d.key.to_string()).collect()
}

#[test]
fn default_caps_are_agent_5_namespace_10_cluster_100() {
    assert_eq!(Caps::default(), Caps { per_namespace: 10, cluster: 100, default_per_agent: 5 });
    let c: Caps = serde_json::from_str(r#"{"cluster": 7}"#).unwrap();
    assert_eq!(c, Caps { per_namespace: 10, cluster: 7, default_per_agent: 5 });
    assert!(serde_json::from_str::<Caps>(r#"{"perAgent": 1}"#).is_err(), "unknown keys are errors");
}

#[test]
fn agent_cap_blocks_first_with_a_message_naming_it() {
    let mut s = Scheduler::new(Caps::default());
    for i in 0..7 {
        s.enqueue(run("default", &format!("r{i}"), "coder", i)).unwrap();
    }
    let started = s.dispatch(t0());
    assert_eq!(names(&started), ["default/r0", "default/r1", "default/r2", "default/r3", "default/r4"]);
    assert_eq!(started[0].agent, AgentKey::new("default", "coder"));
    let b = s.blocked_reason(&key("default", "r5")).unwrap();
    assert_eq!(b.cap, CapKind::Agent);
    assert_eq!((b.in_flight, b.limit), (5, 5));
    assert_eq!(b.message, "agent default/coder has 5 of 5 runs in flight (maxInFlight)");
    assert_eq!(s.state(&key("default", "r5")), Some(RunState::Queued));
    assert_eq!(s.state(&key("default", "r0")), Some(RunState::InFlight));
    assert_eq!(s.blocked_reason(&key("default", "r0")), None, "in-flight runs are not blocked");
}

#[test]
fn agent_max_in_flight_overrides_the_default() {
    let mut s = Scheduler::new(Caps::default());
    for i in 0..4 {
        s.enqueue(run("default", &format!("r{i}"), "solo", i).with_max_in_flight(2)).unwrap();
    }
    assert_eq!(s.dispatch(t0()).len(), 2);
    assert_eq!(
        s.blocked_reason(&key("default", "r2")).unwrap().message,
        "agent default/solo has 2 of 2 runs in flight (maxInFlight)"
    );
    // Raising the cap on a live agent lets more start at the next dispatch.
    s.set_agent_cap(&AgentKey::new("default", "solo"), Some(3));
    assert_eq!(names(&s.dispatch(t0())), ["default/r2"]);
    // `None` means the default (5).
    s.set_agent_cap(&AgentKey::new("default", "solo"), None);
    assert_eq!(names(&s.dispatch(t0())), ["default/r3"]);
}

#[test]
fn namespace_cap_is_checked_after_the_agent_cap() {
    let mut s = Scheduler::new(Caps::default());
    // Three agents of 5 in team-a: 15 runs want to start, the namespace allows 10.
    let mut seq = 0;
    for agent in ["a", "b", "c"] {
        for i in 0..6 {
            s.enqueue(run("team-a", &format!("{agent}{i}"), agent, seq)).unwrap();
            seq += 1;
        }
    }
    let started = s.dispatch(t0());
    assert_eq!(started.len(), 10);
    // Oldest first: all of a's first five (a5 is over a's cap), then b's first five.
    assert_eq!(
        names(&started),
        (0..5).map(|i| format!("team-a/a{i}")).chain((0..5).map(|i| format!("team-a/b{i}"))).collect::<Vec<_>>()
    );
    assert_eq!(s.namespace_in_flight("team-a"), 10);
    // a5: its agent is full, which is checked first.
    assert_eq!(s.blocked_reason(&key("team-a", "a5")).unwrap().cap, CapKind::Agent);
    // c0: its agent has room; the namespace does not.
    let b = s.blocked_reason(&key("team-a", "c0")).unwrap();
    assert_eq!(b.cap, CapKind::Namespace);
    assert_eq!(b.message, "namespace team-a has 10 of 10 runs in flight");
    // Another namespace is unaffected.
    s.enqueue(run("team-b", "x", "a", 100)).unwrap();
    assert_eq!(names(&s.dispatch(t0())), ["team-b/x"]);
    // b0 finishing frees one namespace slot: a5 (seq 5) is older but a is still full, so the
    // oldest startable run is b5 (seq 11), ahead of c0 (seq 12).
    assert!(s.finished(&key("team-a", "b0")));
    assert_eq!(names(&s.dispatch(t0())), ["team-a/b5"]);
    assert!(s.finished(&key("team-a", "a0")));
    // a has room now and a5 (seq 5) is older than c0 (seq 12).
    assert_eq!(names(&s.dispatch(t0())), ["team-a/a5"]);
    assert!(s.finished(&key("team-a", "a1")));
    assert_eq!(names(&s.dispatch(t0())), ["team-a/c0"]);
}

#[test]
fn cluster_cap_is_checked_last() {
    let mut s = Scheduler::new(Caps { per_namespace: 2, cluster: 3, default_per_agent: 1 });
    for (i, ns) in ["n1", "n2", "n3", "n4"].iter().enumerate() {
        s.enqueue(run(ns, "r", "a", i as u64)).unwrap();
        s.enqueue(run(ns, "r2", "b", 10 + i as u64)).unwrap();
    }
    let started = s.dispatch(t0());
    assert_eq!(names(&started), ["n1/r", "n2/r", "n3/r"]);
    assert_eq!(s.in_flight(), 3);
    let b = s.blocked_reason(&key("n4", "r")).unwrap();
    assert_eq!(b.cap, CapKind::Cluster);
    assert_eq!(b.message, "cluster has 3 of 3 runs in flight");
    // With the cluster full, a dispatch starts nothing.
    assert!(s.dispatch(t0()).is_empty());
    s.finished(&key("n2", "r"));
    assert_eq!(names(&s.dispatch(t0())), ["n4/r"], "the oldest waiting run anywhere goes next");
}

#[test]
fn blocked_condition_is_blocked_concurrency_limit() {
    let mut s = Scheduler::new(Caps { per_namespace: 10, cluster: 100, default_per_agent: 1 });
    s.enqueue(run("default", "r0", "coder", 0)).unwrap();
    s.enqueue(run("default", "r1", "coder", 1)).unwrap();
    s.dispatch(t0());
    let b = s.blocked_reason(&key("default", "r1")).unwrap();
    let c = blocked_condition(&b, t0());
    assert_eq!(c.type_, "Blocked");
    assert_eq!(c.status, ConditionStatus::True);
    assert_eq!(c.reason, "ConcurrencyLimit");
    assert_eq!(c.message, "agent default/coder has 1 of 1 runs in flight (maxInFlight)");
    assert_eq!(c.last_transition_time, Some(t0()));
    assert_eq!(b.condition(t0()), c);
}

#[test]
fn newly_blocked_lists_each_waiting_run_once() {
    let mut s = Scheduler::new(Caps { per_namespace: 10, cluster: 100, default_per_agent: 1 });
    s.enqueue(run("default", "r0", "coder", 0)).unwrap();
    s.enqueue(run("default", "r1", "coder", 1)).unwrap();
    s.enqueue(run("default", "r2", "coder", 2)).unwrap();
    s.dispatch(t0());
    let nb: Vec<String> = s.newly_blocked().iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(nb, ["default/r1", "default/r2"]);
    assert_eq!(s.newly_blocked()[0].1, s.blocked_reason(&key("default", "r1")).unwrap());
    // Nothing new: the next dispatch reports nothing again.
    s.dispatch(t0());
    assert!(s.newly_blocked().is_empty());
    s.enqueue(run("default", "r3", "coder", 3)).unwrap();
    s.dispatch(t0());
    assert_eq!(s.newly_blocked().len(), 1);
    assert_eq!(s.newly_blocked()[0].0, key("default", "r3"));
    // A run removed since is not reported.
    assert!(s.remove(&key("default", "r3")));
    assert!(s.newly_blocked().is_empty());
}

#[test]
fn retry_waits_for_not_before_then_keeps_its_place() {
    let mut s = Scheduler::new(Caps { per_namespace: 10, cluster: 100, default_per_agent: 1 });
    s.enqueue(run("default", "old", "coder", 0)).unwrap();
    assert_eq!(names(&s.dispatch(t0())), ["default/old"]);
    s.enqueue(run("default", "new", "coder", 1)).unwrap();
    // `old` fails; it is retried in 10 s. Its capacity is freed at once, so `new` starts.
    let retry_at = t0() + Duration::seconds(10);
    assert!(s.requeue_at(run("default", "old", "coder", 0), retry_at));
    assert_eq!(s.state(&key("default", "old")), Some(RunState::Delayed { not_before: retry_at }));
    assert_eq!(s.next_wakeup(), Some(retry_at));
    assert_eq!(names(&s.dispatch(t0())), ["default/new"]);
    s.enqueue(run("default", "newer", "coder", 2)).unwrap();
    s.finished(&key("default", "new"));
    // Before its time `old` is ignored even though it is older.
    assert_eq!(names(&s.dispatch(t0() + Duration::seconds(9))), ["default/newer"]);
    s.enqueue(run("default", "newest", "coder", 3)).unwrap();
    s.finished(&key("default", "newer"));
    // At its time it goes ahead of younger runs.
    assert_eq!(names(&s.dispatch(retry_at)), ["default/old"]);
    assert_eq!(s.next_wakeup(), None);
    assert_eq!(s.blocked_reason(&key("default", "newest")).unwrap().cap, CapKind::Agent);
}

#[test]
fn a_delayed_run_is_not_blocked_and_can_be_removed() {
    let mut s = Scheduler::new(Caps::default());
    s.enqueue(run("default", "r", "coder", 0).with_not_before(t0() + Duration::seconds(5))).unwrap();
    assert_eq!(s.blocked_reason(&key("default", "r")), None);
    assert!(s.dispatch(t0()).is_empty());
    assert!(s.remove(&key("default", "r")));
    assert!(s.dispatch(t0() + Duration::seconds(60)).is_empty());
    assert_eq!(s.counts(), Default::default());
}

#[test]
fn remove_and_finished_only_touch_their_own_states() {
    let mut s = Scheduler::new(Caps { per_namespace: 10, cluster: 100, default_per_agent: 1 });
    s.enqueue(run("default", "r0", "coder", 0)).unwrap();
    s.enqueue(run("default", "r1", "coder", 1)).unwrap();
    s.enqueue(run("default", "r2", "coder", 2)).unwrap();
    s.dispatch(t0());
    assert!(!s.remove(&key("default", "r0")), "in flight: cancel it, then finished");
    assert!(!s.finished(&key("default", "r1")), "pending: remove it");
    assert!(!s.finished(&key("default", "nope")));
    assert!(s.remove(&key("default", "r1")));
    assert!(!s.remove(&key("default", "r1")));
    assert!(s.finished(&key("default", "r0")));
    assert!(!s.finished(&key("default", "r0")), "finishing twice frees capacity once");
    assert_eq!(names(&s.dispatch(t0())), ["default/r2"]);
    assert!(s.finished(&key("default", "r2")));
    assert_eq!(s.counts(), Default::default(), "idle agents and namespaces are dropped");
}

#[test]
fn duplicates_are_rejected() {
    let mut s = Scheduler::new(Caps::default());
    s.enqueue(run("default", "r", "coder", 0)).unwrap();
    let err = s.enqueue(run("default", "r", "coder", 0)).unwrap_err();
    assert_eq!(err, Error::DuplicateRun { key: key("default", "r"), state: "queued" });
    assert_eq!(err.to_string(), "run default/r is already queued in the scheduler");
    s.dispatch(t0());
    let err = s.running(RunningRun::new(key("default", "r"), "coder")).unwrap_err();
    assert_eq!(err, Error::DuplicateRun { key: key("default", "r"), state: "in flight" });
    // Same name in another namespace is another run.
    s.enqueue(run("other", "r", "coder", 1)).unwrap();
}

#[test]
fn rebuild_counts_running_runs_even_beyond_a_cap() {
    // The store says 3 runs of coder are Running, but its cap is now 2.
    let running = (0..3).map(|i| RunningRun::new(key("default", &format!("live{i}")), "coder").with_max_in_flight(2));
    let pending = vec![
        run("default", "p1", "coder", 10).with_max_in_flight(2),
        run("default", "p0", "other", 5),
        run("default", "retry", "other", 1).with_not_before(t0() + Duration::seconds(30)),
    ];
    let mut s = Scheduler::rebuild(Caps::default(), running, pending).unwrap();
    assert_eq!(s.agent_in_flight(&AgentKey::new("default", "coder")), 3);
    let started = s.dispatch(t0());
    assert_eq!(names(&started), ["default/p0"]);
    let b = s.blocked_reason(&key("default", "p1")).unwrap();
    assert_eq!(b.message, "agent default/coder has 3 of 2 runs in flight (maxInFlight)");
    // The pending runs found blocked after the rebuild are reported for their conditions.
    assert_eq!(s.newly_blocked().iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>(), ["default/p1"]);
    s.finished(&key("default", "live0"));
    assert!(s.dispatch(t0()).is_empty(), "2 of 2 still in flight");
    s.finished(&key("default", "live1"));
    assert_eq!(names(&s.dispatch(t0())), ["default/p1"]);
    assert_eq!(names(&s.dispatch(t0() + Duration::seconds(30))), ["default/retry"]);
}

#[test]
fn rebuild_rejects_a_run_listed_twice() {
    let err = Scheduler::rebuild(
        Caps::default(),
        [RunningRun::new(key("default", "r"), "coder")],
        [run("default", "r", "coder", 0)],
    )
    .unwrap_err();
    assert_eq!(err, Error::DuplicateRun { key: key("default", "r"), state: "in flight" });
}

#[test]
fn a_dispatched_run_that_could_not_start_can_be_handed_back() {
    let mut s = Scheduler::new(Caps { per_namespace: 10, cluster: 1, default_per_agent: 5 });
    s.enqueue(run("default", "r0", "coder", 0)).unwrap();
    s.enqueue(run("default", "r1", "coder", 1)).unwrap();
    assert_eq!(names(&s.dispatch(t0())), ["default/r0"]);
    // The store write failed: hand it back at once; it keeps its place ahead of r1.
    assert!(s.requeue_at(run("default", "r0", "coder", 0), t0()));
    assert_eq!(names(&s.dispatch(t0())), ["default/r0"]);
}

#[test]
fn lowering_caps_never_stops_running_runs_but_stops_new_ones() {
    let mut s = Scheduler::new(Caps::default());
    for i in 0..8 {
        s.enqueue(run("default", &format!("r{i}"), &format!("a{i}"), i)).unwrap();
    }
    assert_eq!(s.dispatch(t0()).len(), 8);
    s.enqueue(run("default", "late", "a0", 100)).unwrap();
    s.set_caps(Caps { per_namespace: 4, ..Caps::default() });
    assert!(s.dispatch(t0()).is_empty());
    assert_eq!(s.in_flight(), 8);
    assert_eq!(
        s.blocked_reason(&key("default", "late")).unwrap().message,
        "namespace default has 8 of 4 runs in flight"
    );
    for i in 0..5 {
        s.finished(&key("default", &format!("r{i}")));
    }
    assert_eq!(names(&s.dispatch(t0())), ["default/late"]);
}

#[test]
fn zero_caps_start_nothing() {
    let mut s = Scheduler::new(Caps { per_namespace: 10, cluster: 0, default_per_agent: 5 });
    s.enqueue(run("default", "r", "coder", 0)).unwrap();
    assert!(s.dispatch(t0()).is_empty());
    assert_eq!(s.blocked_reason(&key("default", "r")).unwrap().message, "cluster has 0 of 0 runs in flight");
    let mut s = Scheduler::new(Caps::default());
    s.enqueue(run("default", "r", "coder", 0).with_max_in_flight(0)).unwrap();
    assert!(s.dispatch(t0()).is_empty());
    assert_eq!(s.blocked_reason(&key("default", "r")).unwrap().cap, CapKind::Agent);
}

#[test]
fn creation_time_orders_before_sequence() {
    let mut s = Scheduler::new(Caps { per_namespace: 10, cluster: 1, default_per_agent: 5 });
    let early = OrderKey::new(t0(), 900);
    let late = OrderKey::new(t0() + Duration::seconds(1), 1);
    s.enqueue(QueuedRun::new(key("default", "late"), "a", late)).unwrap();
    s.enqueue(QueuedRun::new(key("default", "early"), "b", early)).unwrap();
    assert_eq!(names(&s.dispatch(t0())), ["default/early"]);
}

#[test]
fn a_large_backlog_dispatches_only_what_caps_allow() {
    // 100,000 waiting runs over 1,000 agents in 50 namespaces. This asserts behaviour, not time:
    // the cost is measured by `examples/dispatch_cost.rs`.
    let mut s = Scheduler::new(Caps::default());
    for i in 0..100_000u64 {
        let ns = format!("ns{}", i % 50);
        s.enqueue(run(&ns, &format!("r{i}"), &format!("agent{}", i % 1000), i)).unwrap();
    }
    let started = s.dispatch(t0());
    assert_eq!(started.len(), 100);
    // Oldest first: seq 0..100 span 100 agents in 50 namespaces (2 per namespace, 1 per agent).
    let mut seqs: Vec<u64> = started.iter().map(|d| d.order.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..100).collect::<Vec<_>>());
    assert_eq!(s.counts().queued, 99_900);
    assert_eq!(s.newly_blocked().len(), 99_900);
    assert!(s.dispatch(t0()).is_empty());
    s.finished(&started[0].key);
    assert_eq!(s.dispatch(t0()).len(), 1);
}
