"""scripts/ncu_source.py's summary of an Nsight Compute source page (SASS view, CSV)."""

import csv
import gzip
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "ncu_source", Path(__file__).resolve().parents[2] / "scripts" / "ncu_source.py")
ncu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ncu)

HEADER = ["Address", "Source", "Warp Stall Sampling (All Samples)",
          "Warp Stall Sampling (Not-issued Samples)", "Instructions Executed", "stall_barrier",
          "stall_long_sb", "stall_wait", "stall_long_sb (Not Issued)"]
ROWS = [   # address, text, samples, not issued, executed, barrier, long_sb, wait, long_sb n.i.
    ["0010", "LDL R5, [R1+0x10]", "10", "5", "100", "0", "0", "10", "0"],
    ["0020", "LDG.E R7, desc[UR4][R2.64]", "5", "5", "100", "0", "0", "5", "0"],
    ["0030", "FADD R6, R5, R6", "40", "38", "100", "0", "36", "4", "30"],
    ["0040", "STL [R1+0x14], R6", "5", "3", "100", "0", "0", "5", "0"],
    ["0050", "@!P0 FADD R8, R7, R8", "20", "15", "100", "0", "20", "0", "15"],
    ["0060", "BAR.SYNC.DEFER_BLOCKING 0x0", "20", "20", "50", "20", "0", "0", "0"],
]


def _page(tmp_path, gz=False):
    path = tmp_path / ("page.csv.gz" if gz else "page.csv")
    with (gzip.open(path, "wt", newline="") if gz else open(path, "w", newline="")) as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(["Kernel Name", "_causal_bwd_q_kernel"])
        w.writerow(HEADER)
        w.writerows(ROWS)
    return str(path)


def test_the_page_is_read_with_its_kernel_name(tmp_path):
    kernel, rows = ncu.read_page(_page(tmp_path, gz=True))
    assert kernel == "_causal_bwd_q_kernel"
    assert [r["Address"] for r in rows] == ["0010", "0020", "0030", "0040", "0050", "0060"]


def test_stalls_by_reason_opcode_and_the_load_a_wait_is_on(tmp_path):
    text = ncu.summarize(_page(tmp_path), top=3)
    lines = text.splitlines()
    assert lines[0].startswith("== _causal_bwd_q_kernel: 6 SASS instructions, 100 samples")
    # reasons: long_sb 56 of 100 samples, barrier 20, wait 24; the "(Not Issued)" copies left out
    assert lines[1] == "stall reasons: long_sb 56.0%  wait 24.0%  barrier 20.0%"
    fadd = next(line for line in lines if line.startswith("FADD"))
    assert fadd.split()[1:] == ["60.0%", "36.4%", "2"]    # 60 samples, 200 of 550 executed
    # the first FADD waits on R5 from the spill reload (36), the predicated one on R7 from an
    # LDG (20); the STL's R6 is read, not written
    spill = next(line for line in lines if line.startswith("long-scoreboard"))
    assert spill.endswith(": LDL 36.0%  LDG 20.0%")
    top = lines[lines.index(next(x for x in lines if x.startswith("-- the 3"))) + 1:]
    assert top[0].split()[:3] == ["40.00%", "FADD", "R6,"] and "long_sb 36" in top[0]
    assert len(top) == 3


def test_samples_before_in_and_after_the_widest_loop_that_ran(tmp_path):
    # a block loop 0x20-0x40 whose back edge ran 4 times, a narrower one inside the start
    # (0x10-0x20) that ran 15 times, and a wider one that never ran (a fallback walk's): the
    # block loop is the first, so 0x10 is before it and 0x50, 0x60 after it
    rows = [list(r) for r in ROWS]
    rows[1] = ["0020", "@P0 BRA 0x10", "5", "5", "15", "0", "0", "5", "0"]
    rows[2] = ["0030", "@P1 BRA 0x18", "0", "0", "4", "0", "0", "0", "0"]
    rows[3] = ["0040", "@P2 BRA 0x20", "5", "3", "4", "0", "0", "5", "0"]
    rows.append(["0070", "@P3 BRA 0x10", "0", "0", "0", "0", "0", "0", "0"])
    path = tmp_path / "loop.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(["Kernel Name", "_causal_out_kernel"])
        w.writerow(HEADER)
        w.writerows(rows)
    lines = ncu.summarize(str(path)).splitlines()
    # 60 samples: 10 at 0x10, 5 + 0 + 5 in 0x20-0x40, 20 + 20 after
    assert "samples by place: before the block loop 16.7%, in it 16.7%, after it 66.7%" in lines
    rows = [r for r in rows if "BRA" not in r[1]]
    with open(path, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerows([["Kernel Name", "k"], HEADER, *rows])
    assert "samples by place: no loop" in ncu.summarize(str(path)).splitlines()
