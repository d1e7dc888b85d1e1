//! The HTTP API over a real server on a random loopback port. The run controller is off here:
//! these tests check what the API stores and returns, and a controller would move runs on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agentplane_api::Kind;
use common::{TestServer, manifest, run_prerequisites};
use futures::StreamExt;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_every_kind() {
    let t = TestServer::start_with(|c| c.controller.enabled = false).await;
    run_prerequisites(&t, "team-a").await;
    for kind in Kind::ALL {
        let plural = kind.plural();
        let m = manifest(kind.as_str(), "obj-1");
        let (code, created) = t.post("team-a", plural, &m).await;
        assert_eq!(code, 201, "{kind}: {created}");
        assert_eq!(created["kind"], kind.as_str());
        assert_eq!(created["metadata"]["namespace"], "team-a");
        assert_eq!(created["metadata"]["generation"], 1);
        assert!(created["metadata"]["uid"].as_str().is_some_and(|s| s.len() == 36));
        assert!(created["metadata"]["creationTimestamp"].is_string());
        assert!(created.get("status").is_none() || created["status"].is_null() || created["status"].is_object());

        let (code, got) = t.get(&t.item("team-a", plural, "obj-1")).await;
        assert_eq!(code, 200);
        assert_eq!(got, created, "{kind}: get returns what create stored");

        // Apply the same manifest: unchanged. Change a label: configured, generation kept (spec same).
        let (code, result, same) = t.put("team-a", plural, "obj-1", &m).await;
        assert_eq!((code, result.as_deref()), (200, Some("unchanged")), "{kind}");
        assert_eq!(same["metadata"]["resourceVersion"], created["metadata"]["resourceVersion"]);
        let mut relabelled = m.clone();
        relabelled["metadata"]["labels"]["tier"] = json!("gold");
        let (code, result, updated) = t.put("team-a", plural, "obj-1", &relabelled).await;
        assert_eq!((code, result.as_deref()), (200, Some("configured")), "{kind}");
        assert_eq!(updated["metadata"]["generation"], 1);
        assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
        assert_ne!(updated["metadata"]["resourceVersion"], created["metadata"]["resourceVersion"]);

        // Apply a new object: created.
        let (code, result, _) = t.put("team-a", plural, "obj-2", &manifest(kind.as_str(), "obj-2")).await;
        assert_eq!((code, result.as_deref()), (201, Some("created")), "{kind}");

        let (code, list) = t.get(&format!("{}?labelSelector=app%3Dtest", t.coll("team-a", plural))).await;
        assert_eq!(code, 200);
        assert_eq!(list["kind"], format!("{}List", kind.as_str()));
        let names: Vec<&str> =
            list["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["obj-1", "obj-2"], "{kind}");
        let (_, list) = t.get(&format!("{}?labelSelector=tier%3Dgold", t.coll("team-a", plural))).await;
        assert_eq!(list["items"].as_array().unwrap().len(), 1, "{kind} label selector");

        let (code, last) = t.delete("team-a", plural, "obj-1").await;
        assert_eq!(code, 200);
        assert_eq!(last["metadata"]["name"], "obj-1");
        let (code, err) = t.get(&t.item("team-a", plural, "obj-1")).await;
        assert_eq!(code, 404);
        assert_eq!(err["code"], "NotFound");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_change_bumps_generation_and_yaml_bodies_work() {
    let t = TestServer::start_with(|c| c.controller.enabled = false).await;
    let yaml =
        "apiVersion: agentplane.dev/v1alpha1\nkind: Environment\nmetadata:\n  name: prod\nspec:\n  class: production\n";
    let r = t
        .client
        .post(t.coll("default", "environments"))
        .header("content-type", "application/yaml")
        .body(yaml)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["spec"]["maxTakeoverLevel"], 2, "class defaults applied");
    let mut m = v.clone();
    m["spec"]["approvers"] = json!(["alice"]);
    let (code, _, v2) = t.put("default", "environments", "prod", &m).await;
    assert_eq!(code, 200);
    assert_eq!(v2["metadata"]["generation"], 2);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_codes_fields_and_statuses() {
    let t = TestServer::start_with(|c| c.max_body_bytes = 64 * 1024).await;

    // Validation: every error, each with field, reason, limit and actual size.
    let mut m = manifest("ImplementationSpec", "big");
    m["spec"]["summary"] = json!("x".repeat(300));
    m["spec"]["text"] = json!("");
    let (code, e) = t.post("default", "implementationspecs", &m).await;
    assert_eq!(code, 400);
    assert_eq!(e["code"], "ValidationFailed");
    let errs = e["details"]["errors"].as_array().unwrap();
    let summary = errs.iter().find(|x| x["field"] == "spec.summary").unwrap();
    assert_eq!(summary["reason"], "SummaryTooLarge");
    assert_eq!(summary["limit"], 256);
    assert_eq!(summary["actual"], 300);
    assert!(errs.iter().any(|x| x["field"] == "spec.text" && x["reason"] == "Required"));

    // Unknown field, named.
    let mut m = manifest("Agent", "a");
    m["spec"]["providerRf"] = json!({"name": "x"});
    let (code, e) = t.post("default", "agents", &m).await;
    assert_eq!((code, e["field"].as_str()), (400, Some("spec.providerRf")), "{e}");
    assert_eq!(e["details"]["errors"][0]["reason"], "UnknownField");

    // Unknown kind and apiVersion in the body.
    let mut m = manifest("Agent", "a");
    m["apiVersion"] = json!("agentplane.dev/v9");
    let (code, e) = t.post("default", "agents", &m).await;
    assert_eq!((code, e["details"]["errors"][0]["reason"].as_str()), (400, Some("UnknownApiVersion")));
    let mut m = manifest("Agent", "a");
    m["kind"] = json!("Pod");
    let (code, e) = t.post("default", "agents", &m).await;
    assert_eq!((code, e["details"]["errors"][0]["reason"].as_str()), (400, Some("UnknownKind")));
    // A body of another kind than the URL.
    let (code, e) = t.post("default", "agents", &manifest("Tool", "t")).await;
    assert_eq!((code, e["field"].as_str()), (400, Some("kind")));
    // Unknown resource type in the URL.
    let (code, e) = t.get(&t.coll("default", "pods")).await;
    assert_eq!((code, e["code"].as_str()), (404, Some("NotFound")));

    // Invalid YAML names the line.
    let r = t
        .client
        .post(t.coll("default", "agents"))
        .header("content-type", "application/yaml")
        .body("kind: Agent\nmetadata: [\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(e["message"].as_str().unwrap().contains("line"), "{e}");

    // Unsupported content type.
    let r =
        t.client.post(t.coll("default", "agents")).header("content-type", "text/plain").body("x").send().await.unwrap();
    assert_eq!(r.status(), 415);

    // Body over the limit: 413 with a JSON body, with and without Content-Length.
    let mut m = manifest("ImplementationSpec", "huge");
    m["spec"]["text"] = json!("y".repeat(100 * 1024));
    let (code, e) = t.post("default", "implementationspecs", &m).await;
    assert_eq!((code, e["code"].as_str()), (413, Some("PayloadTooLarge")), "{e}");
    assert_eq!(e["details"]["limit"], 64 * 1024);
    let chunks = futures::stream::iter((0..100).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 1024]))));
    let sent = t
        .client
        .post(t.coll("default", "implementationspecs"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    // The server answers 413 as soon as the limit is crossed and closes the connection; a client
    // still sending may see that close (broken pipe) before it reads the answer. Either way
    // nothing was accepted.
    match sent {
        Ok(r) => {
            assert_eq!(r.status(), 413);
            let e: Value = r.json().await.unwrap();
            assert_eq!(e["code"], "PayloadTooLarge");
        }
        Err(e) => assert!(e.is_request() || e.is_body() || e.is_connect(), "unexpected error: {e:?}"),
    }
    assert_eq!(t.get(&t.url("/healthz")).await.0, 200, "the server is unharmed");

    // Already exists; stale resourceVersion.
    let (code, a) = t.post("default", "agents", &manifest("Agent", "a")).await;
    assert_eq!(code, 201);
    let (code, e) = t.post("default", "agents", &manifest("Agent", "a")).await;
    assert_eq!((code, e["code"].as_str()), (409, Some("AlreadyExists")));
    let mut stale = a.clone();
    stale["spec"]["maxInFlight"] = json!(3);
    let (code, _, _) = t.put("default", "agents", "a", &stale).await;
    assert_eq!(code, 200, "CAS with the current version succeeds");
    stale["spec"]["maxInFlight"] = json!(4);
    let (code, _, e) = t.put("default", "agents", "a", &stale).await;
    assert_eq!((code, e["code"].as_str()), (409, Some("Conflict")), "{e}");
    assert_eq!(e["field"], "metadata.resourceVersion");
    let (_, now) = t.get(&t.item("default", "agents", "a")).await;
    assert_eq!(now["spec"]["maxInFlight"], 3, "the stale write changed nothing");

    // Missing resource, for get, put-with-version and delete.
    let (code, e) = t.get(&t.item("default", "agents", "nope")).await;
    assert_eq!((code, e["code"].as_str()), (404, Some("NotFound")));
    let (code, _) = t.delete("default", "agents", "nope").await;
    assert_eq!(code, 404);
    let mut ghost = manifest("Agent", "ghost");
    ghost["metadata"]["resourceVersion"] = json!("5");
    let (code, _, _) = t.put("default", "agents", "ghost", &ghost).await;
    assert_eq!(code, 404);

    // Namespace and name must agree with the URL.
    let mut m = manifest("Agent", "b");
    m["metadata"]["namespace"] = json!("other");
    let (code, e) = t.post("default", "agents", &m).await;
    assert_eq!((code, e["field"].as_str()), (400, Some("metadata.namespace")));
    let (code, _, e) = t.put("default", "agents", "c", &manifest("Agent", "b")).await;
    assert_eq!((code, e["field"].as_str()), (400, Some("metadata.name")));

    // Bad query parameters.
    let (code, e) = t.get(&format!("{}?limit=0", t.coll("default", "agents"))).await;
    assert_eq!((code, e["field"].as_str()), (400, Some("limit")));
    let (code, e) = t.get(&format!("{}?fieldSelector=spec.secret%3Dx", t.coll("default", "agents"))).await;
    assert_eq!((code, e["field"].as_str()), (400, Some("fieldSelector")));
    let (code, e) = t.get(&format!("{}?continue=garbage", t.coll("default", "agents"))).await;
    assert_eq!((code, e["field"].as_str()), (400, Some("continue")));
    let (code, _) = t.get(&format!("{}?colour=red", t.coll("default", "agents"))).await;
    assert_eq!(code, 400);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_name_and_pagination_and_all_namespaces() {
    let t = TestServer::start_with(|c| c.controller.enabled = false).await;
    run_prerequisites(&t, "a").await;
    run_prerequisites(&t, "b").await;
    for i in 0..7 {
        let mut m = manifest("AgentRun", "");
        m["metadata"].as_object_mut().unwrap().remove("name");
        m["metadata"]["generateName"] = json!("run-");
        let ns = if i % 2 == 0 { "a" } else { "b" };
        let (code, v) = t.post(ns, "agentruns", &m).await;
        assert_eq!(code, 201, "{v}");
        assert!(v["metadata"]["name"].as_str().unwrap().starts_with("run-"));
    }
    let mut seen = Vec::new();
    let mut url = format!("{}?limit=3", t.url("/api/v1/agentruns"));
    loop {
        let (code, page) = t.get(&url).await;
        assert_eq!(code, 200);
        for i in page["items"].as_array().unwrap() {
            seen.push(format!(
                "{}/{}",
                i["metadata"]["namespace"].as_str().unwrap(),
                i["metadata"]["name"].as_str().unwrap()
            ));
        }
        match page["metadata"]["continue"].as_str() {
            Some(c) => url = format!("{}?limit=3&continue={c}", t.url("/api/v1/agentruns")),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "every run exactly once, in order");
    assert_eq!(seen.len(), 7);
    assert_eq!(seen.iter().filter(|s| s.starts_with("a/")).count(), 4);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_across_restart() {
    let t = TestServer::start_with(|c| c.controller.enabled = false).await;
    let (code, created) = t.post("default", "agents", &manifest("Agent", "keep")).await;
    assert_eq!(code, 201);
    let t = t.restart_with(|c| c.controller.enabled = false).await;
    let (code, got) = t.get(&t.item("default", "agents", "keep")).await;
    assert_eq!(code, 200);
    assert_eq!(got, created);
    // The revision counter continues above the old one.
    let (_, next) = t.post("default", "agents", &manifest("Agent", "next")).await;
    let rv = |v: &Value| v["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap();
    assert!(rv(&next) > rv(&created));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_version_openapi() {
    let t = TestServer::start_with(|c| c.controller.enabled = false).await;
    assert_eq!(t.get(&t.url("/healthz")).await.0, 200);
    assert_eq!(t.get(&t.url("/readyz")).await, (200, json!({"status": "ready"})));
    let (code, v) = t.get(&t.url("/api/v1/version")).await;
    assert_eq!(code, 200);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let (code, doc) = t.get(&t.url("/api/openapi.json")).await;
    assert_eq!(code, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    for k in Kind::ALL {
        assert!(doc["paths"][format!("/api/v1/namespaces/{{namespace}}/{}", k.plural())]["post"].is_object(), "{k}");
        assert!(doc["components"]["schemas"][k.as_str()].is_object(), "{k}");
    }
    // Every $ref resolves.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get("$ref") {
                    out.push(r.clone());
                }
                o.values().for_each(|c| refs(c, out));
            }
            Value::Array(a) => a.iter().for_each(|c| refs(c, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").unwrap();
        assert!(doc["components"]["schemas"][name].is_object(), "dangling {r}");
    }
    let (code, e) = t.get(&t.url("/nope")).await;
    assert_eq!((code, e["code"].as_str()), (404, Some("NotFound")));
    t.stop().await;
}

/// Read SSE events from a response until `n` events with data have arrived.
async fn read_events(resp: reqwest::Response, n: usize) -> Vec<(String, Option<String>, Value)> {
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("watch stalled")
            .expect("watch ended early")
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut event, mut id, mut data) = (String::new(), None, String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if !data.is_empty() {
                out.push((event, id, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_every_change_in_order_under_concurrent_writers() {
    let t = TestServer::start_with(|c| c.controller.enabled = false).await;
    let (_, pre) = t.post("default", "agents", &manifest("Agent", "pre")).await;
    // Initial state then a bookmark.
    let resp = t.client.get(format!("{}?watch=true", t.coll("default", "agents"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));

    let writers = 8;
    let per = 25;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let client = t.client.clone();
        let coll = t.coll("default", "agents");
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let r = client.post(&coll).json(&manifest("Agent", &format!("w{w}-{i}"))).send().await.unwrap();
                assert_eq!(r.status(), 201);
            }
        }));
    }
    let events = read_events(resp, 2 + writers * per).await;
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(events[0].0, "ADDED");
    assert_eq!(events[0].2["object"]["metadata"]["name"], "pre");
    assert_eq!(events[1].0, "BOOKMARK");
    let start: u64 = events[1].1.as_deref().unwrap().parse().unwrap();
    assert!(start >= pre["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap());
    let mut last = start;
    let mut names = std::collections::BTreeSet::new();
    for (ev, id, data) in &events[2..] {
        assert_eq!(ev, "ADDED");
        let rv: u64 = id.as_deref().unwrap().parse().unwrap();
        assert!(rv > last, "revisions strictly increase: {rv} after {last}");
        last = rv;
        assert_eq!(data["object"]["metadata"]["resourceVersion"], rv.to_string());
        assert!(names.insert(data["object"]["metadata"]["name"].as_str().unwrap().to_string()), "no duplicates");
    }
    assert_eq!(names.len(), writers * per);

    // Resume from a revision: replays what came after it, including updates and deletes.
    let (_, _, upd) = t
        .put("default", "agents", "pre", &{
            let mut m = manifest("Agent", "pre");
            m["spec"]["maxInFlight"] = json!(9);
            m
        })
        .await;
    t.delete("default", "agents", "w0-0").await;
    let resp = t
        .client
        .get(format!("{}?watch=true&resourceVersion={last}", t.coll("default", "agents")))
        .send()
        .await
        .unwrap();
    let events = read_events(resp, 2).await;
    assert_eq!(events[0].0, "MODIFIED");
    assert_eq!(events[0].1.as_deref(), upd["metadata"]["resourceVersion"].as_str());
    assert_eq!(events[1].0, "DELETED");
    assert_eq!(events[1].2["object"]["metadata"]["name"], "w0-0");
    // Last-Event-ID works like resourceVersion.
    let resp = t
        .client
        .get(format!("{}?watch=true", t.coll("default", "agents")))
        .header("Last-Event-ID", last.to_string())
        .send()
        .await
        .unwrap();
    let events = read_events(resp, 1).await;
    assert_eq!(events[0].0, "MODIFIED");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_loads_examples_idempotently() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let ex = examples.clone();
    let t = TestServer::start_with(move |c| {
        c.dev = true;
        c.examples_dir = ex;
    })
    .await;
    let (_, agents) = t.get(&t.coll("default", "agents")).await;
    assert!(agents["items"].as_array().unwrap().iter().any(|a| a["metadata"]["name"] == "shell-agent"));
    let (_, envs) = t.get(&t.coll("default", "environments")).await;
    let names: Vec<&str> =
        envs["items"].as_array().unwrap().iter().map(|e| e["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["development", "pre-production", "production", "test"]);
    let (_, before) = t.get(&t.url("/api/v1/agentproviders")).await;
    assert_eq!(before["items"].as_array().unwrap().len(), 3);
    // A second start on the same data loads them again without rewriting anything.
    let t = t
        .restart_with(move |c| {
            c.dev = true;
            c.examples_dir = examples;
        })
        .await;
    let (_, after) = t.get(&t.url("/api/v1/agentproviders")).await;
    assert_eq!(after["items"], before["items"], "unchanged: same resourceVersions");
    // The example run is not loaded by --dev (it lives in a subdirectory).
    let (_, runs) = t.get(&t.url("/api/v1/agentruns")).await;
    assert_eq!(runs["items"].as_array().unwrap().len(), 0);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_during_graceful_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut t = TestServer::start_with(|c| c.controller.enabled = false).await;
    let body = serde_json::to_vec(&manifest("Agent", "late")).unwrap();
    let mut sock = tokio::net::TcpStream::connect(t.server.as_ref().unwrap().addr).await.unwrap();
    let head = format!(
        "POST /api/v1/namespaces/default/agents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        t.admin_token,
        body.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&body[..10]).await.unwrap();
    // Wait until the server has the request (readiness still answers), then start shutdown.
    common::eventually(Duration::from_secs(10), || async { (t.get(&t.url("/healthz")).await.0 == 200).then_some(()) })
        .await;
    let server = t.server.take().unwrap();
    let stopping = tokio::spawn(server.shutdown());
    // New connections are refused once the listener closes.
    sock.write_all(&body[10..]).await.unwrap();
    let mut resp = String::new();
    sock.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 201"), "the in-flight request completed: {resp}");
    stopping.await.unwrap().unwrap();
    // The write survived shutdown: the store was flushed and closed.
    let t2 = TestServer::start_in(std::mem::replace(&mut t.dir, tempfile::tempdir().unwrap()), |_| {}).await;
    assert_eq!(t2.get(&t2.item("default", "agents", "late")).await.0, 200);
    t2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_submission() {
    let t = TestServer::start_with(|c| c.controller.enabled = false).await;
    run_prerequisites(&t, "default").await;
    let run = |name: Option<&str>, text: &str| {
        let mut m = manifest("AgentRun", name.unwrap_or(""));
        if name.is_none() {
            m["metadata"].as_object_mut().unwrap().remove("name");
            m["metadata"]["generateName"] = json!("run-");
        }
        m["spec"].as_object_mut().unwrap().remove("implementationSpecRef");
        m["spec"]["implementation"] = json!({"inline": {"text": text}});
        m
    };
    let submit = |body: Value, key: &'static str| {
        let client = t.client.clone();
        let url = t.coll("default", "agentruns");
        async move {
            let r = client.post(url).header("Idempotency-Key", key).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            let replayed = r.headers().get("x-agentplane-idempotent").is_some();
            (status, replayed, r.json::<Value>().await.unwrap())
        }
    };
    let (code, replayed, first) = submit(run(Some("first"), "say hi"), "k-1").await;
    assert_eq!((code, replayed), (201, false), "{first}");
    assert_eq!(first["spec"]["idempotencyKey"], "k-1", "the header sets spec.idempotencyKey");
    // A retry with another name (or none) and the same spec: the existing run, idempotent.
    for body in [run(Some("second"), "say hi"), run(None, "say hi")] {
        let (code, replayed, again) = submit(body, "k-1").await;
        assert_eq!((code, replayed), (200, true), "{again}");
        assert_eq!(again["idempotent"], true);
        assert_eq!(again["metadata"]["uid"], first["metadata"]["uid"]);
    }
    // The same key with a different spec: a conflict naming the key.
    let (code, _, e) = submit(run(Some("third"), "say bye"), "k-1").await;
    assert_eq!((code, e["code"].as_str(), e["field"].as_str()), (409, Some("Conflict"), Some("spec.idempotencyKey")));
    assert_eq!(e["details"]["existing"]["name"], "first");
    // Header and body disagree.
    let mut body = run(Some("fourth"), "x");
    body["spec"]["idempotencyKey"] = json!("other");
    let (code, _, e) = submit(body, "k-2").await;
    assert_eq!((code, e["field"].as_str()), (400, Some("spec.idempotencyKey")));
    // The key cannot be changed by an apply.
    let mut changed = first.clone();
    changed["spec"]["idempotencyKey"] = json!("k-9");
    changed["metadata"].as_object_mut().unwrap().remove("resourceVersion");
    let (code, _, e) = t.put("default", "agentruns", "first", &changed).await;
    assert_eq!((code, e["field"].as_str()), (400, Some("spec.idempotencyKey")), "{e}");

    // Many clients, one key: exactly one run.
    let tasks: Vec<_> = (0..16).map(|i| tokio::spawn(submit(run(Some(&format!("c-{i}")), "race"), "k-race"))).collect();
    let mut uids = std::collections::BTreeSet::new();
    for task in tasks {
        let (code, _, v) = task.await.unwrap();
        assert!(code == 201 || code == 200, "{code}: {v}");
        uids.insert(v["metadata"]["uid"].as_str().unwrap().to_string());
    }
    assert_eq!(uids.len(), 1, "one run for one key");
    let (_, list) =
        t.get(&format!("{}?fieldSelector=spec.idempotencyKey%3Dk-race", t.coll("default", "agentruns"))).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_admission_resolves_references_and_defaults() {
    let t = TestServer::start_with(|c| c.controller.enabled = false).await; // runs must stay Pending
    // Nothing exists yet: every missing reference is reported at once.
    let mut m = manifest("AgentRun", "r1");
    m["spec"]["environment"] = json!("prod");
    m["spec"]["memoryRef"] = json!({"name": "mem"});
    let (code, e) = t.post("default", "agentruns", &m).await;
    assert_eq!((code, e["code"].as_str()), (400, Some("ValidationFailed")), "{e}");
    let reasons: Vec<(&str, &str)> = e["details"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["field"].as_str().unwrap(), x["reason"].as_str().unwrap()))
        .collect();
    for want in [
        ("spec.agentRef.name", "MissingAgent"),
        ("spec.implementationSpecRef.name", "MissingImplementation"),
        ("spec.memoryRef.name", "MissingMemory"),
        ("spec.environment", "MissingEnvironment"),
    ] {
        assert!(reasons.contains(&want), "{want:?} in {reasons:?}");
    }
    assert_eq!(t.get(&t.item("default", "agentruns", "r1")).await.0, 404, "nothing half-written");

    // An agent whose provider is missing; a secret the agent does not allow.
    let mut agent = manifest("Agent", "a");
    agent["spec"]["defaults"] = json!({"timeoutSeconds": 120, "retryLimit": 3});
    agent["spec"]["security"] = json!({"allowedSecrets": ["token-a"]});
    assert_eq!(t.post("default", "agents", &agent).await.0, 201);
    assert_eq!(t.post("default", "implementationspecs", &manifest("ImplementationSpec", "s")).await.0, 201);
    let mut m = manifest("AgentRun", "r2");
    m["spec"]["secrets"] = json!(["token-a", "token-b"]);
    let (code, e) = t.post("default", "agentruns", &m).await;
    assert_eq!(code, 400, "{e}");
    let errs = e["details"]["errors"].as_array().unwrap();
    assert!(errs.iter().any(|x| x["reason"] == "MissingProvider"), "{e}");
    assert!(errs.iter().any(|x| x["reason"] == "SecretNotAllowed" && x["field"] == "spec.secrets[1]"), "{e}");
    assert!(!errs.iter().any(|x| x["field"] == "spec.secrets[0]"), "an allowed secret is fine: {e}");

    // All resolved: Pending, Accepted, the Agent's defaults applied.
    assert_eq!(t.post("default", "agentproviders", &manifest("AgentProvider", "shell")).await.0, 201);
    let mut m = manifest("AgentRun", "r3");
    m["spec"]["secrets"] = json!(["token-a"]);
    let (code, run) = t.post("default", "agentruns", &m).await;
    assert_eq!(code, 201, "{run}");
    assert_eq!(run["status"]["phase"], "Pending");
    assert_eq!(run["status"]["conditions"][0]["type"], "Accepted");
    assert_eq!(run["status"]["conditions"][0]["status"], "True");
    assert_eq!(run["spec"]["timeoutSeconds"], 120);
    assert_eq!(run["spec"]["retryLimit"], 3);
    // Re-applying the same manifest is unchanged (the defaults are not a change), and the
    // status survives an apply that changes labels.
    let (code, result, _) = t.put("default", "agentruns", "r3", &m).await;
    assert_eq!((code, result.as_deref()), (200, Some("unchanged")));
    let mut relabelled = m.clone();
    relabelled["metadata"]["labels"]["x"] = json!("y");
    let (_, result, v) = t.put("default", "agentruns", "r3", &relabelled).await;
    assert_eq!(result.as_deref(), Some("configured"));
    assert_eq!(v["status"]["phase"], "Pending");
    // Runs created by apply are admitted the same way.
    let (code, result, v) = t.put("default", "agentruns", "r4", &manifest("AgentRun", "r4")).await;
    assert_eq!((code, result.as_deref()), (201, Some("created")));
    assert_eq!(v["status"]["phase"], "Pending");
    let (code, _, e) = t
        .put("default", "agentruns", "r5", &{
            let mut m = manifest("AgentRun", "r5");
            m["spec"]["agentRef"]["name"] = json!("ghost");
            m
        })
        .await;
    assert_eq!((code, e["details"]["errors"][0]["reason"].as_str()), (400, Some("MissingAgent")));
    // Admission caches what it resolves, but a delete through the API is seen at once.
    assert_eq!(t.delete("default", "agents", "a").await.0, 200);
    let (code, e) = t.post("default", "agentruns", &manifest("AgentRun", "r6")).await;
    assert_eq!((code, e["details"]["errors"][0]["reason"].as_str()), (400, Some("MissingAgent")), "{e}");
    t.stop().await;
}
