"""Spec files: what loads, and each mistake named by its table and field."""


import pytest

from symbp.errors import SymbpError
from symbp.formula import FormulaError
from symbp.spec import load, loads, model_from_table

FULL = """
[model]
sizes = [4, 5, 3, 3]
hidden = ["relu", "tanh"]
output = "softmax"
loss = "cross_entropy"
bias = true
batch = 0
reduction = "mean"

[claims]
z3 = "a3 - y"
W3 = "dz3 @ a2.T"

[code]
path = "backward.py"

[values]
x = [[1], [0], [2], [-1]]

[claimed_values]
dz1 = [[1], [-2], [2], [-1]]
"""


def test_full_spec_loads():
    spec = loads(FULL)
    assert spec.net.sizes == (4, 5, 3, 3)
    assert [a.name for a in spec.net.hidden] == ["relu", "tanh"]
    assert spec.net.batch is None
    assert spec.claims == {"z3": "a3 - y", "W3": "dz3 @ a2.T"}
    assert spec.code == {"path": "backward.py", "function": "backward", "kind": "numpy", "dtype": "float64"}
    assert spec.values == {"x": [[1], [0], [2], [-1]]}
    assert spec.claimed_values == {"dz1": [[1], [-2], [2], [-1]]}


def test_batch_and_residual():
    spec = loads('[model]\nsizes = [2, 2, 2, 2]\nbatch = 8\nreduction = "sum"\nresidual = [2]')
    assert spec.net.batch == 8 and spec.net.reduction == "sum" and spec.net.residual_layers == (2,)
    assert model_from_table({"sizes": [3, 2], "output": "identity", "loss": "mse"}).shape("W1") == (2, 3)


@pytest.mark.parametrize("text, message", [
    ("[model\nsizes = [2]", "not valid TOML"),
    ("[claims]\nz1 = 'a1'", "missing table [model]"),
    ("[modle]\nsizes = [2, 2]", "unknown table [modle] (did you mean 'model'?)"),
    ("[model]\nsizes = [2, 2]\nhiden = 'relu'", "model: unknown field 'hiden' (did you mean 'hidden'?)"),
    ("[model]\nhidden = 'relu'", "model: missing field 'sizes'"),
    ("[model]\nsizes = [2, 2]\nbatch = -1", "model.batch: expected a whole number"),
    ("[model]\nsizes = [2, 2]\nbatch = true", "model.batch: expected a whole number"),
    ("[model]\nsizes = [2, 2]\nloss = 3", "model.loss: expected a name, got 3"),
    ("[model]\nsizes = [2, 2]\nhidden = 3", "model.hidden: expected a name or a list"),
    ("[model]\nsizes = [2, 2]\nresidual = 'yes'", "model.residual: expected true/false"),
    ("[model]\nsizes = [2, 0]", "width n1 = 0 must be a positive integer"),
    ("[model]\nsizes = [2, 2]\noutput = 'softmx'", "unknown output 'softmx' (did you mean 'softmax'?)"),
    ("model = 3", "'model' must be a table"),
    ("[model]\nsizes = [2, 2]\n[claims]\nW12 = 'dz1'", "claims: no gradient named 'W12' (did you mean 'W1'?)"),
    ("[model]\nsizes = [2, 2]\n[claims]\nW1 = 3", "claims.W1: expected a formula string"),
    ("[model]\nsizes = [2, 2]\n[code]\nfunction = 'f'", "code: missing field 'path'"),
    ("[model]\nsizes = [2, 2]\n[code]\npath = 'b.py'\nfunc = 'f'", "code: unknown field 'func' (did you mean 'function'?)"),
    ("[model]\nsizes = [2, 2]\n[code]\npath = 'b.py'\nfunction = 'a b'", "code.function: expected a function name"),
    ("[model]\nsizes = [2, 2]\n[values]\nx = 3", "values.x: expected nested lists"),
])
def test_mistakes_name_table_and_field(text, message):
    with pytest.raises(SymbpError) as info:
        loads(text)
    assert message in str(info.value)


def test_bad_formula_is_reported_with_its_key_and_column():
    with pytest.raises(FormulaError) as info:
        loads("[model]\nsizes = [4, 5, 3, 3]\n[claims]\nW3 = 'dz3 @ a22'")
    assert str(info.value).startswith("claims.W3 'dz3 @ a22', column 7: unknown name 'a22'")


def test_a_claim_whose_shapes_do_not_fit_is_kept_for_its_verdict():
    # a shape mistake is judged by verify (fails, shape or transposed), not refused as bad input
    spec = loads("[model]\nsizes = [4, 5, 3, 3]\n[claims]\nW3 = 'dz3 @ a1'\nb3 = 'dz3'")
    assert spec.claims == {"W3": "dz3 @ a1", "b3": "dz3"}


def test_load_reads_files_and_code(tmp_path):
    (tmp_path / "backward.py").write_text("def backward(values):\n    return {}\n\ndef other(v):\n    return 1\n")
    path = tmp_path / "spec.toml"
    path.write_text(FULL)
    spec = load(path)
    assert spec.path == path
    assert spec.function()({}) == {}
    spec.code["function"] = "bakward"
    with pytest.raises(SymbpError, match="defines no function 'bakward' \\(did you mean 'backward'\\?\\)"):
        spec.function()
    spec.code["path"] = "missing.py"
    with pytest.raises(SymbpError, match="code.path: no such file 'missing.py'"):
        spec.function()
    (tmp_path / "broken.py").write_text("import no_such_module_here\n")
    spec.code["path"] = "broken.py"
    with pytest.raises(SymbpError, match="importing 'broken.py' raised ModuleNotFoundError"):
        spec.function()
    with pytest.raises(SymbpError, match="no such spec file"):
        load(tmp_path / "nope.toml")
    with pytest.raises(SymbpError, match="spec has no \\[code\\] table"):
        loads("[model]\nsizes = [2, 2]").function()


def test_code_path_that_is_not_a_python_file_is_bad_input(tmp_path):
    (tmp_path / "back.txt").write_text("def backward(values):\n    return {}\n")
    path = tmp_path / "spec.toml"
    path.write_text(FULL.replace('path = "backward.py"', 'path = "back.txt"'))
    with pytest.raises(SymbpError, match="code.path: 'back.txt' is not a Python file \\(\\.py\\)"):
        load(path).function()


@pytest.mark.parametrize("sizes, message", [
    ("[٣, ٤]", "not valid TOML"),  # TOML integers are ASCII: Arabic-Indic digits are no widths here either
    ('["٣", 4]', "width n0 = '٣' must be a positive integer"),
    ('"٣,٤"', "sizes: expected a list of layer widths"),
])
def test_spec_sizes_refuse_non_ascii_digits(sizes, message):
    with pytest.raises(SymbpError, match=message):
        loads(f"[model]\nsizes = {sizes}\n")
