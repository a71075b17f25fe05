//! Autonomy cache benchmark: watch-event ingest to disk, offline list/get latency,
//! reopen time and disk bytes per cached object.
//!
//! ```text
//! cargo run --release -p integration --bin cache-bench -- [--events N] [--in-flight N] [--dir DIR]
//! ```
//!
//! Prints a Markdown table on stdout; progress goes to stderr.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use autonomy_cache::{AutonomyCache, CacheConfig, OfflineAnswer, RequestInfo};
use bytes::Bytes;
use clap::Parser;
use integration::bench::measure::percentile;
use serde_json::{json, Value};

#[derive(Debug, Parser)]
#[command(about = "Autonomy cache: ingest rate, offline latency, bytes per object")]
struct Args {
    /// Watch events recorded in the ingest run.
    #[arg(long, default_value_t = 30_000)]
    events: u64,
    /// Distinct pods the events cycle through.
    #[arg(long, default_value_t = 1_000)]
    pods: u64,
    /// `record_watch_event` futures in flight at once.
    #[arg(long, default_value_t = 512)]
    in_flight: usize,
    /// Group-commit interval in milliseconds.
    #[arg(long, default_value_t = 5)]
    commit_ms: u64,
    /// Offline answers timed per case.
    #[arg(long, default_value_t = 300)]
    samples: usize,
    /// Directory for the database (a fresh temp dir under it); default: the system temp dir.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// A realistic ~3 KB pod (labels, annotations, two containers, status conditions).
fn pod(index: u64, rv: u64) -> Value {
    let name = format!("app-{index:05}-7d9f8c6b5d-x2x9q");
    let containers: Vec<Value> = ["app", "sidecar"]
        .iter()
        .map(|c| {
            json!({"name": c, "image": format!("registry.example.com/team/{c}:v1.2.3"),
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "REGION", "value": "edge-west"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
                "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent"})
        })
        .collect();
    let conditions: Vec<Value> = ["Initialized", "Ready", "ContainersReady", "PodScheduled"]
        .iter()
        .map(|t| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-11-22T06:00:00Z"}))
        .collect();
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "default", "uid": format!("0b6c1f4e-6a0e-4c3e-9d7a-{index:012}"),
            "resourceVersion": rv.to_string(), "creationTimestamp": "2026-11-22T06:00:00Z",
            "labels": {"app": format!("app-{}", index % 10), "pod-template-hash": "7d9f8c6b5d", "tier": if index.is_multiple_of(2) { "web" } else { "db" }},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-22T05:59:00Z", "prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "app-7d9f8c6b5d", "uid": "4f3c2b1a-0000-1111-2222-333344445555", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"nodeName": format!("edge-{}", index % 4), "containers": containers, "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst", "serviceAccountName": "default",
            "schedulerName": "default-scheduler", "priority": 0,
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}]},
        "status": {"phase": "Running", "hostIP": "10.0.0.12", "podIP": format!("10.244.{}.{}", index / 250, index % 250),
            "startTime": "2026-11-22T06:00:00Z", "qosClass": "Burstable", "conditions": conditions,
            "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "image": "registry.example.com/team/app:v1.2.3",
                "imageID": "registry.example.com/team/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "containerID": "containerd://0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "started": true, "state": {"running": {"startedAt": "2026-11-22T06:00:05Z"}}}]}
    })
}

