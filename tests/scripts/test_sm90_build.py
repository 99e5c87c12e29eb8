"""scripts/sm90_build.py's counts of a kernel's SASS (the block loop's apart)."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "sm90_build", Path(__file__).resolve().parents[2] / "scripts" / "sm90_build.py")
sm90 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sm90)

# cuobjdump -sass lines: a short loop (0x0040-0x00b0) inside a longer one (0x0020-0x00e0), a
# forward branch out of them, a predicated product and one of each counted class in the inner one
SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;                 /* 0x00000a0000017a02 */
        /*0010*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ ;  /* 0x0 */
        /*0020*/                   LDG.E R2, desc[UR4][R4.64] ;           /* 0x0 */
        /*0030*/              @!P0 BRA 0x00f0 ;                           /* 0x0 */
        /*0040*/                   HMMA.16816.F32.BF16 R8, R12, R16, R8 ;  /* 0x0 */
        /*0050*/               @P1 HMMA.16816.F32 R8, R12, R18, R8 ;       /* 0x0 */
        /*0060*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;          /* 0x0 */
        /*0070*/                   SHFL.BFLY PT, R3, R2, 0x1, 0x1f ;      /* 0x0 */
        /*0080*/                   LDL R5, [R1+0x10] ;                    /* 0x0 */
        /*0090*/                   STL [R1+0x14], R6 ;                    /* 0x0 */
        /*00a0*/                   FADD R6, R5, R6 ;                      /* 0x0 */
        /*00b0*/               @P2 BRA 0x0040 ;                           /* 0x0 */
        /*00c0*/                   IADD3 R7, R7, 0x1, RZ ;                /* 0x0 */
        /*00d0*/                   ISETP.GE.AND P3, PT, R7, 0x4, PT ;     /* 0x0 */
        /*00e0*/              @!P3 BRA 0x0020 ;                           /* 0x0 */
        /*00f0*/                   EXIT ;                                 /* 0x0 */
"""


def test_sass_counts_take_the_loop_that_jumps_back_farthest():
    c = sm90.sass_counts(SASS)
    assert (c["sass"], c["mma"]) == (16, 3)
    # the outer loop: 0x0020 to 0x00e0, thirteen instructions, the HGMMA before it left out
    assert c["loop"] == 13
    assert (c["loop_mma"], c["loop_bar"], c["loop_shfl"], c["loop_ldl"], c["loop_stl"]) == \
        (2, 1, 1, 1, 1)


def test_sass_counts_without_a_loop():
    c = sm90.sass_counts(SASS.replace("@P2 BRA 0x0040", "NOP").replace("@!P3 BRA 0x0020", "NOP"))
    assert (c["sass"], c["loop"], c["loop_mma"]) == (16, 0, 0)


def test_compile_launches_builds_with_the_named_python(monkeypatch, tmp_path):
    # --python / $SM90_PYTHON: the launches are built by another interpreter (e.g. one with the
    # GPU machine's Triton); its "compiled" lines are what comes back, with the interpreter off
    seen = {}

    class Done:
        returncode = 0
        stdout = 'compiled {"name": "k", "shared": 1024}\nother line\n'
        stderr = ""

    def run(cmd, input, env, **kw):
        seen.update(cmd=cmd, input=input, env=env)
        return Done()

    monkeypatch.setattr(sm90.subprocess, "run", run)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("SM90_PYTHON", str(tmp_path / "venv36" / "bin" / "python"))
    code, rows, _ = sm90.compile_launches([{"name": "k"}], stats=True)
    assert seen["cmd"][0] == str(tmp_path / "venv36" / "bin" / "python")
    assert seen["cmd"][-2:] == ["--compile-stdin", "--stats"]
    assert "TRITON_INTERPRET" not in seen["env"]
    assert (code, rows) == (0, [{"name": "k", "shared": 1024}])
    monkeypatch.delenv("SM90_PYTHON")
    sm90.compile_launches([{"name": "k"}])
    assert seen["cmd"][0] == sm90.sys.executable
