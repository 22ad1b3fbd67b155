"""benchmarks/mutation.py itself, without running a mutant: the mutants it makes, their keys, the
fixed sample, the restoring of a mutated file and the sixteen bugs of issue 29 it replays."""

import ast
import importlib.util
import os
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mutation.py"


@pytest.fixture(scope="module")
def mutation():
    spec = importlib.util.spec_from_file_location("benchmarks_mutation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.parametrize("module", ["sde", "guidance"])
def test_every_mutant_is_one_change_that_compiles_under_a_unique_key(mutation, module):
    source = mutation.module_path(module).read_text()
    mutants = mutation.mutants_of(module)
    keys = mutation.keys(mutants)
    assert len(mutants) > 10 and len(set(keys)) == len(keys)
    original = ast.dump(ast.parse(source))
    for m in mutants:
        assert ast.dump(ast.parse(source[:m.start] + m.replacement + source[m.end:])) != original, m


def test_the_diffusion_specific_mutants_are_made(mutation):
    keys = mutation.keys(mutation.mutants_of("sde"))
    assert "sde:predictor_corrector_sample: schedule.alphas → schedule.alphas_cumprod" in keys  # α ↔ ᾱ
    assert "sde:reverse_sde_update: xp.sqrt(integrated_beta) → (integrated_beta)" in keys  # a √ dropped
    assert "sde:probability_flow_sample: scales[start] → (scales[start - 1])" in keys  # an index against the one before
    assert not any("VP-SDE samplers need" in key and "raise" not in key for key in keys)  # messages are left alone


def test_the_sample_is_fixed_and_no_larger_than_asked(mutation):
    mutants = mutation.mutants_of("sde")
    assert mutation.sample(mutants, 40) == mutation.sample(mutants, 40) and len(mutation.sample(mutants, 40)) == 40
    assert mutation.sample(mutants, 0) == list(range(len(mutants)))


def test_a_mutated_file_gets_its_text_and_time_back(mutation, tmp_path):
    path = tmp_path / "module.py"
    path.write_text("x = 1\n")
    before = path.stat().st_mtime_ns
    with mutation.Mutated(path, "x = 2\n"):
        assert path.read_text() == "x = 2\n" and path.stat().st_mtime_ns != before  # no stale bytecode
    assert path.read_text() == "x = 1\n" and path.stat().st_mtime_ns == before
    with pytest.raises(KeyError), mutation.Mutated(path, "x = 3\n"):
        raise KeyError
    assert path.read_text() == "x = 1\n"


def test_issue_29s_bugs_still_apply_to_the_code(mutation):
    assert len(mutation.GAPS) == 16
    for module, text, bug, files in mutation.GAPS:
        assert mutation.module_path(module).read_text().count(text) == 1, (module, text)
        assert all(os.path.exists(Path(__file__).with_name(name)) for name in files)


def test_every_module_maps_to_existing_test_files(mutation):
    for module, files in mutation.MODULES.items():
        assert mutation.module_path(module).exists()
        assert all(Path(__file__).with_name(name).exists() for name in files), module
