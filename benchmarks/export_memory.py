"""Peak memory of each export target against the size of the model's float32 weights.

    python benchmarks/export_memory.py [--before DIR] [--mlp-layers 12] [--llama-layers 8]

Two models built from random weights (nothing is downloaded): an MLP of residual blocks (width 1024) and a
Llama-shaped causal LM (Hugging Face's LlamaForCausalLM, hidden 1024, vocabulary 32,000). Each command below
runs as its own process, and its peak resident memory is read from the kernel (os.wait4) when it ends:
`inspect` and `quantize --uniform w8a8` for reference, then `export` to ort-cpu (w8a8), compressed-tensors
(w4g128; the Llama's embedding, which that format does not quantize, pinned fp32) and gguf (q8_0, the Llama
only). The ratio is (peak - the interpreter with torch, transformers and
mixprec imported, measured the same way) / float32 weight bytes. ``--before DIR`` runs every command a second
time with the mixprec of another checkout (its ``src`` first on PYTHONPATH), for a before/after comparison on
the same models. Writes benchmarks/results/export_memory.json and .md.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from run import RESULTS, save_result  # noqa: E402

from mixprec import __version__  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

SPEC = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(*[Block(1024) for _ in range({mlp_layers})], nn.Linear(1024, 10)).eval()


def mlp_data():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 1024, generator=g) for _ in range(4)]


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                         num_hidden_layers={llama_layers}, num_attention_heads=16, num_key_value_heads=4,
                         max_position_embeddings=256, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def llama_data():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 32000, (2, 32), generator=g) for _ in range(2)]
'''

COMMANDS = {  # label -> (model, arguments after the model and data specs)
    "mlp: inspect": ("mlp", ["inspect", "--candidates", "w8a8"]),
    "mlp: quantize --uniform w8a8": ("mlp", ["quantize", "--uniform", "w8a8", "--out", "{tmp}/q"]),
    "mlp: export ort-cpu w8a8": ("mlp", ["export", "--uniform", "w8a8", "--target", "ort-cpu",
                                         "--out", "{tmp}/m.onnx"]),
    "mlp: export compressed-tensors w4g128": ("mlp", ["export", "--uniform", "w4g128", "--target",
                                                      "compressed-tensors", "--out", "{tmp}/ct"]),
    "llama: inspect": ("llama", ["inspect", "--candidates", "w8"]),
    "llama: export gguf q8_0": ("llama", ["export", "--uniform", "q8_0", "--target", "gguf",
                                          "--out", "{tmp}/l.gguf"]),
    "llama: export compressed-tensors w4g128": ("llama", ["export", "--uniform", "w4g128", "--pin",
                                                          "model.embed_tokens=fp32", "--target",
                                                          "compressed-tensors", "--out", "{tmp}/lct"]),
}


def peak_of(command: list[str], env: dict) -> tuple[float, float, int]:
    """(peak resident MB, seconds, exit status) of ``command`` run as a child process."""
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        print(child.stderr.read().decode()[-2000:], file=sys.stderr)
    return usage.ru_maxrss / 1024, time.perf_counter() - start, child.returncode


def weight_mb(spec: Path, name: str, env: dict) -> float:
    code = (f"import sys; sys.path.insert(0, {str(spec.parent)!r}); import models; "
            f"m = models.{name}(); print(sum(p.numel() * 4 for p in m.parameters()) / 2**20)")
    return float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)


def run(args) -> dict:
    versions = {"current": REPO / "src"}
    if args.before:
        versions = {"before": Path(args.before).resolve() / "src", **versions}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "models.py"
        spec.write_text(SPEC.replace("{mlp_layers}", str(args.mlp_layers))
                        .replace("{llama_layers}", str(args.llama_layers)))
        weights = {m: weight_mb(spec, m, dict(os.environ)) for m in ("mlp", "llama")}
        for version, src in versions.items():
            env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                   "MIXPREC_THREADS": str(args.threads)}
            entry = [sys.executable, "-c", "import sys; from mixprec.cli import main; sys.exit(main())"]
            base, _, _ = peak_of([sys.executable, "-c", "import torch, transformers, mixprec, mixprec.cli"], env)
            for label, (model, words) in COMMANDS.items():
                words = [w.replace("{tmp}", f"{tmp}/{version}") for w in words]
                command = entry + [words[0], "--model", f"{spec}:{model}", "--data", f"{spec}:{model}_data",
                                   *words[1:]]
                for repeat in range(args.repeats):  # the peak varies from run to run with the allocator's timing
                    peak, seconds, status = peak_of(command, env)
                    rows.append({"version": version, "command": label, "model": model, "repeat": repeat,
                                 "weights_mb": weights[model], "interpreter_mb": base, "peak_mb": peak,
                                 "seconds": seconds, "status": status, "ratio": (peak - base) / weights[model]})
                    print(f"{version:8s} {label:42s} peak {peak:7.0f} MB ({rows[-1]['ratio']:.2f}x the float32 "
                          f"weights above the interpreter's {base:.0f} MB), {seconds:.1f} s, status {status}",
                          flush=True)
    return {"rows": rows, "weights_mb": weights, "threads": args.threads, "repeats": args.repeats,
            "command": "python benchmarks/export_memory.py " + shlex.join(sys.argv[1:]),
            "environment": {"mixprec": __version__, "python": platform.python_version(),
                            "cpu": platform.processor() or platform.machine(),
                            "before": (args.before_label or str(args.before)) if args.before else None}}


def markdown(r: dict) -> str:
    lines = ["## Peak memory of export", "",
             "Each command its own process; peak resident memory from the kernel when it ends. Ratio: (peak - the "
             "interpreter with torch, transformers and mixprec imported) / the model's float32 weight bytes "
             f"(MLP {r['weights_mb']['mlp']:.0f} MiB, Llama-shaped LM {r['weights_mb']['llama']:.0f} MiB, random "
             "weights)."
             + (f" `before`: the same commands with the mixprec of {r['environment']['before']}." if
                r["environment"].get("before") else "")
             + (f" Each command ran {r['repeats']} times: the ratios of the runs, lowest first (the peak varies "
                "from run to run with the memory allocator's timing)." if r.get("repeats", 1) > 1 else ""), "",
             "| command | " + " | ".join(f"{v}: peak ratio of each run" for v in
                                       dict.fromkeys(x["version"] for x in r["rows"]))
             + " |", "|---|" + "---|" * len({x["version"] for x in r["rows"]})]
    for command in dict.fromkeys(x["command"] for x in r["rows"]):
        cells = []
        for version in dict.fromkeys(x["version"] for x in r["rows"]):
            runs = sorted((x for x in r["rows"] if x["command"] == command and x["version"] == version),
                          key=lambda x: x["ratio"])
            failed = [x["status"] for x in runs if x["status"] != 0]
            cells.append(", ".join(f"{x['ratio']:.2f}x" for x in runs) + f" ({runs[-1]['peak_mb']:.0f} MB at most)"
                         + (f", FAILED (status {failed[0]})" if failed else ""))
        lines.append(f"| {command} | " + " | ".join(cells) + " |")
    lines += ["", f"`{r['command']}` ({r['threads']} threads, {r['environment']['cpu']})"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="another checkout of mixprec, measured the same way beside this one")
    parser.add_argument("--before-label", help="what the --before checkout is (e.g. its commit), for the table")
    parser.add_argument("--mlp-layers", type=int, default=12)
    parser.add_argument("--llama-layers", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each command (default 2)")
    args = parser.parse_args()
    result = run(args)
    RESULTS.mkdir(exist_ok=True)
    save_result(RESULTS / "export_memory", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
