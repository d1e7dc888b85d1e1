//! The AgentRun sub-resources (`cancel`, `logs`, `events`) against the real server, real
//! `/bin/sh` agents and the real store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TestServer, eventually};
use serde_json::{Value, json};

const NS: &str = "default";
const DEADLINE: Duration = Duration::from_secs(60);

async fn server_without_controller() -> TestServer {
    TestServer::start_with(|c| c.controller.enabled = false).await
}

async fn server() -> TestServer {
    TestServer::start_with(|c| c.controller.enabled = true).await
}

/// An AgentProvider running `/bin/sh -c SCRIPT` and an Agent `name` using it.
async fn agent(t: &TestServer, name: &str, script: &str) {
    let p = json!({"apiVersion": "agentplane.dev/v1alpha1", "kind": "AgentProvider",
        "metadata": {"name": format!("{name}-sh")},
        "spec": {"binary": "/bin/sh", "argsTemplate": ["-c", script]}});
    let (code, v) = t.post(NS, "agentproviders", &p).await;
    assert_eq!(code, 201, "{v}");
    let a = json!({"apiVersion": "agentplane.dev/v1alpha1", "kind": "Agent", "metadata": {"name": name},
        "spec": {"providerRef": {"name": format!("{name}-sh")}}});
    let (code, v) = t.post(NS, "agents", &a).await;
    assert_eq!(code, 201, "{v}");
}

async fn submit(t: &TestServer, name: &str, agent: &str) -> Value {
    let r = json!({"apiVersion": "agentplane.dev/v1alpha1", "kind": "AgentRun", "metadata": {"name": name},
        "spec": {"agentRef": {"name": agent}, "implementation": {"inline": {"text": "do it"}}, "retryLimit": 0}});
    let (code, v) = t.post(NS, "agentruns", &r).await;
    assert_eq!(code, 201, "{v}");
    v
}

async fn get_run(t: &TestServer, name: &str) -> Value {
    let (code, v) = t.get(&t.item(NS, "agentruns", name)).await;
    assert_eq!(code, 200, "{v}");
    v
}

async fn phase_is(t: &TestServer, name: &str, phases: &[&str]) -> Value {
    eventually(DEADLINE, || async {
        let v = get_run(t, name).await;
        phases.iter().any(|p| v["status"]["phase"] == *p).then_some(v)
    })
    .await
}

async fn finished(t: &TestServer, name: &str) -> Value {
    phase_is(t, name, &["Succeeded", "Failed", "Cancelled"]).await
}

fn sub(t: &TestServer, name: &str, what: &str) -> String {
    format!("{}/{what}", t.item(NS, "agentruns", name))
}

async fn cancel(t: &TestServer, name: &str) -> (u16, Value) {
    let r = t.client.post(sub(t, name, "cancel")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// `(action, actor)` of the run's ledger entries, in order.
async fn ledger(t: &TestServer, run: &str) -> Vec<(String, String)> {
    let (code, v) = t.get(&t.url(&format!("/api/v1/ledger/entries?run={run}"))).await;
    assert_eq!(code, 200, "{v}");
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let actor = format!("{}:{}", e["actor"]["kind"].as_str().unwrap(), e["actor"]["id"].as_str().unwrap());
            (e["action"].as_str().unwrap().to_string(), actor)
        })
        .collect()
}

async fn events(t: &TestServer, name: &str) -> Vec<Value> {
    let (code, v) = t.get(&sub(t, name, "events")).await;
    assert_eq!(code, 200, "{v}");
    v["items"].as_array().unwrap().clone()
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn condition<'a>(run: &'a Value, type_: &str) -> Option<&'a Value> {
    run["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

/// A server-sent event as a client sees it.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    event: String,
    data: String,
}

