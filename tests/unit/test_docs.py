"""The docs are held to the code: config defaults, the module table, the keys their commands set.

A reference that drifts from the code misleads exactly the reader who trusts it, so each table a
reader copies values from is parsed here and compared with what the code declares.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from edropout_ray.config import Config

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "edropout_ray"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def table_rows(markdown: str, header: str) -> list[list[str]]:
    """The cells of each body row of the first table whose header line starts with `header`."""
    lines = markdown.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(header)), None)
    assert start is not None, f"no table with header {header!r}"
    rows = []
    for line in lines[start + 2:]:  # past the header and its |---| line
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def section(markdown: str, title: str) -> str:
    """The text under a `## title` heading, up to the next `## ` heading."""
    start = markdown.index(f"\n## {title}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start:end if end >= 0 else None]


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


def documented_defaults(markdown: str, header: str) -> dict[str, str]:
    """key -> default as written, from a `| key | default | meaning |` table; a row may name several
    keys with as many defaults (`lr`, `momentum` | `0.05`, `0.9`)."""
    found = {}
    for cells in table_rows(markdown, header):
        keys, defaults = backticked(cells[0]), backticked(cells[1])
        assert keys and len(keys) == len(defaults), (
            f"row {cells[0]!r}: every key needs its default in backticks, as YAML, in the same order; got {cells[1]!r}")
        for key, default in zip(keys, defaults):
            assert key not in found, f"{key} documented twice"
            found[key] = default
    return found


def field_default(field: dataclasses.Field):
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


def same_value(written: str, declared) -> bool:
    """The default as a user would write it (YAML) equals the declared one; 5e-4 (a string to YAML 1.1)
    and 1 for 1.0 count as the same number, as Config reads them; true never passes for 1."""
    value = yaml.safe_load(written)
    if isinstance(declared, bool) or isinstance(value, bool):
        return value is declared
    if isinstance(declared, float) and isinstance(value, (int, float, str)):
        try:
            return float(value) == declared
        except ValueError:
            return False
    return value == declared


CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def test_config_md_documents_every_config_key_with_its_default():
    documented = documented_defaults(section((ROOT / "docs/config.md").read_text(), "Run keys"), "| key | default |")
    assert sorted(set(CONFIG_FIELDS) - set(documented)) == [], "Config keys missing from docs/config.md"
    assert sorted(set(documented) - set(CONFIG_FIELDS)) == [], "docs/config.md documents keys Config does not have"
    wrong = {key: (written, field_default(CONFIG_FIELDS[key])) for key, written in documented.items()
             if not same_value(written, field_default(CONFIG_FIELDS[key]))}
    assert wrong == {}, "docs/config.md default (as written) differs from Config's (declared)"


def test_readme_config_table_gives_configs_defaults():
    documented = documented_defaults((ROOT / "README.md").read_text(), "| key | default |")
    assert sorted(set(documented) - set(CONFIG_FIELDS)) == [], "README documents keys Config does not have"
    wrong = {key: (written, field_default(CONFIG_FIELDS[key])) for key, written in documented.items()
             if not same_value(written, field_default(CONFIG_FIELDS[key]))}
    assert wrong == {}, "README default (as written) differs from Config's (declared)"


def sweep_spec_defaults() -> dict:
    """SweepSpec's fields and defaults, read from sweep/spec.py's source (importing it would start importing Ray)."""
    tree = ast.parse((PACKAGE / "sweep" / "spec.py").read_text())
    spec = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "SweepSpec")
    defaults = {}
    for node in spec.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "field":
                factory = next(k.value.id for k in value.keywords if k.arg == "default_factory")
                defaults[node.target.id] = {"dict": {}, "list": []}[factory]
            else:
                defaults[node.target.id] = ast.literal_eval(value)
    return defaults


def test_config_md_documents_every_sweep_key_with_its_default():
    declared = sweep_spec_defaults()
    assert "max_failures" in declared, "SweepSpec's fields were not read"
    documented = documented_defaults(section((ROOT / "docs/config.md").read_text(), "Sweep files"), "| key | default |")
    assert sorted(set(declared) ^ set(documented)) == [], "sweep keys in SweepSpec and docs/config.md differ"
    wrong = {key: (written, declared[key]) for key, written in documented.items()
             if not same_value(written, declared[key])}
    assert wrong == {}, "docs/config.md sweep default (as written) differs from SweepSpec's (declared)"


def test_the_comparison_of_defaults_can_fail():
    """The checks above would pass on anything if `same_value` accepted everything."""
    assert not same_value("0.25", 0.15)
    assert not same_value("continue", "restart")
    assert not same_value("true", 1)
    assert not same_value("null", 0)
    assert same_value("5e-4", 5e-4) and same_value("1", 1.0) and same_value("[pt2]", ["pt2"])


def design_table_modules() -> set[str]:
    """The package paths named in docs/design.md's layer table (the layer's folder plus the module)."""
    named = set()
    for layer, module, *_ in table_rows(section((ROOT / "docs/design.md").read_text(), "Layers"), "| layer | module |"):
        folder = layer.strip("`") if layer.startswith("`") else ""
        named.add(folder + module.strip("`"))
    return named


def test_design_md_names_every_module_of_the_package():
    modules = {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py") if path.name != "__init__.py"}
    named = design_table_modules()
    assert sorted(modules - named) == [], "modules missing from docs/design.md's layer table"
    assert sorted(named - modules) == [], "docs/design.md's layer table names modules that do not exist"


SET_PAIR = re.compile(r"(?:^|\s)([a-z][a-z0-9_]*)=")
PLACEHOLDERS = {"key"}  # `--set key=value` in prose


def set_keys(command: str) -> list[str]:
    """The config keys a command line sets: every KEY of `KEY=VALUE` after a `--set`."""
    keys = []
    for part in re.split(r"--set\s+", command)[1:]:
        # the pairs run until the next flag (`--output ...`) or the end
        keys += SET_PAIR.findall(re.split(r"\s--?[a-z]", part)[0])
    return [key for key in keys if key not in PLACEHOLDERS]


def code(markdown: str) -> list[str]:
    """The lines of fenced code blocks (backslash continuations joined) and the inline code spans."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.M | re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    outside = re.sub(r"^```[^\n]*\n.*?^```", "", markdown, flags=re.M | re.S)
    return lines + [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", outside)]


def doc_commands() -> list[tuple[str, str]]:
    """(file, command) for every piece of code in the docs that sets config keys with --set."""
    return [(path.name, line) for path in DOCS for line in code(path.read_text()) if "--set " in line]


def test_set_key_parser_reads_what_a_command_sets():
    assert set_keys("edropout-ray train --set model=resnet18 epochs=5 --set data_dir=s3://b/x?a=b --output runs/r") \
        == ["model", "epochs", "data_dir"]


@pytest.mark.parametrize("where,command", doc_commands())
def test_every_key_the_docs_set_is_a_config_key(where, command):
    unknown = [key for key in set_keys(command) if key not in CONFIG_FIELDS]
    assert unknown == [], f"{where}: {command!r} sets keys that Config does not have"


REPO_PATH = re.compile(r"(?:edropout_ray|tests|benchmarks|jobs|clusters|docker)/[\w/.-]+"
                       r"\.(?:py|yaml|json|md|png|sh|txt)")
TEST_NAME = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def test_every_file_and_test_the_docs_name_exists():
    named = {name for path in DOCS for name in REPO_PATH.findall(path.read_text())}
    assert {"jobs/demo.yaml", "benchmarks/results/quality_matrix.json"} <= named, "the path pattern is wrong"
    assert sorted(name for name in named if not (ROOT / name).exists()) == []
    tests = {found for path in DOCS for found in TEST_NAME.findall(path.read_text())}
    assert tests, "the test-name pattern is wrong"
    missing = [f"{file}::{name}" for file, name in sorted(tests)
               if not re.search(rf"^def {name}\(", (ROOT / file).read_text(), flags=re.M)]
    assert missing == [], "docs name tests that do not exist"


RESULTS = ROOT / "benchmarks/results"
MATRIX_MODELS = ("small_cnn", "lenet5", "resnet20")
README_QUALITY_COLUMNS = {  # README's column -> the methods whose best mean it shows
    "EDropout": ("edropout",), "no search": ("edropout_no_search",), "fixed_random": ("fixed_random",),
    "best of random, L1, Torch-Pruning": ("random", "l1", "tp_group_norm", "tp_magnitude", "tp_taylor"),
    "dense": ("dense",),
}


def matrix_top1() -> dict[tuple[str, float, str], float]:
    """(model, size, method) -> mean top-1; the dense runs are filed under the first size (0.5)."""
    rows = json.loads((RESULTS / "quality_matrix.json").read_text())["rows"]
    return {(row["model"], row["size"], row["method"]): row["top1_mean"] for row in rows}


def test_readme_quality_table_is_the_results_files():
    top1 = matrix_top1()
    lines = (ROOT / "README.md").read_text().splitlines()
    header = next(line for line in lines if line.strip().startswith("| at | EDropout |"))
    columns = [cell.strip() for cell in header.strip().strip("|").split("|")][1:]
    assert set(columns) == set(README_QUALITY_COLUMNS)
    rows = table_rows("\n".join(line.strip() for line in lines), "| at | EDropout |")
    assert [row[0] for row in rows] == ["50% of the parameters", "25%"]
    for row, size in zip(rows, (0.5, 0.25)):
        for column, cell in zip(columns, row[1:]):
            if not cell:
                continue
            shown = [float(v) for v in cell.strip("*").split(" / ")]
            methods = README_QUALITY_COLUMNS[column]
            expected = [round(max(top1[(m, size, method)] for method in methods), 2)
                        for m in MATRIX_MODELS]
            assert shown == expected, f"README quality table, {column} at {size}: results file says {expected}"


def matrix_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith(tuple(f"| {m} |" for m in MATRIX_MODELS))]


def test_quality_md_matrix_is_the_results_files():
    results = matrix_rows((RESULTS / "quality_matrix.md").read_text())
    assert len(results) == 51  # 3 models x 2 sizes x 8 methods, and dense
    assert matrix_rows((ROOT / "docs/quality.md").read_text()) == results


@pytest.mark.slow
def test_readme_python_api_example_runs_as_shown():
    """The README's Python API block, run as written (ResNet-18 traced, 8 states scored, one exported)."""
    block = re.search(r"### Python API\n\n```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README has no Python API block"
    names: dict = {}
    exec(compile(block.group(1), "README.md (Python API)", "exec"), names)
    space, states = names["space"], names["states"]
    assert space.describe().startswith("2880 units in 12 coupled groups")  # what the block's comment says
    assert names["energies"].shape == (8,) and names["logits"].shape == (128, 10)
    assert space.kept_parameters(states[0]) == sum(p.numel() for p in names["smaller"].parameters() if p.requires_grad)
