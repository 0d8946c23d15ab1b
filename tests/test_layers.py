"""The package's three layers (README, "What this is"), checked on the source.

- The paper (chapters 00-08): stock PyTorch. It imports nothing from the other layers, calls no private torch API,
  keeps no behaviour-changing global state, and its `@patch`es only add methods, one at a time as the chapter
  introduces them; they never replace one.
- The speed-ups (chapter 90): built on the paper layer only, opt-in.
- The lab: everything else (experiments, figures, benchmark, CLI), free to import both.
`utils` (chapter 97) is shared by all three.
"""
import ast
from pathlib import Path

import pytest

import iaf_repro

PAPER = {"density", "elbo", "nf", "made", "iaf", "autoregressive", "data", "vae", "mlp_vae", "train", "evaluate"}
SPEED_UPS = {"accelerate"}
SHARED = {"utils"}
PRIVATE_TENSOR_ATTRIBUTES = {"_version", "data_ptr", "_cdata"}


def package_sources() -> dict[str, str]:
    "Every exported module's source, by module name (nbdev's generated index left out)."
    folder = Path(iaf_repro.__file__).parent
    return {p.stem: p.read_text() for p in sorted(folder.glob("*.py")) if p.stem not in ("__init__", "_modidx")}


def imported_modules(tree: ast.AST) -> set[str]:
    "The iaf_repro modules a module imports: `from .x`, `from iaf_repro.x`, `import iaf_repro.x`, `importlib.import_module('iaf_repro.x')`."
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level > 0: found.add(module.split(".")[0])
            elif module.startswith("iaf_repro."): found.add(module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("iaf_repro.")}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args:
            name = node.args[0].value if isinstance(node.args[0], ast.Constant) else ""
            if isinstance(name, str) and name.startswith("iaf_repro."): found.add(name.split(".")[1])
    return found - {""}


def private_torch_uses(tree: ast.AST) -> set[str]:
    "Expressions that reach into torch's private API (`torch._C`, `torch.ops.*`) or a tensor's version counter or storage pointer."
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            text = ast.unparse(node)
            parts = text.split(".")
            if parts[0] == "torch" and (any(p.startswith("_") and not p.startswith("__") for p in parts) or parts[1:2] == ["ops"]):
                found.add(text)
            if node.attr in PRIVATE_TENSOR_ATTRIBUTES: found.add(text)
    return found


def class_methods(sources: dict[str, ast.AST]) -> dict[str, set[str]]:
    "The methods each class of the package defines in its own body, by class name."
    return {node.name: {f.name for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
            for tree in sources.values() for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}


def patched_methods(tree: ast.AST) -> list[tuple[str, str]]:
    "(class, method) for every fastcore `@patch` in a module, the class read from the annotation of `self`."
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(ast.unparse(d) == "patch" for d in node.decorator_list):
            annotation = node.args.args[0].annotation if node.args.args else None
            found.append((ast.unparse(annotation) if annotation is not None else "?", node.name))
    return found


def reassigned_attributes(tree: ast.AST) -> set[str]:
    "Module-level assignments to another object's attribute (`MaskedLinear.forward = ...`): monkey-patching."
    targets = [t for node in tree.body if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign))
               for t in (node.targets if isinstance(node, ast.Assign) else [node.target])]
    return {ast.unparse(t) for t in targets if isinstance(t, ast.Attribute)}


def layer_violations(sources: dict[str, str]) -> list[str]:
    "Every way `sources` (module name -> source) breaks the layering; [] when it holds."
    trees = {name: ast.parse(src) for name, src in sources.items()}
    methods, problems, seen = class_methods(trees), [], {}
    for name, tree in trees.items():
        layer = "paper" if name in PAPER else "speed-ups" if name in SPEED_UPS else "shared" if name in SHARED else "lab"
        allowed = {"paper": PAPER | SHARED, "speed-ups": PAPER | SHARED, "shared": SHARED, "lab": set(trees)}[layer]
        problems += [f"{name} ({layer}) imports {other}" for other in sorted(imported_modules(tree) - allowed - {name})]
        problems += [f"{name} reassigns {target} at module level" for target in sorted(reassigned_attributes(tree))]
        if layer not in ("paper", "shared"): continue
        problems += [f"{name} ({layer}) uses the private {use}" for use in sorted(private_torch_uses(tree))]
        problems += [f"{name} ({layer}) declares a global" for node in ast.walk(tree) if isinstance(node, ast.Global)]
        for cls, method in patched_methods(tree):
            if method in methods.get(cls, set()): problems.append(f"{name} patches {cls}.{method} over the one its class defines")
            if (cls, method) in seen: problems.append(f"{name} patches {cls}.{method} again (first in {seen[cls, method]})")
            seen.setdefault((cls, method), name)
    return problems


def test_every_layer_names_real_modules():
    assert PAPER | SPEED_UPS | SHARED <= set(package_sources())


def test_the_package_keeps_its_layers():
    assert layer_violations(package_sources()) == []


MASKED = "import torch\nclass MaskedLinear(torch.nn.Module):\n    def forward(self, x): return x\n"


@pytest.mark.parametrize("sources, expected", [
    ({"made": "from iaf_repro.accelerate import fast\n", "accelerate": ""}, "made (paper) imports accelerate"),
    ({"made": "import importlib\nm = importlib.import_module('iaf_repro.experiments')\n", "experiments": ""}, "made (paper) imports experiments"),
    ({"accelerate": "from .bench import x\n", "bench": ""}, "accelerate (speed-ups) imports bench"),
    ({"made": "import torch\nok = torch._C._are_functorch_transforms_active()\n"}, "made (paper) uses the private torch._C"),
    ({"made": "import torch\nw = torch.ops.mkldnn._reorder_linear_weight\n"}, "made (paper) uses the private torch.ops.mkldnn"),
    ({"made": "def f(t): return t._version\n"}, "made (paper) uses the private t._version"),
    ({"made": "FAST = False\ndef on():\n    global FAST\n    FAST = True\n"}, "made (paper) declares a global"),
    ({"made": MASKED + "@patch\ndef forward(self: MaskedLinear, x): return 2 * x\n"}, "made patches MaskedLinear.forward over"),
    ({"made": MASKED + "@patch\ndef extra(self: MaskedLinear): pass\n", "iaf": "@patch\ndef extra(self: MaskedLinear): pass\n"},
     "patches MaskedLinear.extra again"),
    ({"made": MASKED, "accelerate": "from .made import MaskedLinear\nMaskedLinear.forward = lambda self, x: x\n"},
     "accelerate reassigns MaskedLinear.forward"),
])
def test_each_kind_of_violation_is_caught(sources, expected):
    assert any(expected in p for p in layer_violations(sources)), layer_violations(sources)


def test_adding_a_method_with_patch_and_the_lab_importing_anything_are_allowed():
    sources = {"made": MASKED + "@patch\ndef describe(self: MaskedLinear): return 'masked'\n",
               "bench": "from .accelerate import fast\nfrom .made import MaskedLinear\n", "accelerate": "from .made import MaskedLinear\n"}
    assert layer_violations(sources) == []