/// Reads a `text/event-stream` reply event by event.
struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    async fn open(t: &TestServer, url: &str) -> SseReader {
        let resp = t.client.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        SseReader { resp, buf: String::new() }
    }

    /// The next event; `None` when the stream ends.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data: Vec<&str> = Vec::new();
                for line in block.lines() {
                    if line.starts_with(':') || line.is_empty() {
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => event = value.to_string(),
                        "data" => data.push(value),
                        _ => {}
                    }
                }
                if data.is_empty() {
                    continue; // a comment (keep-alive)
                }
                return Some(Sse { event, data: data.join("\n") });
            }
            let chunk = tokio::time::timeout(DEADLINE, self.resp.chunk()).await.expect("no event before the deadline");
            match chunk.unwrap() {
                Some(bytes) => self.buf.push_str(std::str::from_utf8(&bytes).unwrap()),
                None => return None,
            }
        }
    }

    /// Every event up to the end of the stream.
    async fn rest(&mut self) -> Vec<Sse> {
        let mut all = Vec::new();
        while let Some(e) = self.next().await {
            all.push(e);
        }
        all
    }
}

fn log_text(events: &[Sse]) -> String {
    events.iter().filter(|e| e.event == "log").map(|e| e.data.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// cancel

#[tokio::test]
async fn cancel_of_a_pending_run_cancels_it_and_records_who() {
    let t = server_without_controller().await;
    agent(&t, "idle", "true").await;
    submit(&t, "r1", "idle").await;

    let (code, v) = cancel(&t, "r1").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["result"], "cancelled", "{v}");
    assert_eq!(v["run"]["status"]["phase"], "Cancelled", "{v}");

    let run = get_run(&t, "r1").await;
    let st = &run["status"];
    assert_eq!(st["phase"], "Cancelled", "{run}");
    assert!(st["finishedAt"].is_string(), "{run}");
    assert_eq!(st["cancelRequestedBy"], "user:bootstrap-admin", "{run}");
    let c = condition(&run, "Cancelled").expect("a Cancelled condition");
    assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("True"), Some("Cancelled")), "{run}");
    assert_eq!(c["message"], "cancelled by user:bootstrap-admin", "{run}");
    let c = condition(&run, "InProgress").expect("an InProgress condition");
    assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("False"), Some("Cancelled")), "{run}");
    assert!(condition(&run, "Blocked").is_none(), "{run}");
    // The spec is untouched.
    assert_eq!(run["spec"]["implementation"]["inline"]["text"], "do it", "{run}");

    let entries = ledger(&t, "r1").await;
    assert_eq!(
        entries.iter().filter(|e| e.0 == "run.cancelled").collect::<Vec<_>>(),
        vec![&("run.cancelled".to_string(), "user:bootstrap-admin".to_string())],
        "{entries:?}"
    );
    let evs = events(&t, "r1").await;
    assert_eq!(types(&evs), ["Submitted", "Cancelled"], "{evs:?}");
    assert_eq!(evs[1]["actor"], "user:bootstrap-admin");

    // Cancelling again changes nothing.
    let before = get_run(&t, "r1").await;
    let (code, v) = cancel(&t, "r1").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["result"], "alreadyFinished", "{v}");
    assert_eq!(v["message"], "agentrun/r1 already finished (phase Cancelled); nothing to cancel", "{v}");
    assert_eq!(get_run(&t, "r1").await["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"]);
    assert_eq!(ledger(&t, "r1").await.len(), entries.len());
    t.stop().await;
}

#[tokio::test]
async fn cancel_of_a_finished_run_changes_nothing() {
    let t = server().await;
    agent(&t, "quick", "echo done").await;
    submit(&t, "r-done", "quick").await;
    let done = finished(&t, "r-done").await;
    assert_eq!(done["status"]["phase"], "Succeeded", "{done}");
    let entries = ledger(&t, "r-done").await;

    let (code, v) = cancel(&t, "r-done").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["result"], "alreadyFinished", "{v}");
    assert_eq!(v["message"], "agentrun/r-done already finished (phase Succeeded); nothing to cancel", "{v}");
    assert_eq!(v["run"]["metadata"]["resourceVersion"], done["metadata"]["resourceVersion"], "{v}");
    let after = get_run(&t, "r-done").await;
    assert_eq!(after, done);
    assert_eq!(ledger(&t, "r-done").await, entries, "no ledger entry for a cancel that did nothing");
    t.stop().await;
}

