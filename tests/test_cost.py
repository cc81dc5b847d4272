"""Cost estimates and the command line's size guard: refuse at once, in one line, what would take
hours or more memory than the machine has; run what fits."""

import re
import time

import pytest

import symbp
from symbp import cost
from symbp.cli import main

REFUSAL = re.compile(r"symbp (derive|verify|example): error: (\S+: )?MLP \[[0-9, ]+\]( with a batch of [0-9]+)?: "
                     r"[0-9,]+ forward entries, about [0-9.]+ (s|min|h|days) and [0-9.]+ (MB|GB) "
                     r"\(limit: 10 min, 8 GB\); .+\n")


def test_entries_count_products_biases_activations_and_the_softmax_sum():
    # [4, 5, 3, 3]: 5*(4+1) + 3*(5+1) + 3*(3+1) = 55, plus 3*3 for the softmax sums
    assert cost.entries([4, 5, 3, 3]) == 64
    assert cost.entries([4, 5, 3, 3], 2) == 128
    assert cost.entries([4, 5, 3, 3], output="sigmoid") == 58
    assert cost.entries([4, 0, 3]) is None and cost.entries("4,5") is None


def test_expand_grows_with_the_square_of_the_entries():
    chain = cost.estimate([8, 8, 8, 4], steps=("derive",))
    expand = cost.estimate([8, 8, 8, 4], steps=("derive",), method="expand")
    assert expand.seconds["derive"] == pytest.approx(cost.EXPAND_SECONDS_PER_ENTRY_SQUARED * 196 ** 2)
    assert chain.seconds["derive"] == pytest.approx(cost.SECONDS_PER_ENTRY["derive"] * 196)


def _refused(argv, capsys):
    start = time.perf_counter()
    code = main(argv)
    took = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2 and REFUSAL.fullmatch(err), err
    assert took < 1.0  # refused before anything is built (a refusal after the work would take minutes)
    return err


def test_a_realistic_size_with_a_large_batch_is_refused_at_once(capsys):
    err = _refused(["derive", "784,256,128,10", "--batch", "64"], capsys)
    assert err.startswith("symbp derive: error: MLP [784, 256, 128, 10] with a batch of 64: 15,055,744 forward "
                          "entries, about ")
    assert err.endswith("the derivation is the same for any batch size: use --batch 4, and symbp.compile for "
                        "numbers at a batch of 64\n")
    # its document does not fit even at a batch of 4: the way out names the derivation for all sizes
    err = _refused(["derive", "784,256,128,10", "--batch", "64", "--pdf", "-o", "never-written.tex"], capsys)
    assert err.endswith("use symbp.compile for numbers at this size; or derive every gradient for all sizes at "
                        "once in index notation (derive --sizes symbolic, symbp.indexform.derive_index)\n")


@pytest.mark.parametrize("argv", [
    ["derive", "999999,2"],
    ["derive", "2,2", "--batch", "1000000000"],
    ["derive", "784,128,64,10", "--method", "expand"],
    ["derive", "784,128,64,10", "--batch", "8", "-o", "never-written.tex"],  # fits without the document
])
def test_derive_refuses_what_would_take_hours(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _refused(argv, capsys)
    assert list(tmp_path.iterdir()) == []


def test_what_fits_is_not_refused():
    # measured: [784, 128, 64, 10] one example about 30 s; a batch of 4 about 3-4 min; [600, 600, 10]
    # with tanh about 5 min (the estimate is of the same order)
    for sizes, batch in (([784, 128, 64, 10], None), ([784, 128, 64, 10], 4), ([600, 600, 10], None)):
        assert not cost.estimate(sizes, batch=batch).too_big
    assert cost.refuse_if_too_big([4, 5, 3, 3]).entries == 64


@pytest.mark.parametrize("model, command", [
    ("sizes = [100000, 100000]", "verify"),
    ("sizes = [4, 5, 3]\nbatch = 1000000000", "verify"),
    ("sizes = [100000, 100000]", "example"),
    ("sizes = [4, 5, 3]\nbatch = 1000000000", "example"),
])
def test_spec_files_of_huge_networks_are_refused_at_once(model, command, tmp_path, capsys):
    spec = tmp_path / "huge.toml"
    spec.write_text(f'[model]\n{model}\n[claims]\nz1 = "a1 - y"\n[values]\nx = [[1]]\n')
    err = _refused([command, str(spec)], capsys)
    assert "MLP [100000, 100000]" in err or "with a batch of 1000000000" in err


def test_the_python_spec_loader_refuses_only_what_cannot_be_built(tmp_path):
    from symbp.spec import loads

    with pytest.raises(symbp.SymbpError, match=r"MLP \[100000, 100000\]: 20,000,100,000 forward entries"):
        loads("[model]\nsizes = [100000, 100000]\n")
    assert loads("[model]\nsizes = [4, 5, 3]\nbatch = 2\n").net.batch == 2


@pytest.mark.parametrize("argv", [
    ["flow", "--depth", "1000000000", "--width", "1000", "--init-scale", "1"],
    ["flow", "--depth", "2", "--width", "1000000", "--init-scale", "1"],
])
def test_flow_refuses_huge_networks_at_once(argv, capsys):
    start = time.perf_counter()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - start < 1.0
    assert err.count("\n") == 1 and err.startswith("symbp flow: error: depth ") and "parameters" in err


def test_a_deep_smooth_flow_network_is_refused_by_its_estimate(capsys):
    # about 50 ms per tanh unit (diff and printing): 2900 layers of 4, plain and residual, is ~20 min
    start = time.perf_counter()
    assert main(["flow", "--depth", "2900", "--width", "4", "--init-scale", "1", "--residual"]) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - start < 1.0
    assert re.fullmatch(r"symbp flow: error: the flow network of depth 2900 and width 4 \(plain and residual\): "
                        r"[0-9,]+ forward entries, about [0-9]+ min and [0-9]+ MB \(limit: 10 min, 8 GB\); "
                        r"choose a smaller --depth or --width\n", err), err
    assert cost.estimate([4] * 2901 + [10], hidden="tanh").total_seconds > \
        cost.estimate([4] * 2901 + [10], hidden="relu").total_seconds + 500


def test_progress_is_shown_with_the_flag_and_not_without(capsys):
    assert main(["derive", "3,4,2"]) == 0
    assert capsys.readouterr().err == ""  # stderr is not a terminal here: silent by default
    assert main(["derive", "3,4,2", "--progress"]) == 0
    lines = capsys.readouterr().err.splitlines()
    steps = ["building the network 3,4,2", "derive (chain)", "lambdify", "the numeric check"]
    starts = [line.split(" ...")[0] for line in lines if " ..." in line]
    assert starts == [f"symbp derive: {s}" for s in steps]
    assert all(re.fullmatch(r"symbp derive: .+ \.\.\. \(estimated [0-9.]+ s\)", line) for line in lines if " ..." in line)
    assert all(re.fullmatch(r"symbp derive: .+: [0-9.]+ s", line) for line in lines if " ..." not in line)
    assert len(lines) == 2 * len(steps)


def test_progress_on_a_terminal_shows_only_steps_past_a_second():
    import io

    from symbp.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    progress = Progress("symbp derive", stream=screen, patience=0.2)
    with progress.step("quick"):
        pass
    assert screen.getvalue() == ""
    with progress.step("slow", estimate=3.0):
        time.sleep(0.5)
    text = screen.getvalue()
    assert "\rsymbp derive: slow ... 0." in text and "(estimated 3.0 s)" in text
    assert re.search(r"\rsymbp derive: slow: 0\.[0-9] s\x1b\[K\n$", text)
