//! `make bench-fleet` (bench/fleet.sh): the fleet hub against as many real member control planes as this
//! machine's memory holds. Each member is an etcd and a kube-apiserver (no controller manager: nothing
//! there needs one) with the CRDs, the chart's RBAC and its own webhook (a local process, as the chart's
//! webhook ServiceAccount, auditing every `--audit-interval`); the hub is a control plane of its own and
//! `operator fleet` (as the chart's fleet ServiceAccount), each member registered by a kubeconfig Secret
//! with its fleet-member token.
//!
//! Measured: how many members fit (members are started in batches until the memory the first batch used,
//! per member, says the next batch would leave less than a quarter of the machine's memory, or the cap is
//! reached); the hub's resident memory with no member and with all of them (per member: the difference
//! over the count); a propagated policy's time to FLEET N/N; and, on a sample of members one after the
//! other, the time from a non-compliant Service admitted there (under Audit) to the hub's status showing
//! it, split into the member's own audit (bounded by its interval) and the hub's part.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use channel_contracts_bench::stats::{Stats, stats};
use clap::Parser;
use crds::ContractPolicy;
use e2e::fleet::{ControlPlane, Hub, member_secret, read};
use e2e::rbac;
use e2e::webhook::WebhookFixture;
use k8s_openapi::api::core::v1::Service;
use kube::api::PostParams;
use kube::{Api, Client};

#[derive(Parser, Debug)]
struct Args {
    /// Where the results go.
    #[arg(long)]
    results: PathBuf,
    /// The run's time stamp (file names).
    #[arg(long)]
    stamp: String,
    /// The commit measured.
    #[arg(long)]
    commit: String,
    /// Members to start; 0: as many as memory allows, up to --max-members.
    #[arg(long, env = "CSP_BENCH_MEMBERS", default_value_t = 0)]
    members: usize,
    /// The most members memory may decide on.
    #[arg(long, env = "CSP_BENCH_MAX_MEMBERS", default_value_t = 100)]
    max_members: usize,
    /// Members started at once.
    #[arg(long, env = "CSP_BENCH_PARALLEL", default_value_t = 4)]
    parallel: usize,
    /// The members' webhook audit interval (seconds).
    #[arg(long, env = "CSP_BENCH_AUDIT_INTERVAL", default_value_t = 5)]
    audit_interval: u64,
    /// Members that get a violation, one after the other.
    #[arg(long, env = "CSP_BENCH_VIOLATIONS", default_value_t = 10)]
    violations: usize,
    /// Where the control planes' folders go.
    #[arg(long, env = "CSP_BENCH_DIR")]
    dir: PathBuf,
}

struct Member {
    plane: ControlPlane,
    webhook: WebhookFixture,
}

/// A field of /proc/meminfo (`MemAvailable:`, `MemTotal:`), in bytes.
fn meminfo(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn mem_available() -> u64 {
    meminfo("MemAvailable:")
}

fn start_member(dir: &std::path::Path, i: usize, audit_interval: u64) -> Member {
    let name = format!("member-{i:02}");
    let plane = ControlPlane::start_in(&name, dir.join(&name), true);
    plane.install(&[]);
    let sa = plane.service_account(&rbac::webhook_service_account());
    let webhook = WebhookFixture::start_on(
        &plane.kubeconfig(),
        &sa,
        &format!("bench-{name}"),
        &["--audit-interval".into(), format!("{audit_interval}s")],
    );
    plane.namespace("shop", &[&format!("{}={}", e2e::webhook::NAMESPACE_LABEL, webhook.id)]);
    Member { plane, webhook }
}

fn member_rss(m: &Member) -> u64 {
    m.plane.rss() + m.webhook.process.pid.and_then(e2e::fleet::rss_of).unwrap_or(0)
}

async fn client(kubeconfig: &std::path::Path) -> Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(Client::try_from(config)?)
}

