"""The benchmark's reading of /proc/stat: time the hypervisor stole is not "other work"."""

from __future__ import annotations

from bench.common import CLK_TCK, cpu_times, machine_cpu_seconds


def test_steal_is_counted_apart_from_busy_time() -> None:
    #        user nice system idle  iowait irq softirq steal guest guest_nice
    line = "cpu  300  7    90     5000  10     2   40      60    25    0"
    busy, steal = cpu_times(line)
    assert busy == (300 + 7 + 90 + 2 + 40) / CLK_TCK  # idle, iowait, guest left out
    assert steal == 60 / CLK_TCK


def test_an_old_kernel_without_a_steal_column_steals_nothing() -> None:
    busy, steal = cpu_times("cpu  300 7 90 5000 10")
    assert (busy, steal) == ((300 + 7 + 90) / CLK_TCK, 0.0)


def test_this_machine_reads_and_time_only_moves_forward() -> None:
    busy0, steal0 = machine_cpu_seconds()
    sum(i * i for i in range(200_000))  # some busy time to count
    busy1, steal1 = machine_cpu_seconds()
    assert busy1 >= busy0 > 0
    assert steal1 >= steal0 >= 0