#[tokio::test]
async fn sub_resources_of_a_missing_run_are_404() {
    let t = server_without_controller().await;
    let (code, v) = cancel(&t, "nope").await;
    assert_eq!(code, 404, "{v}");
    assert_eq!(v["code"], "NotFound", "{v}");
    for what in ["logs", "logs?follow=true", "events"] {
        let (code, v) = t.get(&sub(&t, "nope", what)).await;
        assert_eq!(code, 404, "{what}: {v}");
        assert_eq!(v["code"], "NotFound", "{what}: {v}");
    }
    // GET on cancel is not a thing; bad query parameters are named.
    let (code, v) = t.get(&sub(&t, "nope", "cancel")).await;
    assert_eq!(code, 405, "{v}");
    agent(&t, "idle", "true").await;
    submit(&t, "r", "idle").await;
    for (q, field) in [("tailBytes=-1", Some("tailBytes")), ("follow=maybe", Some("follow")), ("since=1h", None)] {
        let (code, v) = t.get(&sub(&t, "r", &format!("logs?{q}"))).await;
        assert_eq!(code, 400, "{q}: {v}");
        assert_eq!(v["field"].as_str(), field, "{q}: {v}");
    }
    // The object itself is still served at its own path.
    assert_eq!(get_run(&t, "r").await["metadata"]["name"], "r");
    t.stop().await;
}

/// The half of cancelling a running run that the API does: 202, `cancelRequestedAt/By`, one
/// `run.cancel_requested` entry however many times it is asked.
#[tokio::test]
async fn cancel_of_a_running_run_is_accepted_and_recorded_once() {
    let t = server().await;
    agent(&t, "sleeper", "sleep 30").await;
    submit(&t, "r-long", "sleeper").await;
    phase_is(&t, "r-long", &["Running"]).await;

    let (code, v) = cancel(&t, "r-long").await;
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["result"], "cancelling", "{v}");
    assert_eq!(v["message"], "the run is being stopped (SIGTERM, then SIGKILL after the grace period)", "{v}");
    let st = &v["run"]["status"];
    assert!(st["cancelRequestedAt"].is_string(), "{v}");
    assert_eq!(st["cancelRequestedBy"], "user:bootstrap-admin", "{v}");

    let (code, again) = cancel(&t, "r-long").await;
    if again["result"] == "cancelling" {
        assert_eq!(code, 202, "{again}");
        assert_eq!(again["run"]["status"]["cancelRequestedAt"], st["cancelRequestedAt"], "{again}");
    } else {
        // The controller was quick and the run is already Cancelled.
        assert_eq!((code, again["result"].as_str()), (200, Some("alreadyFinished")), "{again}");
    }
    let requested: Vec<_> = ledger(&t, "r-long").await.into_iter().filter(|e| e.0 == "run.cancel_requested").collect();
    assert_eq!(requested, vec![("run.cancel_requested".to_string(), "user:bootstrap-admin".to_string())]);
    let evs = events(&t, "r-long").await;
    assert_eq!(&types(&evs)[..3], ["Submitted", "Started", "CancelRequested"], "{evs:?}");
    t.stop().await;
}

/// Needs the controller's half (it acts on `status.cancelRequestedAt`): until that lands this
/// fails, because the agent runs its 30 s and Succeeds.
#[tokio::test]
async fn cancel_of_a_running_run_stops_it() {
    let t = server().await;
    agent(&t, "sleeper", "sleep 30").await;
    submit(&t, "r-stop", "sleeper").await;
    phase_is(&t, "r-stop", &["Running"]).await;
    let (code, v) = cancel(&t, "r-stop").await;
    assert_eq!(code, 202, "{v}");
    let run = finished(&t, "r-stop").await;
    assert_eq!(run["status"]["phase"], "Cancelled", "{run}");
    let evs = events(&t, "r-stop").await;
    assert_eq!(types(&evs), ["Submitted", "Started", "CancelRequested", "Cancelled"], "{evs:?}");
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// logs

#[tokio::test]
async fn logs_of_a_finished_run_and_their_tail() {
    let t = server().await;
    agent(&t, "talker", "echo line1; echo line2 >&2; printf 'last, no newline'").await;
    submit(&t, "r-talk", "talker").await;
    assert_eq!(finished(&t, "r-talk").await["status"]["phase"], "Succeeded");

    let r = t.client.get(sub(&t, "r-talk", "logs")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    let size: usize = r.headers()["x-agentplane-log-size"].to_str().unwrap().parse().unwrap();
    let full = r.text().await.unwrap();
    assert_eq!(full.len(), size);
    assert!(full.contains("line1\nline2\nlast, no newline"), "{full:?}");
    // It is the file the runtime wrote.
    let on_disk =
        std::fs::read_to_string(t.data_dir().join("runs").join(NS).join("r-talk").join(".agent/runner.log")).unwrap();
    assert_eq!(full, on_disk);

    let r = t.client.get(sub(&t, "r-talk", "logs?tailBytes=10")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), full[full.len() - 10..]);
    let r = t.client.get(sub(&t, "r-talk", "logs?tailBytes=100000")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), full);
    t.stop().await;
}

