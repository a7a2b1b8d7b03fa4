"""
The project next to the installed ecosystem: its top-level names sit first on sys.path (`python
-m pytest` and `python train.py` put the repository root there), so a file or folder named like an
installed package shadows that package for everything in the process. A `kernels/` folder did:
recent transformers import Hugging Face's `kernels` package, and `import transformers` from the
root failed ("cannot import name 'CUDAProperties' from 'kernels'"). Each check runs in a fresh
interpreter.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the project's modules that the training, evaluation and interop paths import
PROJECT_MODULES = ["train", "grpo_kernels", "evaluation", "model", "sample", "checkpoint",
                   "interop.hf", "engines.tools", "r1.pipeline", "tasks"]

# Run with cwd=root and root first on sys.path: import the project, then transformers, then build a
# tiny Llama and run a forward. Prints what it saw as one JSON line.
TRANSFORMERS_AFTER_PROJECT = r"""
import importlib, json, os, sys
root = os.path.realpath(sys.argv[1])
sys.path.insert(0, root)
for name in sys.argv[2:]:
    importlib.import_module(name)
before = set(sys.modules)
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils.import_utils import is_kernels_available
config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
torch.manual_seed(0)
model = LlamaForCausalLM(config).eval()
with torch.no_grad():
    logits = model(torch.tensor([[1, 2, 3]])).logits


def inside(module):
    path = getattr(module, "__file__", None)
    return bool(path) and os.path.realpath(path).startswith(root + os.sep)


print(json.dumps({
    "transformers": transformers.__version__,
    "kernels_available": is_kernels_available(),
    "kernels_file": getattr(sys.modules.get("kernels"), "__file__", None),
    "logits_shape": list(logits.shape),
    "finite": bool(torch.isfinite(logits).all()),
    # modules the transformers side loaded from the repository: a shadowed package
    "from_repo": sorted(n for n in set(sys.modules) - before if inside(sys.modules[n])),
}))
"""

# Run isolated (-I) from /, with the repository taken off sys.path: which of the given top-level
# names does the installed environment (stdlib and site-packages) also provide?
INSTALLED_SPECS = r"""
import importlib.util, json, os, sys
root = os.path.realpath(sys.argv[1])
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != root]


def inside(path):
    return bool(path) and os.path.realpath(path).startswith(root + os.sep)


found = {}
for name in sys.argv[2:]:
    spec = importlib.util.find_spec(name)
    if spec is None:
        continue
    places = [spec.origin] if spec.has_location else list(spec.submodule_search_locations or [])
    places = [p for p in places if p and not inside(p)]  # an editable install of this repo
    if places or spec.origin in ("built-in", "frozen"):
        found[name] = places or [spec.origin]
print(json.dumps(found))
"""


def run_python(what, args, cwd, timeout=120):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, f"{what} (a python run in {cwd}) failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def project_top_level_names(root=ROOT):
    """Every name `import NAME` finds in the repository root: *.py files and folders with an
    __init__.py (tests/ excluded: no one imports it)."""
    names = []
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry)
        if entry.endswith(".py") and os.path.isfile(path):
            names.append(entry[:-3])
        elif (os.path.isdir(path) and entry != "tests" and entry.isidentifier()
              and os.path.isfile(os.path.join(path, "__init__.py"))):
            names.append(entry)
    return names


def test_transformers_imports_and_runs_after_the_project():
    seen = run_python("importing the project, then transformers, and a tiny Llama's forward",
                      ["-c", TRANSFORMERS_AFTER_PROJECT, ROOT, *PROJECT_MODULES], cwd=ROOT)
    assert seen["logits_shape"] == [1, 3, 32] and seen["finite"], seen
    assert not seen["from_repo"], (
        f"transformers {seen['transformers']} loaded these modules from the repository instead of "
        f"the installed packages: {seen['from_repo']}; rename the project's file or folder")
    # the check only bites if transformers really imports Hugging Face's `kernels` (the package it
    # once found shadowed): it does so only for the versions it accepts
    assert seen["kernels_available"], (
        f"transformers {seen['transformers']} does not accept the installed `kernels` package (or "
        "it is missing), so this test no longer exercises it: pip install 'transformers[kernels]' "
        "(tests/requirements.txt) takes the range this transformers imports")
    assert not (seen["kernels_file"] or "").startswith(os.path.realpath(ROOT) + os.sep), seen


def test_no_project_name_shadows_an_installed_module():
    names = project_top_level_names()
    assert {"train", "evaluation", "grpo_kernels", "interop", "tasks"} <= set(names), names
    # json: a stdlib name, so that the check shows it does see the installed modules
    clashes = run_python("looking the project's names up in the installed environment",
                         ["-I", "-c", INSTALLED_SPECS, ROOT, *names, "json"], cwd="/")
    assert clashes.pop("json", None), "the check did not find the stdlib's json"
    files = set(os.listdir(ROOT))
    assert not clashes, "the project's top-level names shadow installed modules: " + "; ".join(
        f"{name}: the repository's {name + '.py' if name + '.py' in files else name + '/'}"
        f" hides the installed {places}" for name, places in clashes.items()) + (
        ". With the repository root first on sys.path, every import of these names in the process "
        "(transformers' included) gets the project's module: rename it")
