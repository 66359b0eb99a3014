"""The end-to-end benchmark: the gateway and every peer, same scenarios, same run.

    make bench                                   # everything (~10-15 min on 2 cores)
    python -m bench.run --quick                  # the same scenarios, short
    python -m bench.run --find-max               # only the highest clean rate, 1 client
    python -m bench.run --systems gateway,naive --rate 5000 --clients 10 --seconds 5

Systems run interleaved (each scenario on every system before the next scenario, in a
rotating order) so a noisy neighbour on the machine hurts all of them alike. Writes
bench/RESULTS.md (full runs) or bench/out/RESULTS.md (quick and custom runs) and the raw
numbers as JSON under bench/out/.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import BENCH, OUT, machine_info, raise_fd_limit
from bench.harness import Options
from bench.report import write_report
from bench.scenarios import Scenario, Settings, default_scenarios, run_scenario
from bench.systems import LABELS, SYSTEMS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated subset of {','.join(SYSTEMS)}",
    )
    p.add_argument(
        "--scenarios",
        default="",
        help="comma-separated scenario keys: 1k-1,1k-50,100-1000,max-1,burst",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="short runs (smoke test): 3 s per run, 2 s steps, 10k burst",
    )
    p.add_argument(
        "--find-max",
        action="store_true",
        help="only raise the rate until loss > 0.1%% or p99 > 100 ms",
    )
    p.add_argument("--rate", type=float, help="a custom paced scenario at this rate (msg/s)")
    p.add_argument(
        "--clients", type=int, default=None, help="WebSocket clients for --rate / --find-max"
    )
    p.add_argument(
        "--seconds", type=float, default=None, help="measured seconds per paced run (default 10)"
    )
    p.add_argument(
        "--burst", type=int, default=None, help="messages in the burst scenario (default 50,000)"
    )
    p.add_argument(
        "--warmup", type=float, default=None, help="unmeasured warm-up seconds per run (default 2)"
    )
    p.add_argument(
        "--burst-qos",
        type=int,
        choices=(0, 1),
        default=1,
        help="publish QoS of the burst (default 1: at QoS 0 a bounded consumer may drop by design)",
    )
    p.add_argument(
        "--qos",
        type=int,
        choices=(0, 1),
        default=0,
        help="publish QoS (default 0, ChirpStack's default)",
    )
    p.add_argument("--devices", type=int, default=100, help="distinct devices (K)")
    p.add_argument("--publishers", type=int, default=2, help="publisher processes")
    p.add_argument(
        "--client-procs", type=int, default=0, help="client processes (0 = automatic, up to 4)"
    )
    p.add_argument(
        "--decoders", type=int, default=1, help="gateway decode replicas (default 1, as make run)"
    )
    p.add_argument(
        "--step-seconds", type=float, default=None, help="seconds per --find-max step (default 5)"
    )
    p.add_argument("--max-start", type=float, default=2000, help="first --find-max rate")
    p.add_argument("--max-limit", type=float, default=200000, help="highest --find-max rate tried")
    p.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the gateway services (repeatable)",
    )
    p.add_argument(
        "--compare-root",
        type=Path,
        default=None,
        help="also run the gateway from this copy of the project as one more system (before/after)",
    )
    p.add_argument(
        "--compare-label",
        default="modified copy",
        help='what the --compare-root copy is, in the report (e.g. "before")',
    )
    p.add_argument(
        "--compare-decoders",
        type=int,
        default=0,
        help="decode replicas of the --compare-root copy (default: --decoders)",
    )
    p.add_argument(
        "--gateway-root",
        type=Path,
        default=None,
        help="run the gateway services from a copy of the project at this path (measure a change)",
    )
    p.add_argument(
        "--nodered-datatype",
        default="auto-detect",
        help="Node-RED mqtt-in output (auto-detect, utf8, ...)",
    )
    p.add_argument(
        "--profile", action="store_true", help="also profile each gateway service with py-spy"
    )
    p.add_argument(
        "--profile-rate",
        type=float,
        default=0,
        help="rate for --profile (default: 80%% of the gateway's max)",
    )
    p.add_argument("--profile-seconds", type=float, default=10)
    p.add_argument("--results", type=Path, default=None, help="where to write the markdown results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    quick = args.quick
    seconds = args.seconds or (3.0 if quick else 10.0)
    burst = args.burst or (10000 if quick else 50000)
    burst_qos = args.qos if args.burst_qos is None else args.burst_qos
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    LABELS["gateway-copy"] = f"gateway ({args.compare_label})"
    if args.compare_root and "gateway-copy" not in systems:
        systems.insert(systems.index("gateway") + 1 if "gateway" in systems else 0, "gateway-copy")
    unknown = [s for s in systems if s not in SYSTEMS and s != "gateway-copy"]
    if unknown:
        print(f"unknown system(s): {', '.join(unknown)}", file=sys.stderr)
        return 2

    scenarios: list[Scenario]
    custom = False
    if args.rate:
        scenarios = [
            Scenario(
                "custom",
                f"{args.rate:,.0f} msg/s, {args.clients or 1} clients",
                "paced",
                args.rate,
                args.clients or 1,
                seconds,
            )
        ]
        custom = True
    elif args.find_max:
        c = args.clients or 1
        scenarios = [
            Scenario(f"max-{c}", f"highest clean rate (--find-max), {c} client(s)", "findmax", 0, c)
        ]
        custom = True
    else:
        scenarios = default_scenarios(seconds, burst, burst_qos)
        if args.scenarios:
            keys = [k.strip() for k in args.scenarios.split(",")]
            scenarios = [s for s in scenarios if s.key in keys]
            custom = True

    settings = Settings(
        options=Options(
            qos=args.qos,
            devices=args.devices,
            publishers=args.publishers,
            client_procs=args.client_procs,
        ),
        system_options={
            "decoders": args.decoders,
            "gateway_env": dict(kv.split("=", 1) for kv in args.gateway_env),
            "nodered_datatype": args.nodered_datatype,
            "gateway_root": str(args.gateway_root) if args.gateway_root else "",
            "compare_root": str(args.compare_root) if args.compare_root else "",
            "compare_decoders": args.compare_decoders,
        },
        warmup=args.warmup if args.warmup is not None else (1.0 if quick else 2.0),
        step_seconds=args.step_seconds or (2.0 if quick else 5.0),
        max_start=args.max_start,
        max_limit=args.max_limit,
        refine=1 if quick else 2,
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = OUT / f"run-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = open(workdir / "bench.log", "a")  # noqa: SIM115 (open for the whole run)

    def log(text: str) -> None:
        print(text, flush=True)
        log_file.write(text + "\n")
        log_file.flush()

    command = "python -m bench.run" + (
        "" if not (argv or sys.argv[1:]) else " " + shlex.join(argv or sys.argv[1:])
    )
    results: dict[str, Any] = {
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(),
        "settings": {
            "qos": args.qos,
            "burst_qos": burst_qos,
            "devices": args.devices,
            "publishers": args.publishers,
            "decoders": args.decoders,
            "seconds": seconds,
            "warmup": settings.warmup,
            "step_seconds": settings.step_seconds,
            "burst": burst,
            "client_procs": args.client_procs or "auto",
            "nodered_datatype": args.nodered_datatype,
            "gateway_env": settings.system_options["gateway_env"],
            "gateway_root": settings.system_options["gateway_root"] or "(this checkout)",
            "compare_root": settings.system_options["compare_root"],
            "compare_decoders": args.compare_decoders or args.decoders,
            "compare_label": args.compare_label,
        },
        "systems": systems,
        "scenarios": [],
    }
    log(f"bench: {command}; systems {', '.join(systems)}; work dir {workdir}")
    t_start = time.monotonic()
    for index, scenario in enumerate(scenarios):
        log(f"== {scenario.title}")
        entry: dict[str, Any] = {
            "key": scenario.key,
            "title": scenario.title,
            "kind": scenario.kind,
            "rate": scenario.rate,
            "clients": scenario.clients,
            "systems": {},
        }
        # Rotate the order so no system always runs first (or right after the heaviest).
        order = systems[index % len(systems) :] + systems[: index % len(systems)]
        for system in order:
            try:
                entry["systems"][system] = run_scenario(
                    scenario, system, settings, workdir / scenario.key / system, log
                )
            except Exception as exc:  # one broken system must not stop the comparison
                log(f"    {system}: FAILED {exc!r}")
                (workdir / scenario.key / system).mkdir(parents=True, exist_ok=True)
                (workdir / scenario.key / system / "error.txt").write_text(traceback.format_exc())
                entry["systems"][system] = {
                    "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                }
        results["scenarios"].append(entry)
        _save(results, workdir)

    if args.profile:
        from bench.profiling import profile_gateway

        results["profile"] = profile_gateway(
            results, settings, workdir / "profile", args.profile_rate, args.profile_seconds, log
        )
    results["elapsed_s"] = time.monotonic() - t_start
    _save(results, workdir)
    target = args.results or (OUT / "RESULTS.md" if (quick or custom) else BENCH / "RESULTS.md")
    write_report(results, target)
    log(
        f"bench: done in {results['elapsed_s'] / 60:.1f} min; "
        f"wrote {target} and {workdir / 'results.json'}"
    )
    return 0


def _save(results: dict[str, Any], workdir: Path) -> None:
    (workdir / "results.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