#[tokio::test]
async fn logs_of_a_run_that_has_not_started_are_empty() {
    let t = server_without_controller().await;
    agent(&t, "idle", "true").await;
    submit(&t, "r-wait", "idle").await;
    let r = t.client.get(sub(&t, "r-wait", "logs")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "");
    t.stop().await;
}

/// The spec's agent: three lines 0.3 s apart, followed from the start to the `end` event.
#[tokio::test]
async fn logs_follow_receives_lines_written_over_time_and_the_end() {
    let t = server().await;
    agent(&t, "ticker", "for i in 1 2 3; do echo line$i; sleep 0.3; done").await;
    submit(&t, "r-tick", "ticker").await;
    let mut sse = SseReader::open(&t, &sub(&t, "r-tick", "logs?follow=true")).await;
    let all = sse.rest().await;
    let text = log_text(&all);
    let (a, b, c) = (text.find("line1\n").unwrap(), text.find("line2\n").unwrap(), text.find("line3\n").unwrap());
    assert!(a < b && b < c, "{text:?}");
    let end = all.last().unwrap();
    assert_eq!(end.event, "end", "{all:?}");
    assert_eq!(serde_json::from_str::<Value>(&end.data).unwrap(), json!({"phase": "Succeeded", "exitCode": 0}));
    assert_eq!(all.iter().filter(|e| e.event == "end").count(), 1, "{all:?}");
    t.stop().await;
}

/// Text arrives while the run is still running: the agent prints line1, then waits for the test
/// to have seen it before printing the rest.
#[tokio::test]
async fn logs_follow_streams_output_before_the_run_ends() {
    let t = server().await;
    let gate = t.dir.path().join("go");
    let script = format!(
        "echo line1; while [ ! -e '{}' ]; do sleep 0.05; done; echo line2; printf 'é\\r\\nend'",
        gate.display()
    );
    agent(&t, "gated", &script).await;
    submit(&t, "r-gate", "gated").await;
    // Accept: text/event-stream asks for the stream without ?follow.
    let resp = t.client.get(sub(&t, "r-gate", "logs")).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut sse = SseReader { resp, buf: String::new() };
    let mut seen = String::new();
    while !seen.contains("line1\n") {
        let ev = sse.next().await.expect("the stream ended before line1");
        assert_eq!(ev.event, "log", "{ev:?}");
        seen.push_str(&ev.data);
    }
    assert_eq!(get_run(&t, "r-gate").await["status"]["phase"], "Running");
    std::fs::write(&gate, "").unwrap();
    let rest = sse.rest().await;
    seen.push_str(&log_text(&rest));
    assert!(seen.ends_with("line1\nline2\né\nend"), "{seen:?}");
    assert_eq!(rest.last().map(|e| e.event.as_str()), Some("end"), "{rest:?}");
    t.stop().await;
}

