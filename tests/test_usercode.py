"""User code claims: ``[code]`` run in a child process under ``[limits]``, every way out contained,
side conditions, float32 precision and ``--rtol/--atol``, realistic widths.

The escape tests run the command line as a user does (``python -m symbp verify spec.toml``) in a
subprocess: code that calls ``os._exit`` in-process would end the test run itself."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import symbp
from symbp.errors import SymbpError
from symbp.spec import loads

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = Path(__file__).parent / "claims"
SIDE = "every target row sums to 1"
TARGETS = ("W3", "b3", "W2", "b2", "W1", "b1")  # the order backward_mlp returns them in
PARAMS = ("W1", "b1", "W2", "b2", "W3", "b3")  # the network's order: what undelivered code was to deliver

MODEL = """\
[model]
sizes = [4, 5, 3, 3]
batch = 4
"""


def _mlp_module():
    spec = importlib.util.spec_from_file_location("backward_mlp", CLAIMS / "backward_mlp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MLP_CODE = _mlp_module()


def write_spec(tmp_path, code, *, function="backward", limits="", model=MODEL):
    """A spec file with a ``[code]`` table naming ``backward.py`` (written from ``code``)."""
    (tmp_path / "backward.py").write_text(textwrap.dedent(code))
    spec = tmp_path / "spec.toml"
    spec.write_text(model + f'\n[code]\npath = "backward.py"\nfunction = "{function}"\n'
                    + (f"\n[limits]\n{limits}\n" if limits else ""))
    return spec


def cli(*args, cwd):
    """``python -m symbp ARGS`` in a fresh interpreter: (exit code, stdout lines, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "symbp", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout.splitlines(), done.stderr


def error_lines(detail, targets=PARAMS):
    return [f"dL/d{t}  error  numeric       {detail}" for t in targets]


# --------------------------------------------------------------------------- [limits]


def test_limits_are_read_with_defaults(tmp_path):
    (tmp_path / "b.py").write_text("def backward(values):\n    return {}\n")
    spec = loads(MODEL + '[code]\npath = "b.py"\n')
    assert (spec.limits["seconds"], spec.limits["memory_mb"]) == (60, 4096)
    spec = loads(MODEL + '[code]\npath = "b.py"\n[limits]\nseconds = 2.5\nmemory_mb = 512\n',
                 path=tmp_path / "spec.toml")
    assert (spec.limits["seconds"], spec.limits["memory_mb"]) == (2.5, 512)
    code = spec.code_claim()
    assert (code.function, code.seconds, code.memory_mb, code.path.name) == ("backward", 2.5, 512, "b.py")


@pytest.mark.parametrize("limits, message", [
    ("seconds = -1", "limits.seconds: expected a number of seconds > 0, got -1"),
    ("seconds = 0", "limits.seconds: expected a number of seconds > 0, got 0"),
    ("seconds = nan", "limits.seconds: expected a number of seconds > 0, got nan"),
    ("seconds = inf", "limits.seconds: expected a number of seconds > 0, got inf"),
    ('seconds = "5"', "limits.seconds: expected a number of seconds > 0, got '5'"),
    ("seconds = true", "limits.seconds: expected a number of seconds > 0, got True"),
    ("memory_mb = 0", "limits.memory_mb: expected a whole number of megabytes > 0, got 0"),
    ("memory_mb = 1.5", "limits.memory_mb: expected a whole number of megabytes > 0, got 1.5"),
    ("memory = 5", "limits: unknown field 'memory' (did you mean 'memory_mb'?); fields: seconds, memory_mb"),
])
def test_bad_limits_are_one_line_errors_naming_the_field(limits, message):
    with pytest.raises(SymbpError) as info:
        loads(MODEL + '[code]\npath = "b.py"\n[limits]\n' + limits + "\n")
    assert str(info.value) == message


def test_bad_limits_on_the_command_line_exit_2(tmp_path):
    spec = write_spec(tmp_path, MLP_SOURCE, limits="seconds = -1")
    code, out, err = cli("verify", spec, cwd=tmp_path)
    assert (code, out) == (2, [])
    assert err == "symbp verify: error: limits.seconds: expected a number of seconds > 0, got -1\n"


# --------------------------------------------------------------------------- bounded: time, memory, crashes


MLP_SOURCE = (CLAIMS / "backward_mlp.py").read_text()


def test_a_backward_that_never_returns_is_stopped_at_its_time_limit(tmp_path):
    spec = write_spec(tmp_path, """\
        def backward(values):
            while True:
                pass
        """, limits="seconds = 1")
    start = time.perf_counter()
    code, out, _ = cli("verify", spec, cwd=tmp_path)
    assert time.perf_counter() - start < 30
    assert code == 1
    assert out[1:] == error_lines("backward ran past 1 s") + ["0 of 6 claims hold"]


def test_an_exception_names_the_users_file_and_line(tmp_path):
    spec = write_spec(tmp_path, """\
        import numpy as np


        def helper(values):
            n = values["x"].shape[0]
            k = 0
            return n // k


        def backward(values):
            return {"W1": helper(values)}
        """)
    code, out, _ = cli("verify", spec, cwd=tmp_path)
    assert code == 1
    assert out[1:] == error_lines(
        "backward raised ZeroDivisionError: integer division or modulo by zero (backward.py, line 7)") \
        + ["0 of 6 claims hold"]


def test_memory_beyond_the_limit_is_an_error(tmp_path):
    spec = write_spec(tmp_path, """\
        import numpy as np


        def backward(values):
            big = np.ones((1024, 1024, 1024))
            return {"W1": big}
        """, limits="memory_mb = 256")
    code, out, _ = cli("verify", spec, cwd=tmp_path)
    assert code == 1
    assert out[1:] == error_lines("backward used more than 256 MB") + ["0 of 6 claims hold"]


def test_a_process_killed_by_a_signal_is_an_error(tmp_path):
    spec = write_spec(tmp_path, """\
        import os
        import signal


        def backward(values):
            os.kill(os.getpid(), signal.SIGKILL)
        """)
    code, out, _ = cli("verify", spec, cwd=tmp_path)
    assert code == 1
    assert out[1:] == error_lines("backward: the process was killed by signal 9 (SIGKILL)") \
        + ["0 of 6 claims hold"]


# --------------------------------------------------------------------------- no way out


@pytest.mark.parametrize("body, detail", [
    ("sys.exit(0)", "backward called sys.exit(0) (backward.py, line 6)"),
    ("sys.exit(3)", "backward called sys.exit(3) (backward.py, line 6)"),
    ("sys.exit()", "backward called sys.exit() (backward.py, line 6)"),
    ("raise KeyboardInterrupt", "backward raised KeyboardInterrupt (backward.py, line 6)"),
    ("os._exit(0)", "backward: the process exited with status 0 before returning"),
    ("os._exit(5)", "backward: the process exited with status 5 before returning"),
])
def test_a_backward_cannot_leave_by_exiting(tmp_path, body, detail):
    spec = write_spec(tmp_path, f"""\
        import os
        import sys


        def backward(values):
            {body}
        """)
    code, out, _ = cli("verify", spec, cwd=tmp_path)
    assert code == 1
    assert out[1:] == error_lines(detail) + ["0 of 6 claims hold"]


@pytest.mark.parametrize("body, detail", [
    ("sys.exit(0)", "importing backward.py called sys.exit(0) (backward.py, line 3)"),
    ("os._exit(0)", "importing backward.py: the process exited with status 0 before returning"),
    ("1 / 0", "importing backward.py raised ZeroDivisionError: division by zero (backward.py, line 3)"),
])
def test_the_modules_import_cannot_leave_either(tmp_path, body, detail):
    spec = write_spec(tmp_path, f"""\
        import os
        import sys
        {body}
        """)
    code, out, _ = cli("verify", spec, cwd=tmp_path)
    assert code == 1
    assert out[1:] == error_lines(detail) + ["0 of 6 claims hold"]


def test_exit_in_the_second_call_errors_what_was_not_delivered(tmp_path):
    spec = write_spec(tmp_path, (MLP_SOURCE + textwrap.dedent("""\


        calls = []


        def backward_once(values):
            calls.append(1)
            if len(calls) > 1:
                sys.exit(0)
            return backward(values)
        """)).replace("import numpy as np", "import sys\n\nimport numpy as np"), function="backward_once")
    code, out, _ = cli("verify", spec, cwd=tmp_path)
    assert code == 1
    assert out[1].startswith("dL/dW1  error  numeric       backward_once called sys.exit(0) (backward.py, line ")
    assert [line.split()[1] for line in out[1:7]] == ["error"] * 6


def test_a_missing_function_is_bad_input(tmp_path):
    spec = write_spec(tmp_path, "def backwards(values):\n    return {}\n")
    code, out, err = cli("verify", spec, cwd=tmp_path)
    assert (code, out) == (2, [])
    assert err == ("symbp verify: error: code.function: 'backward.py' defines no function 'backward' "
                   "(did you mean 'backwards'?)\n")


def test_user_prints_do_not_reach_the_json(tmp_path):
    spec = write_spec(tmp_path, MLP_SOURCE.replace('    """dL/dW_l and dL/db_l, denominator layout (shaped like W_l and b_l)."""',
                                                   '    print("hello from backward")'))
    code, out, err = cli("verify", spec, "--json", cwd=tmp_path)
    assert code == 0, err
    payload = json.loads("\n".join(out))
    assert [r["verdict"] for r in payload["results"]] == ["holds"] * 6
    assert "hello from backward" in err


@pytest.mark.parametrize("returned, verdict, detail", [
    ("{k: v.astype(complex) for k, v in backward(values).items()}", "error",
     "returned complex numbers (complex128); a gradient of a real loss is real"),
    ("{k: np.full(v.shape, None) for k, v in backward(values).items()}", "error",
     "not an array of numbers (dtype object)"),
    ("{k: v * np.nan for k, v in backward(values).items()}", "fails", None),
])
def test_complex_object_and_non_finite_results(tmp_path, returned, verdict, detail):
    source = MLP_SOURCE + f"\n\ndef backward_odd(values):\n    return {returned}\n"
    spec = write_spec(tmp_path, source, function="backward_odd")
    code, out, _ = cli("verify", spec, "--json", cwd=tmp_path)
    assert code == 1
    results = json.loads("\n".join(out))["results"]
    assert [r["verdict"] for r in results] == [verdict] * 6
    if detail:
        assert [r["detail"] for r in results] == [f"{t}: {detail}" for t in TARGETS]
    else:
        assert results[0]["detail"].startswith("W3 has 9 entries that are not finite (nan at W3[1,1])")
        assert results[0]["got"] == "nan"


# --------------------------------------------------------------------------- callables in-process


def test_a_callable_that_exits_is_contained_in_process():
    net = symbp.MLP([4, 5, 3, 3], batch=4)

    def backward(values):
        raise SystemExit(0)

    report = symbp.verify(net, backward)
    assert [(r.target, r.verdict) for r in report.results] == [(t, "error") for t in net.params]
    assert report.results[0].detail.startswith("backward called sys.exit(0) (test_usercode.py, line ")


def test_a_lambda_is_judged():
    net = symbp.MLP([4, 5, 3, 3], batch=4)
    report = symbp.verify(net, lambda values: MLP_CODE.backward(values))
    assert report.ok and {r.claim for r in report.results} == {"<lambda>"}


def test_keyboard_interrupt_in_process_reaches_the_person_at_the_keyboard():
    def backward(values):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        symbp.verify(symbp.MLP([4, 5, 3, 3], batch=4), backward)


def test_code_files_through_the_api_run_in_a_child(tmp_path):
    (tmp_path / "backward.py").write_text("import os\n\ndef backward(values):\n    os._exit(0)\n")
    code = symbp.usercode.CodeFile(tmp_path / "backward.py", "backward", seconds=10)
    report = symbp.verify(symbp.MLP([4, 5, 3, 3], batch=4), code)
    assert {r.detail for r in report.results} == {"backward: the process exited with status 0 before returning"}


# --------------------------------------------------------------------------- side conditions


def test_code_that_needs_unit_rows_holds_only_under_the_side_condition():
    net = symbp.MLP([4, 5, 3, 3], batch=4)
    general = symbp.verify(net, MLP_CODE.backward)
    assert general.ok and general.assumptions == []
    unit = symbp.verify(net, MLP_CODE.backward_unit_rows)
    assert unit.ok and unit.assumptions == [SIDE]
    assert all(r.detail.endswith(f"; assuming {SIDE}") for r in unit.results)


def test_code_wrong_on_both_kinds_of_target_fails():
    net = symbp.MLP([4, 5, 3, 3], batch=4)

    def backward(values):
        return {k: 2 * v for k, v in MLP_CODE.backward_unit_rows(values).items()}

    report = symbp.verify(net, backward)
    assert [(r.verdict, r.diagnosis, r.factor) for r in report.results] == [("fails", "scaled", 0.5)] * 6
    assert report.assumptions == []


def test_cli_lists_the_side_condition_of_code(tmp_path):
    spec = write_spec(tmp_path, MLP_SOURCE, function="backward_unit_rows")
    code, out, _ = cli("verify", spec, cwd=tmp_path)
    assert code == 0
    assert out[-1] == f"6 of 6 claims hold (assuming {SIDE})"


# --------------------------------------------------------------------------- float32, tolerances


F32 = symbp.MLP([16, 16, 8, 4], batch=4)


def test_float32_code_is_judged_at_float32_precision():
    report = symbp.verify(F32, MLP_CODE.backward_float32)
    assert report.ok, report.text()
    rtol = 8 * 3 * 4 * float(np.finfo(np.float32).eps)  # 8 L sqrt(max(widths, batch)) eps
    assert {r.detail for r in report.results} == {f"equal at float32 precision at random points (rtol {rtol:.2g})"}
    report = symbp.verify(F32, MLP_CODE.backward)
    assert {r.detail for r in report.results} == {"equal in float64 at random points (rtol 1e-07)"}


def test_float32_code_with_a_mistake_still_fails():
    def backward(values):
        return {k: v * 4 for k, v in MLP_CODE.backward_float32(values).items()}

    report = symbp.verify(F32, backward)
    assert [(r.verdict, r.diagnosis, r.factor) for r in report.results] == [("fails", "scaled", 0.25)] * 6


def test_tolerances_given_replace_the_dtypes():
    report = symbp.verify(F32, MLP_CODE.backward_float32, rtol=0, atol=0)
    assert not report.ok
    failed = [r for r in report.results if not r.ok]
    assert all(r.expected != r.got for r in failed)
    report = symbp.verify(F32, MLP_CODE.backward_float32, rtol=1e-3, atol=1e-12)
    assert report.ok
    assert {r.detail for r in report.results} == {"equal at float32 precision at random points (rtol 0.001, atol 1e-12)"}


def test_a_difference_reported_shows_in_the_digits():
    def backward(values):
        return {k: v * (1 + 3e-7) for k, v in MLP_CODE.backward(values).items()}

    report = symbp.verify(F32, backward)
    assert not report.ok
    for r in report.results:
        assert r.expected != r.got and float(r.expected) != float(r.got)
        assert float(r.got) == pytest.approx(float(r.expected) * (1 + 3e-7), rel=1e-5)


def test_numbers_that_look_equal_at_six_digits_are_shown_in_full():
    from symbp.verify import _shown

    truth = -0.17556512345
    assert _shown(truth, np.float32(truth)) == ("-0.17556512345", "-0.17556512355804443")
    assert _shown(truth, truth * (1 + 1e-9)) == ("-0.17556512345", "-0.17556512362556514")
    assert _shown(0.25, 0.5) == ("0.25", "0.5")


@pytest.mark.parametrize("kwargs, message", [
    ({"rtol": -1}, "verify: rtol must be a finite number >= 0, got -1"),
    ({"atol": float("nan")}, "verify: atol must be a finite number >= 0, got nan"),
    ({"rtol": "1e-3"}, "verify: rtol must be a finite number >= 0, got '1e-3'"),
])
def test_bad_tolerances_are_one_line_errors(kwargs, message):
    with pytest.raises(SymbpError) as info:
        symbp.verify(F32, MLP_CODE.backward, **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("flag, value, message", [
    ("--rtol", "-1", "symbp verify: error: --rtol: expected a finite number >= 0, got -1\n"),
    ("--atol", "inf", "symbp verify: error: --atol: expected a finite number >= 0, got inf\n"),
    ("--rtol", "x", "symbp verify: error: --rtol: expected a finite number >= 0, got 'x'\n"),
])
def test_bad_tolerance_flags_exit_2(tmp_path, flag, value, message):
    spec = write_spec(tmp_path, MLP_SOURCE)
    code, out, err = cli("verify", spec, flag, value, cwd=tmp_path)
    assert (code, out, err) == (2, [], message)


def test_tolerance_flags_reach_code_claims(tmp_path):
    spec = write_spec(tmp_path, MLP_SOURCE, function="backward_float32",
                      model="[model]\nsizes = [16, 16, 8, 4]\nbatch = 4\n")
    code, out, _ = cli("verify", spec, "--rtol", "0", "--atol", "0", cwd=tmp_path)
    assert code == 1
    code, out, _ = cli("verify", spec, "--rtol", "1e-3", cwd=tmp_path)
    assert code == 0
    assert out[1] == "dL/dW3  holds  numeric       equal at float32 precision at random points (rtol 0.001)"


# --------------------------------------------------------------------------- realistic widths


def test_correct_code_at_realistic_widths_holds(tmp_path):
    spec = write_spec(tmp_path, MLP_SOURCE, model="[model]\nsizes = [32, 32, 32, 10]\nbatch = 4\n")
    code, out, err = cli("verify", spec, cwd=tmp_path)
    assert code == 0, err
    assert out[-1] == "6 of 6 claims hold"


def test_the_child_imports_neither_sympy_nor_symbp(tmp_path):
    (tmp_path / "backward.py").write_text(MLP_SOURCE + textwrap.dedent("""\


        def backward_light(values):
            import sys

            heavy = sorted(m for m in ("sympy", "symbp") if m in sys.modules)
            if heavy:
                raise RuntimeError(f"the child imported {heavy}")
            return backward(values)
        """))
    code = symbp.usercode.CodeFile(tmp_path / "backward.py", "backward_light")
    report = symbp.verify(symbp.MLP([4, 5, 3, 3], batch=4), code)
    assert report.ok, report.text()