fn config(dir: &Path, commit_ms: u64) -> CacheConfig {
    CacheConfig {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 30,
        gc_after: Duration::from_secs(7 * 24 * 3600),
        commit_interval: Duration::from_millis(commit_ms),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Times `samples` offline answers; checks each is a 200 with `want_items` items.
fn time_answers(
    cache: &AutonomyCache,
    req: &RequestInfo,
    samples: usize,
    want_items: Option<usize>,
) -> anyhow::Result<(Duration, Duration)> {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        let answer = cache.offline_answer("kubelet", req, b"");
        times.push(start.elapsed());
        let OfflineAnswer::Respond { status: 200, body } = answer else {
            bail!("{}: unexpected answer {answer:?}", req.path);
        };
        if let Some(want) = want_items {
            let list: Value = serde_json::from_slice(&body)?;
            let got = list["items"].as_array().map(Vec::len).unwrap_or_default();
            if got != want {
                bail!("{}: {got} items, expected {want}", req.path);
            }
        }
    }
    times.sort();
    Ok((percentile(&times, 50.0), percentile(&times, 99.0)))
}

async fn ingest(cache: &AutonomyCache, args: &Args) -> anyhow::Result<f64> {
    let watch = RequestInfo::parse("GET", "/api/v1/pods?watch=true")?;
    let lines: Vec<Bytes> = (0..args.events)
        .map(|i| {
            let event = json!({"type": "MODIFIED", "object": pod(i % args.pods, 1_000 + i)});
            Bytes::from(event.to_string())
        })
        .collect();
    eprintln!(
        "ingest: {} events of ~{} bytes, {} in flight",
        lines.len(),
        lines.first().map(Bytes::len).unwrap_or_default(),
        args.in_flight
    );
    let start = Instant::now();
    let mut writes = tokio::task::JoinSet::new();
    for line in lines {
        if writes.len() >= args.in_flight {
            if let Some(done) = writes.join_next().await {
                done??;
            }
        }
        let (cache, watch) = (cache.clone(), watch.clone());
        writes.spawn(async move { cache.record_watch_event("kubelet", &watch, line).await });
    }
    while let Some(done) = writes.join_next().await {
        done??;
    }
    Ok(args.events as f64 / start.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let temp = tempfile::Builder::new()
        .prefix("cache-bench")
        .tempdir_in(&base)
        .with_context(|| format!("temp dir in {}", base.display()))?;
    let cache = AutonomyCache::open(config(temp.path(), args.commit_ms))?;
    let commits_before = cache.stats().commits;
    let rate = ingest(&cache, &args).await?;
    let commits = cache.stats().commits - commits_before;

    eprintln!("offline: recording a 1000-pod list");
    let list_req = RequestInfo::parse("GET", "/api/v1/namespaces/default/pods")?;
    let items: Vec<Value> = (0..1000).map(|i| pod(i, 50_000 + i)).collect();
    let list = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "60000"}, "items": items});
    cache
        .record_response("kubelet", &list_req, Bytes::from(list.to_string()))
        .await?;
    let (list_p50, list_p99) = time_answers(&cache, &list_req, args.samples, Some(1000))?;
    let label = RequestInfo::parse(
        "GET",
        "/api/v1/namespaces/default/pods?labelSelector=app%3Dapp-3",
    )?;
    let (label_p50, label_p99) = time_answers(&cache, &label, args.samples, Some(100))?;
    let field = RequestInfo::parse(
        "GET",
        "/api/v1/namespaces/default/pods?fieldSelector=spec.nodeName%3Dedge-1",
    )?;
    let (field_p50, field_p99) = time_answers(&cache, &field, args.samples, Some(250))?;
    let mut get_times = Vec::new();
    for i in 0..args.samples as u64 {
        let name = format!("app-{:05}-7d9f8c6b5d-x2x9q", i % 1000);
        let get = RequestInfo::parse("GET", &format!("/api/v1/namespaces/default/pods/{name}"))?;
        get_times.push(time_answers(&cache, &get, 1, None)?.0);
    }
    get_times.sort();

    let stats = cache.stats();
    drop(cache);
    let file = temp.path().join("cache.redb");
    let meta = std::fs::metadata(&file)?;
    let allocated = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    let start = Instant::now();
    let reopened = AutonomyCache::open(config(temp.path(), args.commit_ms))?;
    let reopen = start.elapsed();
    time_answers(&reopened, &list_req, 1, Some(1000))?;

    println!("| measurement | result |");
    println!("|---|---|");
    println!(
        "| watch-event ingest (durable, {} in flight) | {rate:.0} events/s |",
        args.in_flight
    );
    println!(
        "| commits for {} events | {commits} ({:.1} events per fsync batch) |",
        args.events,
        args.events as f64 / commits.max(1) as f64
    );
    println!(
        "| offline list, 1000 pods, no selector | p50 {} / p99 {} |",
        ms(list_p50),
        ms(list_p99)
    );
    println!(
        "| offline list, labelSelector (100 match) | p50 {} / p99 {} |",
        ms(label_p50),
        ms(label_p99)
    );
    println!(
        "| offline list, fieldSelector (250 match) | p50 {} / p99 {} |",
        ms(field_p50),
        ms(field_p99)
    );
    println!(
        "| offline get | p50 {} / p99 {} |",
        ms(percentile(&get_times, 50.0)),
        ms(percentile(&get_times, 99.0))
    );
    println!("| reopen of the populated cache | {} |", ms(reopen));
    println!(
        "| cached entries / accounted bytes | {} / {} |",
        stats.objects, stats.bytes_used
    );
    println!(
        "| disk bytes per entry (file size) | {} |",
        meta.len() / stats.objects.max(1)
    );
    println!(
        "| disk bytes per entry (allocated blocks) | {} |",
        allocated / stats.objects.max(1)
    );
    Ok(())
}
