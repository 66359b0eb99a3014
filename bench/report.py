# ruff: noqa: E501  (markdown table rows and sentences read better unwrapped)
"""Turns one run's raw results (bench/out/run-*/results.json) into bench/RESULTS.md.

python -m bench.report bench/out/run-<stamp>/results.json [bench/RESULTS.md]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from bench.systems import LABELS

METHOD = """\
- **Load**: {publishers} publisher processes speak raw MQTT 3.1.1 over TCP with Nagle off
  (`bench/load/publisher.py`; paho costs ~20-40 µs per publish in Python, a hand-built
  PUBLISH ~2 µs). ChirpStack v4 `up` events of ~840 bytes over {devices} devices, QoS {qos} (burst: QoS {burst_qos}),
  paced per message (`t0 + i/rate`); every payload carries `"bench":"run:pub:seq:t_ns"` inside
  `object` (the gateway keeps `object` as published; the peers forward the payload), and a
  unique `deduplicationId`.
- **Clients**: lean WebSocket clients (`bench/load/clients.py`: one epoll loop per process,
  raw RFC 6455, MQTT-over-WebSocket for Mosquitto's listener), up to 4 processes. Each client
  counts every message by (publisher, seq): **lost** = acknowledged by the broker (QoS 1) or
  sent (QoS 0) but never received by that client, **dup** = received twice. **Latency** =
  arrival in the client process − the publisher's send time (CLOCK_MONOTONIC, one clock).
- **Cost**: CPU = utime+stime of every process of the system under test (all threads) over
  the measured window, per 1,000 *published* messages; RSS = sum of each process's peak
  (VmHWM, conservative: pages shared between processes count once per process); PSS = the
  highest sampled sum of proportional set sizes (shared pages split between the processes
  mapping them). The broker is measured apart (for Mosquitto WS the broker *is* the system).
- **Systems**: each run starts a fresh private Mosquitto {mosquitto} (`set_tcp_nodelay true`,
  persistence off, `max_queued_messages 1000000`) and a fresh system, warms up {warmup:g} s
  unmeasured, then measures. gateway = ingest + {decoders} decode + wsfanout started like
  `tests/support/stack.py`; naive = `bench/peers/naive_bridge.py`; Node-RED {nodered} =
  `mqtt in` (output `{nodered_datatype}`) → `websocket out` (`bench/peers/nodered.py`);
  Mosquitto WS = clients subscribe on the broker's own WebSocket listener.
- **Clean** = loss ≤ 0.1 % and p99 ≤ 100 ms, and the publishers reached ≥ 95 % of the rate.
  `--find-max` climbs {ladder} msg/s ({step:g} s per step); a failing step is tried once
  more on a freshly started system (the machine is shared: one noisy moment must not decide),
  then it bisects {refine}× between the last clean and the first failing rate.
- **Machine**: everything (broker, system, publishers, clients) shares the same {nproc}
  cores, so every message costs client and publisher CPU too; "limits" says when a load
  process used > 90 % of a core or the publishers fell short of the rate.
"""


def fmt(v: Any, digits: int = 2, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        if abs(v) >= 1000 or digits == 0:
            return f"{v:,.0f}{unit}"
        return f"{v:.{digits}f}{unit}"
    if isinstance(v, int):
        return f"{v:,}{unit}"
    return str(v)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "–"
    return f"{a / b:.2f}×"


def _m(results: dict[str, Any], key: str, system: str) -> dict[str, Any] | None:
    for sc in results["scenarios"]:
        if sc["key"] == key:
            entry = sc["systems"].get(system) or {}
            return entry.get("measurement")
    return None


def _cores(m: dict[str, Any]) -> str:
    wall = m.get("wall_s") or 0
    if not wall:
        return "–"
    return ", ".join(
        f"{name} {cpu / wall:.0%}" for name, cpu in m.get("sut_cpu_by_proc", {}).items()
    )


def summary(results: dict[str, Any]) -> list[str]:
    systems = results["systems"]
    rows: list[tuple[str, str, bool]] = [
        # (label, (key, field), higher is better)
        ("highest clean rate, 1 client (msg/s)", "max-1:target_rate", True),
        ("p50 latency @ 1,000 msg/s, 1 client (ms)", "1k-1:p50_ms", False),
        ("p99 latency @ 1,000 msg/s, 50 clients (ms)", "1k-50:p99_ms", False),
        ("CPU s per 1,000 msgs @ 1,000 msg/s, 50 clients", "1k-50:cpu_per_1k", False),
        ("peak RSS @ 1,000 msg/s, 50 clients (MB, sum over processes)", "1k-50:sut_rss_mb", False),
        ("peak PSS @ 1,000 msg/s, 50 clients (MB, shared pages split)", "1k-50:sut_pss_mb", False),
        ("p99 latency @ 100 msg/s, 1,000 clients (ms)", "100-1000:p99_ms", False),
        ("lost @ 100 msg/s, 1,000 clients", "100-1000:loss", False),
        ("burst: delivered msg/s", "burst:delivery_rate", True),
        ("burst: lost", "burst:loss", False),
        ("burst: peak RSS (MB)", "burst:sut_rss_mb", False),
    ]
    copy_label = results["settings"].get("compare_label", "modified copy")
    LABELS["gateway-copy"] = f"gateway ({copy_label})"
    head = "| | " + " | ".join(LABELS[s] for s in systems)
    compare = [
        (g, s)
        for g in ("gateway", "gateway-copy")
        for s in ("naive", "nodered")
        if s in systems and g in systems
    ]
    head += (
        "".join(
            f" | {'gateway' if g == 'gateway' else copy_label} ÷ {LABELS[s]}" for g, s in compare
        )
        + " |"
    )
    lines = [head, "|" + "---|" * (1 + len(systems) + len(compare))]
    for label, spec, _higher in rows:
        key, field = spec.split(":")
        values = {}
        for s in systems:
            m = _m(results, key, s)
            values[s] = m.get(field) if m else None
        if all(v is None for v in values.values()):
            continue
        if field == "loss":
            cells = [("–" if values[s] is None else f"{values[s]:.3%}") for s in systems]
        else:
            cells = [fmt(values[s], 3 if "cpu" in field else 2) for s in systems]
        line = f"| {label} | " + " | ".join(cells)
        for g, s in compare:
            line += " | " + ("–" if field == "loss" else ratio(values.get(g), values.get(s)))
        lines.append(line + " |")
    lines.append("")
    lines.append(
        "Ratios are gateway ÷ peer: above 1× is better for rates, below 1× is better for latency, CPU and memory."
    )
    return lines


def targets(results: dict[str, Any], g: str = "gateway") -> list[str]:
    """The issue's targets for the gateway (or the modified copy, ``g="gateway-copy"``)."""

    def get(key: str, system: str, field: str) -> float | None:
        m = _m(results, key, system)
        return None if m is None else m.get(field)

    out = []
    who = "" if g == "gateway" else f"{LABELS[g]}: "

    def check(ok: bool | None, text: str) -> None:
        out.append(f"- {'✅' if ok else ('❌' if ok is not None else '⬜')} {who}{text}")

    gmax, nmax, rmax = (
        get("max-1", g, "target_rate"),
        get("max-1", "naive", "target_rate"),
        get("max-1", "nodered", "target_rate"),
    )
    check(
        None if gmax is None or nmax is None else gmax >= 2 * nmax,
        f"highest clean rate ≥ 2× the naive bridge's: {fmt(gmax)} vs {fmt(nmax)} msg/s ({ratio(gmax, nmax)})",
    )
    check(
        None if gmax is None or rmax is None else gmax >= rmax,
        f"highest clean rate as close to Node-RED's as 2 cores allow: {fmt(gmax)} vs {fmt(rmax)} msg/s ({ratio(gmax, rmax)})",
    )
    g99, r99 = get("1k-50", g, "p99_ms"), get("1k-50", "nodered", "p99_ms")
    check(
        None if g99 is None or r99 is None else g99 <= r99,
        f"p99 @ 1,000 msg/s × 50 clients ≤ Node-RED's: {fmt(g99)} vs {fmt(r99)} ms",
    )
    gc, rc = get("1k-50", g, "cpu_per_1k"), get("1k-50", "nodered", "cpu_per_1k")
    check(
        None if gc is None or rc is None else gc <= rc,
        f"CPU per 1,000 msgs @ 1,000 msg/s × 50 clients ≤ Node-RED's: {fmt(gc, 3)} vs {fmt(rc, 3)} s",
    )
    rss = {
        s: max(
            (
                m.get("sut_rss_mb", 0)
                for sc in results["scenarios"]
                for m in [(sc["systems"].get(s) or {}).get("measurement")]
                if m
            ),
            default=None,
        )
        for s in (g, "nodered")
    }
    check(
        None if None in rss.values() else rss[g] < rss["nodered"],  # type: ignore[operator]
        f"whole gateway's peak RSS < Node-RED's (highest over all scenarios): {fmt(rss[g])} vs {fmt(rss['nodered'])} MB",
    )
    return out


def scenario_tables(sc: dict[str, Any], systems: list[str]) -> list[str]:
    lines = [f"### {sc['title']}", ""]
    lines.append(
        "| system | delivered / expected | lost | dup | p50 ms | p99 ms | p99.9 ms | max ms | published msg/s "
        "| delivered msg/s per client | SUT CPU s/1k | broker CPU s/1k | SUT peak RSS MB | SUT peak PSS MB | broker RSS MB |"
    )
    lines.append("|" + "---|" * 15)
    notes = []
    for s in systems:
        entry = sc["systems"].get(s)
        if entry is None:
            continue
        if "error" in entry:
            lines.append(f"| {LABELS[s]} | failed: {entry['error']} |" + " |" * 13)
            continue
        m = entry.get("measurement")
        if m is None:
            lines.append(f"| {LABELS[s]} | no clean step |" + " |" * 13)
        else:
            lines.append(
                f"| {LABELS[s]} | {m['delivered']:,} / {m['expected']:,} | {m['loss']:.3%} | {m['dups']:,} "
                f"| {fmt(m['p50_ms'])} | {fmt(m['p99_ms'])} | {fmt(m['p999_ms'])} | {fmt(m['max_ms'])} "
                f"| {fmt(m['pub_rate'], 0)} | {fmt(m['delivery_rate'], 0)} | {fmt(m['cpu_per_1k'], 3)} "
                f"| {fmt(m['broker_cpu_per_1k'], 3)} | {fmt(m['sut_rss_mb'], 1)} | {fmt(m.get('sut_pss_mb'), 1)} "
                f"| {fmt(m['broker_rss_mb'], 1)} |"
            )
            where = _cores(m)
            load = (
                f"{m.get('load_cores', 0):.2f} cores (publishers ≤ {m['pub_cpu_util_max']:.0%} of a core each, "
                f"client processes ≤ {m['client_cpu_util_max']:.0%}); other work on the machine: "
                f"{m.get('other_cores', 0):.2f} cores; stolen by the hypervisor: "
                f"{m.get('steal_cores', 0):.2f} cores"
            )
            limits = "; ".join(m.get("limits") or []) or "none seen"
            notes.append(
                f"- {LABELS[s]}{' @ ' + fmt(m['target_rate']) + ' msg/s' if sc['kind'] == 'findmax' else ''}: "
                f"cores used: {where}; load generator: {load}; limits: {limits}"
                + (f"; {entry['limit']}" if entry.get("limit") else "")
            )
    lines.append("")
    lines += notes
    for s in systems:
        entry = sc["systems"].get(s) or {}
        steps = entry.get("steps")
        if not steps:
            continue
        lines += [
            "",
            f"{LABELS[s]} steps:",
            "",
            "| rate | verdict | published msg/s | lost | p50 ms | p99 ms | max ms | CPU by process (share of one core) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for st in steps:
            lines.append(
                f"| {fmt(st['target_rate'])} | {st['verdict']} | {fmt(st['pub_rate'], 0)} | {st['loss']:.3%} "
                f"| {fmt(st['p50_ms'])} | {fmt(st['p99_ms'])} | {fmt(st['max_ms'])} | {_cores(st)} |"
            )
    lines.append("")
    return lines


def profile_section(profile: dict[str, Any]) -> list[str]:
    lines = ["## Where the gateway's time goes (py-spy)", ""]
    if "error" in profile:
        return lines + [f"Profiling failed: {profile['error']}", ""]
    lines.append(
        f"py-spy {profile.get('py_spy', '')} sampled each service for {profile['seconds']:g} s while the gateway "
        f"carried {fmt(profile['rate'])} msg/s to 1 client ({profile.get('summary', '')}). Shares are of the samples in which "
        "the service was running Python (idle waits are not sampled); *self* = time in that function itself."
    )
    lines.append("")
    for name, svc in profile["services"].items():
        per_msg = (
            f", {svc['cpu_us_per_msg']:.0f} µs CPU per message through the gateway"
            if svc.get("cpu_us_per_msg")
            else ""
        )
        lines.append(
            f"**{name}** — {svc['cpu_share']} of a core{per_msg}, {svc['samples']:,} py-spy samples"
        )
        lines.append("")
        if svc.get("os_threads"):
            lines.append(
                "OS threads (from /proc): "
                + "; ".join(
                    f"{t} {share:.0%} of a core, {sw:.1f} context switches per message"
                    for t, share, sw in svc["os_threads"]
                )
            )
            lines.append("")
        if svc.get("packages"):
            lines.append(
                "By package (self): " + ", ".join(f"{p} {pct:.0f}%" for pct, p in svc["packages"])
            )
            lines.append("")
        if len(svc.get("threads") or []) > 1:
            lines.append("By thread: " + ", ".join(f"{t} {pct:.0f}%" for pct, t in svc["threads"]))
            lines.append("")
        lines.append("| self % | function (file:line) |")
        lines.append("|---|---|")
        for pct, fn in svc["self"][:12]:
            lines.append(f"| {pct:.1f} | `{fn}` |")
        lines.append("")
        if svc.get("inclusive"):
            lines.append("| total % | function (inclusive, top) |")
            lines.append("|---|---|")
            for pct, fn in svc["inclusive"][:10]:
                lines.append(f"| {pct:.1f} | `{fn}` |")
            lines.append("")
    if profile.get("notes"):
        lines += ["Findings:", ""] + [f"- {n}" for n in profile["notes"]] + [""]
    return lines


def write_report(results: dict[str, Any], target: Path) -> None:
    systems = results["systems"]
    s = results["settings"]
    mach = results["machine"]
    lines = [
        "# End-to-end benchmark: the gateway against the tools users would pick instead",
        "",
        f"Written by `{results['command']}` on {results['started']} ({results.get('elapsed_s', 0) / 60:.1f} min). "
        "`make bench` rewrites this file; numbers are from one run on a shared 2-core machine, "
        "so compare the ratios within the run rather than absolute values across runs.",
        "",
        "## Summary",
        "",
        *summary(results),
        "",
        "## Targets (issue 6)",
        "",
        *targets(results),
        *(targets(results, "gateway-copy") if "gateway-copy" in systems else []),
        "",
        "## Scenarios",
        "",
    ]
    for sc in results["scenarios"]:
        lines += scenario_tables(sc, systems)
    if results.get("profile"):
        lines += profile_section(results["profile"])
    findings = Path(__file__).resolve().parent / "FINDINGS.md"
    if findings.exists():
        # Hand-written analysis (kept in bench/FINDINGS.md so a re-run keeps it): what the
        # numbers above mean, where the time goes, and the service changes measured on a copy.
        lines += [findings.read_text().rstrip(), ""]
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    lines += [
        "## How it was measured",
        "",
        "Command: `"
        + results["command"]
        + "` (`make bench` runs `python -m bench.run`; `--quick` for a smoke run, "
        "`--find-max`, `--systems`, `--rate/--clients/--seconds` for one custom scenario, `--profile` to add py-spy).",
        "",
        METHOD.format(
            publishers=s["publishers"],
            devices=s["devices"],
            qos=s["qos"],
            burst_qos=s.get("burst_qos", s["qos"]),
            mosquitto=mach.get("mosquitto", ""),
            warmup=s["warmup"],
            decoders=s["decoders"],
            nodered=results.get("nodered_version", "4"),
            nodered_datatype=s["nodered_datatype"],
            step=s["step_seconds"],
            refine="twice" and 2,
            ladder="1k, 2k, 3k, 5k, 7.5k, 10k, 15k, 20k, 25k, 30k, 40k, 50k, 60k, 80k, 100k …",
            nproc=mach.get("nproc"),
        ),
        *(
            [
                f"**gateway ({s.get('compare_label', 'modified copy')})** is the gateway started the same "
                f"way from `{s['compare_root']}` with {s.get('compare_decoders') or s['decoders']} decode "
                "replica(s), to put before and after in one run.",
                "",
            ]
            if s.get("compare_root")
            else []
        ),
        "Machine:",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in mach.items()],
        "",
        f"Settings: `{json.dumps(s)}`",
        "",
    ]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines))


def main() -> int:
    src = Path(sys.argv[1])
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else src.with_name("RESULTS.md")
    write_report(json.loads(src.read_text()), target)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
