//! The markdown fragment of `bench_xds run`'s results (the script adds the header and machine).

use serde_json::Value;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn ms_row(name: &str, s: &Value) -> String {
    format!(
        "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
        s["n"],
        f(&s["p50"]),
        f(&s["p90"]),
        f(&s["p99"]),
        f(&s["max"]),
        f(&s["mean"])
    )
}

fn s_row(name: &str, s: &Value) -> String {
    format!(
        "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
        s["n"],
        f(&s["min"]),
        f(&s["p50"]),
        f(&s["p99"]),
        f(&s["max"])
    )
}

/// The results as markdown.
pub fn markdown(j: &Value) -> String {
    let a = &j["args"];
    let total = a["envoys"].as_u64().unwrap_or(0) + a["simulated"].as_u64().unwrap_or(0);
    // How many proxies a contract's status counts: every one, or the simulated ones and the Envoys that
    // serve its namespace.
    let selected = match a["envoy_namespaces"].as_u64().unwrap_or(0) {
        0 => total.to_string(),
        n => format!(
            "{} + the Envoys serving the contract's namespace ({n} of {} namespaces each)",
            a["simulated"], a["namespaces"]
        ),
    };
    let e = &j["edits"];
    let i = &j["initial"];
    let m = &j["memory_mib"];
    let x = &j["expected"];
    let mut md = String::new();
    md += &format!(
        "{} contracts in {} namespaces (3 channels, 18 endpoints over gz/sz/hz each): {} clusters, {} scoped route configurations, {} route configurations and {} listener per proxy. \
         Release operator `{}`, xDS over {}, as {}. {} real Envoys (delta ADS, each its own listen address, admin port and region) and {} simulated proxies (delta, regions round robin, listen address 0.0.0.0: one view per region) connect {}.\n\n",
        a["contracts"],
        a["namespaces"],
        x["clusters"],
        x["scopes"],
        x["routes"],
        x["listeners"],
        a["operator_args"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        if a["tls"].as_bool() == Some(true) { "TLS" } else { "plaintext (`--xds-insecure`)" },
        a["operator_identity"].as_str().unwrap_or("?"),
        a["envoys"],
        a["simulated"],
        match a["connect_rate_per_s"].as_u64() {
            Some(rate) if rate > 0 => format!("at {rate} per second"),
            _ => "at once".to_owned(),
        },
    );

    md += "### Figures\n\n| measure | value |\n|---|---:|\n";
    md += &format!(
        "| operator start → all {} contracts Programmed | {:.1} s |\n",
        a["contracts"],
        f(&j["operator_start"]["all_programmed_s"])
    );
    md += &format!(
        "| all {total} proxies have their whole configuration (from connecting) | {:.1} s |\n",
        f(&i["all_s"])
    );
    md += &format!(
        "| edit → all {} simulated proxies acked, p50 / p99 (max) | {:.0} / {:.0} ms ({:.0}) |\n",
        a["simulated"],
        f(&e["simulated_all_acked_ms"]["p50"]),
        f(&e["simulated_all_acked_ms"]["p99"]),
        f(&e["simulated_all_acked_ms"]["max"])
    );
    md += &format!(
        "| edit → status `acked == selected == {selected}`, p50 / p99 (max) | {:.0} / {:.0} ms ({:.0}) |\n",
        f(&e["status_all_acked_ms"]["p50"]),
        f(&e["status_all_acked_ms"]["p99"]),
        f(&e["status_all_acked_ms"]["max"])
    );
    md += &format!(
        "| operator VmRSS, no proxy → {total} proxies | {:.1} → {:.1} MiB |\n",
        f(&m["idle_vmrss"]),
        f(&m["connected_vmrss"])
    );
    md += &format!("| memory per connected proxy | {:.3} MiB |\n", f(&m["per_proxy"]));
    md += &format!(
        "| operator peak RSS (VmHWM) at the end; highest VmRSS seen while proxies connected | {:.1} MiB; {:.1} MiB |\n",
        f(&m["final_vmhwm"]),
        f(&m["peak_vmrss_while_connecting"])
    );
    md += &format!(
        "| operator CPU per edit (push to {total} proxies, reconcile and status writes), p50 / mean | {:.0} / {:.0} ms |\n",
        f(&e["operator_cpu_ms_per_edit"]["p50"]),
        f(&e["operator_cpu_ms_per_edit"]["mean"])
    );
    md += &format!(
        "| operator CPU while the proxies took the initial configuration | {:.1} s ({:.1} ms per proxy) |\n",
        f(&j["connect_phase"]["cpu_s"]["operator"]),
        f(&j["connect_phase"]["cpu_s"]["operator"]) / total as f64 * 1e3
    );
    md += &format!(
        "| `csp_xds_push_duration_seconds` over the edits: count, mean | {}, {:.0} ms |\n",
        e["push_duration_metric"]["count"],
        f(&e["push_duration_metric"]["mean_ms"])
    );
    md += "\n";

    md += "### Initial configuration (seconds from the moment the proxies start connecting)\n\n";
    md += "| who | n | min | p50 | p99 | max |\n|---|---:|---:|---:|---:|---:|\n";
    md += &s_row("simulated proxy: stream open", &i["simulated_connected_s"]);
    md += &s_row("simulated proxy: every resource received and acked", &i["simulated_s"]);
    md += &s_row("Envoy: every cluster active, the listener up (admin stats)", &i["envoys_s"]);
    md += &format!(
        "\nEvery contract's status says `acked == selected == {selected}` after **{:.1} s**. Bytes received per simulated proxy: {:.1} MiB. Connection attempts the simulated proxies retried (a TLS handshake the server timed out after 10 s while the others were under way): {}.\n\n",
        f(&i["status_all_acked_s"]),
        f(&i["simulated_bytes"]["p50"]) / 1048576.0,
        i["simulated_connect_retries"]
    );

    md += &format!("### Edits ({} edits of `spec.sla.maxLatency`, one contract at a time)\n\n", e["n"]);
    md += "Clock from just before the PATCH. Simulated proxies: the last of them to acknowledge every resource of the contract at the new version (its own clock, same process). Status: the contract watch shows `configVersion` new and `proxies.acked == proxies.selected == ";
    md += &format!("{selected}`.\n\n");
    md += "| measure | n | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | mean (ms) |\n|---|---:|---:|---:|---:|---:|---:|\n";
    md += &ms_row("PATCH answered", &e["patch_ms"]);
    md += &ms_row("all simulated proxies received the new version", &e["simulated_all_received_ms"]);
    md += &ms_row("all simulated proxies acked it", &e["simulated_all_acked_ms"]);
    md += &ms_row("status: every proxy selected acked", &e["status_all_acked_ms"]);
    md += &ms_row("operator CPU time per edit", &e["operator_cpu_ms_per_edit"]);
    if let Some(failures) = e["failures"].as_array().filter(|v| !v.is_empty()) {
        md += &format!("\n**{} edits did not complete**: {}\n", failures.len(), e["failures"]);
    }
    md += "\n";

    md += "### Where the time goes (CPU seconds per phase)\n\n";
    md += "| phase | wall (s) | operator | kube-apiserver | etcd | kube-controller-manager | Envoys | driver (simulated proxies) | other processes | machine busy / capacity |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    let phases = [
        ("operator start → all Programmed", &j["operator_start"]["phase"]),
        ("proxies connect and take the configuration", &j["connect_phase"]),
        ("edits", &e["phase"]),
    ];
    for (name, p) in phases {
        let c = &p["cpu_s"];
        md += &format!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} |\n",
            f(&c["wall"]),
            f(&c["operator"]),
            f(&c["kube-apiserver"]),
            f(&c["etcd"]),
            f(&c["kube-controller-manager"]),
            f(&c["envoys"]),
            f(&c["driver"]),
            f(&c["others"]),
            f(&c["machine_busy"]),
            f(&c["machine_capacity"]),
        );
    }
    md += "\n| phase | operator reconciles (ok) | API requests (top) |\n|---|---:|---|\n";
    for (name, p) in phases {
        let reqs: Vec<String> = p["apiserver_requests"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}: {:.0}", f(v)))
            .collect();
        md += &format!("| {name} | {:.0} | {} |\n", f(&p["operator"]["reconciles_ok"]), reqs.join(", "));
    }
    md += "\n### At the end\n\n";
    let fm = &j["final"]["operator_metrics"];
    md += &format!(
        "`csp_xds_connected_proxies` {}, `csp_xds_nacks_total` {}; simulated proxies whose stream ended: {}.\n\n",
        fm["connected"], fm["nacks"], j["final"]["simulated_ended"]
    );
    md += "| Envoy | region | listen | running | active clusters | listeners | VmRSS (MiB) |\n|---|---|---|---|---:|---:|---:|\n";
    for envoy in j["final"]["envoys"].as_array().into_iter().flatten() {
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} |\n",
            envoy["node"].as_str().unwrap_or("?"),
            envoy["region"].as_str().unwrap_or("?"),
            envoy["listen"].as_str().unwrap_or("?"),
            envoy["running"],
            envoy["active_clusters"],
            envoy["listeners"],
            f(&envoy["vmrss_mib"])
        );
    }
    md
}
