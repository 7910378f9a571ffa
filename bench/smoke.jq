# The benchmark smoke's check (scripts/test): prints, one per line, every result of a quick
# run's latest.json that is missing or not above zero, and every failure the pipes' part
# recorded; prints nothing when the run is whole. Speed is not judged here (docs/performance.md).
# The data plane's fields are left out only where the run recorded why this machine cannot
# generate traffic at all (`unavailable.dataplane`: the kernel refuses BPF_PROG_TEST_RUN's live
# frames even to a program that drops every frame); scripts/test prints that reason.
def dataplane_fields: [
  "pdr_kpps.plain", "pdr_kpps.end_ad", "pdr_kpps.end_as", "pdr_kpps.end_am",
  "vnf_scaling_kpps.1", "vnf_installed_kpps.1", "vnf_installed_kpps.10", "vnf_installed_one_kpps.10",
  "vnf_spread_kpps.1.plain", "vnf_spread_kpps.1.end_ad", "vnf_spread_kpps.10.plain", "vnf_spread_kpps.10.end_ad",
  "chain3_kpps.srv6pipes", "chain3_kpps.plain", "age0_kpps", "age1_kpps",
  "monitor_kpps.detached", "monitor_kpps.drops", "monitor_kpps.trace",
  "bpf_alternating.end_ad_age0.ratio.median", "bpf_alternating.end_ad_monitor_drops.ratio.median",
  "pdr_alternating.end_ad_age0.ratio.median", "pdr_alternating.end_ad_monitor_drops.ratio.median",
  "vnf_installed_alternating.10.ratio.median", "vnf_spread_alternating.10.ratio.median",
  "generator_ceiling_kpps.median", "part_seconds.dataplane_pdr", "part_seconds.vnfs",
  "part_seconds.dataplane_teardown"
];
def fields: [
  "cni_add_ms.p50", "cni_add_ms.p99", "cni_del_ms.p99", "cni_add_steps_ms.daemon_register.p50",
  "cni_add_steps_ms.veth.p50", "ptp_add_ms.p99", "bridge_add_ms.p99", "cni_add_during_program_ms.p99",
  "program_10k_sids_ms.p50",
  "chain_apply_ms.p50", "chain_apply_ms.p99", "control_writes_per_change.100", "control_cpu_ms_per_change.100",
  "tcp_goodput_mbps.chained_mbps", "tcp_goodput_mbps.unchained_mbps",
  "tcp_goodput_mbps.cpu_busy.chained.client_cpu.median",
  "host_noise.start.l1_ns.median", "host_noise.end.l3_ns.median",
  "run_minutes",
  "part_seconds.cni", "part_seconds.stream",
  "stream.http_1k_rps.proxy", "stream.http_1k_rps.router", "stream.http_1k_rps.two_proxies_xor",
  "stream.http_10m_mbps.proxy", "stream.http_10m_mbps.router", "stream.http_10m_mbps.two_proxies_xor",
  "stream.lossy_mbps.direct", "stream.lossy_mbps.proxy", "stream.idle_10k_rss_mb"
];
def positive: type == "number" and . > 0;
# The value at a dotted path, null where the report has none (or something else on the way).
def at($path): try getpath($path | split(".")) catch null;
def no_dataplane: at("unavailable.dataplane") | type == "string" and length > 0;
((fields + (if no_dataplane then [] else dataplane_fields end))[] as $f
 | select(at($f) | positive | not) | "missing or not above zero: \($f)"),
# Counts that may well be zero.
(["tcp_goodput_mbps.retransmits.chained.median", "tcp_goodput_mbps.dsacked.unchained.median"][] as $f
 | select(at($f) | type != "number") | "missing: \($f)"),
(if no_dataplane or (at("pdr_kpps.kernel_static_proxy") | positive)
    or (at("unavailable.kernel_static_proxy") | type == "string" and length > 0)
 then empty else "missing: pdr_kpps.kernel_static_proxy, and no reason in unavailable.kernel_static_proxy" end),
(at("stream.functions_mbps") | if type == "object" and length > 0
 then to_entries[] | select(.value | positive | not) | "not above zero: stream.functions_mbps.\(.key)"
 else "missing: stream.functions_mbps" end),
(at("stream.failures") | if type == "array" then .[] | "stream failed: \(.)" else "missing: stream.failures" end)