/// A big log is sent in pieces of at most 64 KiB, all of it, then `end`.
#[tokio::test]
async fn logs_follow_of_a_finished_run_with_a_big_log_is_chunked() {
    let t = server().await;
    agent(&t, "big", "head -c 300000 /dev/zero | tr '\\0' x; echo").await;
    submit(&t, "r-big", "big").await;
    assert_eq!(finished(&t, "r-big").await["status"]["phase"], "Succeeded");
    let mut sse = SseReader::open(&t, &sub(&t, "r-big", "logs?follow=1")).await;
    let all = sse.rest().await;
    let logs: Vec<&Sse> = all.iter().filter(|e| e.event == "log").collect();
    assert!(logs.len() >= 5, "{} log events", logs.len());
    assert!(logs.iter().all(|e| e.data.len() <= 64 * 1024), "an event over 64 KiB");
    let text = log_text(&all);
    assert_eq!(text.matches('x').count(), 300_000);
    assert_eq!(all.last().unwrap().event, "end");

    let plain = t.client.get(sub(&t, "r-big", "logs")).send().await.unwrap().text().await.unwrap();
    assert_eq!(plain, text, "the followed text is the file's");
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// events

#[tokio::test]
async fn events_of_a_succeeded_and_a_failed_run() {
    let t = server().await;
    agent(&t, "ok", "true").await;
    agent(&t, "bad", "exit 3").await;
    submit(&t, "r-ok", "ok").await;
    submit(&t, "r-bad", "bad").await;
    finished(&t, "r-ok").await;
    finished(&t, "r-bad").await;

    let evs = events(&t, "r-ok").await;
    assert_eq!(types(&evs), ["Submitted", "Started", "Succeeded"], "{evs:?}");
    assert_eq!(evs[0]["actor"], "user:bootstrap-admin");
    assert_eq!(evs[1]["actor"], "system:controller");
    assert_eq!(evs[1]["attempt"], 1);
    assert_eq!(evs[2]["attempt"], 1);
    let seqs: Vec<u64> = evs.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for e in &evs {
        assert!(chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap()).is_ok(), "{e}");
    }

    let evs = events(&t, "r-bad").await;
    assert_eq!(types(&evs), ["Submitted", "Started", "Failed"], "{evs:?}");
    assert_eq!(evs[2]["reason"], "NonZeroExit", "{evs:?}");
    assert!(evs[2]["message"].as_str().unwrap().contains('3'), "{evs:?}");
    t.stop().await;
}

/// A run deleted and created again under the same name does not inherit the old one's events.
#[tokio::test]
async fn events_belong_to_this_run_not_an_earlier_one_of_the_same_name() {
    let t = server_without_controller().await;
    agent(&t, "idle", "true").await;
    submit(&t, "again", "idle").await;
    assert_eq!(cancel(&t, "again").await.0, 200);
    assert_eq!(types(&events(&t, "again").await), ["Submitted", "Cancelled"]);
    let (code, v) = t.delete(NS, "agentruns", "again").await;
    assert_eq!(code, 200, "{v}");
    submit(&t, "again", "idle").await;
    assert_eq!(types(&events(&t, "again").await), ["Submitted"]);
    t.stop().await;
}

/// Open descriptors of this process (the test runs the server in-process) on `path`.
#[cfg(target_os = "linux")]
fn open_fds_on(path: &std::path::Path) -> usize {
    let want = std::fs::canonicalize(path).unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| *p == want)
        .count()
}

/// A client that goes away while following does not leave the log (or anything else) open.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_follower_that_disconnects_lets_go_of_the_log() {
    let t = server().await;
    let gate = t.dir.path().join("go");
    agent(&t, "holder", &format!("echo hi; while [ ! -e '{}' ]; do sleep 0.05; done", gate.display())).await;
    submit(&t, "r-hold", "holder").await;
    let log = t.data_dir().join("runs").join(NS).join("r-hold").join(".agent/runner.log");
    let mut sse = SseReader::open(&t, &sub(&t, "r-hold", "logs?follow=true")).await;
    let first = sse.next().await.unwrap();
    assert_eq!((first.event.as_str(), first.data.contains("hi")), ("log", true), "{first:?}");
    // The runtime's log pump holds the file too; the follower adds one.
    let following = open_fds_on(&log);
    assert!(following >= 1);
    drop(sse);
    eventually(DEADLINE, || async { (open_fds_on(&log) < following).then_some(()) }).await;
    std::fs::write(&gate, "").unwrap();
    assert_eq!(finished(&t, "r-hold").await["status"]["phase"], "Succeeded");
    t.stop().await;
}