fn fleet_summary(hub: &ControlPlane) -> String {
    hub.get(&["contractpolicy", "bench-baseline"], "{.status.fleet.summary}").unwrap_or_default()
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    let memory = meminfo("MemTotal:");
    let available_at_start = mem_available();
    channel_contracts_bench::log(
        "fleet",
        format!("memory: {} MiB total, {} MiB available", memory >> 20, available_at_start >> 20),
    );

    // The hub first: its own (lean) control plane and `operator fleet`, with no member yet.
    let hub_plane = ControlPlane::start_in("hub", args.dir.join("hub"), true);
    hub_plane.install(&[]);
    let mut hub =
        Hub::start(&hub_plane, &["--hub-name", "bench-hub", "--resync-interval", "30s", "--member-timeout", "10s"]);
    let policy = "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata:\n  name: bench-baseline\n  labels: {csp.contracts.dev/propagate: \"true\"}\nspec:\n  enforcementAction: Audit\n  match: {namespaces: [shop], kinds: [Service]}\n  failover: {requiredRegions: [gz, sz, hz]}\n";
    hub_plane.kubectl(&["apply", "-f", "-"], Some(policy)).ok();
    std::thread::sleep(Duration::from_secs(5));
    let hub_pid = hub.process.pid.context("the hub's pid")?;
    let hub_rss_empty = channel_contracts_bench::process::status_mib(hub_pid, "VmRSS:").unwrap_or(f64::NAN);

    // Members, in batches, while memory allows.
    let mut members: Vec<Member> = Vec::new();
    let mut per_member = 0u64;
    let mut stopped_by = "the count asked for (CSP_BENCH_MEMBERS)";
    let started = Instant::now();
    loop {
        let target = if args.members > 0 { args.members } else { args.max_members };
        if members.len() >= target {
            if args.members == 0 {
                stopped_by = "the cap (CSP_BENCH_MAX_MEMBERS)";
            }
            break;
        }
        let batch = args.parallel.min(target - members.len());
        if args.members == 0 && per_member > 0 {
            let after = mem_available().saturating_sub(per_member * batch as u64);
            if after < memory / 4 {
                stopped_by = "memory (the next batch would leave less than a quarter of the machine's memory)";
                break;
            }
        }
        let first = members.len();
        let dir = args.dir.clone();
        let interval = args.audit_interval;
        let handles: Vec<_> = (first..first + batch)
            .map(|i| {
                let dir = dir.clone();
                std::thread::spawn(move || start_member(&dir, i, interval))
            })
            .collect();
        for h in handles {
            members.push(h.join().map_err(|_| anyhow::anyhow!("a member failed to start"))?);
        }
        per_member = members.iter().map(member_rss).sum::<u64>() / members.len() as u64;
        channel_contracts_bench::log(
            "fleet",
            format!(
                "{} members up ({:.0}s); {} MiB per member (control plane + webhook); {} MiB available",
                members.len(),
                started.elapsed().as_secs_f64(),
                per_member >> 20,
                mem_available() >> 20
            ),
        );
    }
    let n = members.len();

    // Registration: every member at once; time to FLEET N/N.
    let registered = Instant::now();
    for m in &members {
        let kubeconfig = read(&m.plane.service_account(&rbac::fleet_member_service_account()));
        hub_plane.kubectl(&["apply", "-f", "-"], Some(&member_secret(&m.plane.name, &kubeconfig))).ok();
    }
    let want = format!("{n}/{n}");
    e2e::wait_until(&format!("FLEET {want}"), Duration::from_secs(600), || {
        (fleet_summary(&hub_plane) == want).then_some(())
    });
    let all_compliant = registered.elapsed();
    channel_contracts_bench::log(
        "fleet",
        format!("{n} members registered -> FLEET {want} in {:.1}s", all_compliant.as_secs_f64()),
    );
    std::thread::sleep(Duration::from_secs(20));
    let hub_rss_full = channel_contracts_bench::process::status_mib(hub_pid, "VmRSS:").unwrap_or(f64::NAN);
    let hub_hwm = channel_contracts_bench::process::status_mib(hub_pid, "VmHWM:").unwrap_or(f64::NAN);

    // Violations, one member after the other.
    let runtime = tokio::runtime::Runtime::new()?;
    let hub_client = runtime.block_on(client(&hub_plane.kubeconfig()))?;
    let mut total_s = Vec::new();
    let mut audit_s = Vec::new();
    let mut hub_s = Vec::new();
    for m in members.iter().take(args.violations.min(n)) {
        let member_client = runtime.block_on(client(&m.plane.kubeconfig()))?;
        let name = m.plane.name.clone();
        let (t_total, t_audit) = runtime.block_on(async {
            let svc: Service = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "legacy", "namespace": "shop"},
                "spec": {"ports": [{"port": 80}]},
            }))?;
            let t0 = Instant::now();
            Api::<Service>::namespaced(member_client.clone(), "shop").create(&PostParams::default(), &svc).await?;
            let member_policies: Api<ContractPolicy> = Api::all(member_client);
            let hub_policies: Api<ContractPolicy> = Api::all(hub_client.clone());
            let mut audited: Option<Duration> = None;
            loop {
                if audited.is_none()
                    && member_policies.get("bench-baseline").await?.status.is_some_and(|s| s.violations >= 1)
                {
                    audited = Some(t0.elapsed());
                }
                let shown = hub_policies
                    .get("bench-baseline")
                    .await?
                    .status
                    .and_then(|s| s.fleet)
                    .is_some_and(|f| f.members.iter().any(|x| x.cluster == name && x.violations >= 1));
                if shown {
                    let total = t0.elapsed();
                    return anyhow::Ok((total, audited.unwrap_or(total)));
                }
                anyhow::ensure!(t0.elapsed() < Duration::from_secs(120), "the hub never showed {name}'s violation");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })?;
        channel_contracts_bench::log(
            "fleet",
            format!(
                "{}: violation -> hub {:.2}s (member audit {:.2}s)",
                m.plane.name,
                t_total.as_secs_f64(),
                t_audit.as_secs_f64()
            ),
        );
        total_s.push(t_total.as_secs_f64());
        audit_s.push(t_audit.as_secs_f64());
        hub_s.push((t_total - t_audit).as_secs_f64());
    }
    hub.process.stop();
    let (total, audit, hub_part) = (stats(&total_s), stats(&audit_s), stats(&hub_s));
    let per_member_hub_kib = (hub_rss_full - hub_rss_empty) * 1024.0 / n.max(1) as f64;
    let json = serde_json::json!({
        "stamp": args.stamp, "commit": args.commit, "members": n, "stopped_by": stopped_by,
        "memory_total_mib": memory >> 20, "memory_available_at_start_mib": available_at_start >> 20,
        "member_rss_mib": per_member >> 20, "audit_interval_s": args.audit_interval,
        "hub_rss_mib_no_members": hub_rss_empty, "hub_rss_mib_all_members": hub_rss_full, "hub_peak_rss_mib": hub_hwm,
        "hub_kib_per_member": per_member_hub_kib, "registered_to_all_compliant_s": all_compliant.as_secs_f64(),
        "violation_to_hub_s": total, "member_audit_s": audit, "hub_part_s": hub_part,
        "samples": {"violation_to_hub_s": total_s, "member_audit_s": audit_s},
    });
    std::fs::write(args.results.join("fleet.json"), serde_json::to_string_pretty(&json)?)?;
    let row = |label: &str, s: &Stats| {
        format!("| {label} | {} | {:.2} s | {:.2} s | {:.2} s | {:.2} s |\n", s.n, s.min, s.p50, s.p90, s.max)
    };
    let md = format!(
        "# make bench-fleet, {stamp} (commit {commit})\n\n\
         This machine: {cores} cores, {total} MiB of memory ({avail} MiB available at the start); shared and noisy.\n\n\
         - **Members: {n}** real control planes (etcd + kube-apiserver, each with the CRDs, the chart's RBAC and its own webhook process auditing every {ai} s), stopped by {stopped_by}. One member used **{pm} MiB** (control plane + webhook).\n\
         - **The hub** (`operator fleet`, debug build, as the chart's fleet ServiceAccount, one watch per member): **{e:.1} MiB** resident with no member, **{f:.1} MiB** with {n} (peak {h:.1} MiB): **{pk:.0} KiB per member**.\n\
         - {n} member Secrets created at once → `FLEET {n}/{n}` on the hub: **{ac:.1} s** (apply to every member, each member's audit, the roll-up).\n\n\
         ## A member's violation → the hub's status\n\n\
         A Service that falls short, created on one member after the other (the policy audits there); the hub's status polled every 50 ms.\n\n\
         | | n | min | p50 | p90 | max |\n|---|---|---|---|---|---|\n{r1}{r2}{r3}\n\
         The member's part is its audit, which runs every {ai} s; the hub's part is the member watch, one sync pass and the roll-up's write.\n",
        stamp = args.stamp,
        commit = args.commit,
        cores = std::thread::available_parallelism().map(|c| c.get()).unwrap_or(0),
        total = memory >> 20,
        avail = available_at_start >> 20,
        ai = args.audit_interval,
        pm = per_member >> 20,
        e = hub_rss_empty,
        f = hub_rss_full,
        h = hub_hwm,
        pk = per_member_hub_kib,
        ac = all_compliant.as_secs_f64(),
        r1 = row("violation → hub status", &total),
        r2 = row("of which: the member's audit", &audit),
        r3 = row("of which: the hub", &hub_part),
    );
    let path = args.results.join(format!("fleet-{}.md", args.stamp));
    std::fs::write(&path, md)?;
    channel_contracts_bench::log("fleet", format!("wrote {} and fleet.json", path.display()));
    drop(members);
    Ok(())
}
