"""Where an onnxruntime session's memory goes: RSS growth at the end of session creation
(steady) and its peak (VmHWM) during creation and one run, under session options that switch
off one mechanism each. Prints one line.

    python bench/onnx_rss_probe.py MODEL.onnx default|noarena|noprepack|basic|noopt AUDIO.npy

noarena: enable_cpu_mem_arena=False; noprepack: session.disable_prepacking=1 (MatMul /
MatMulNBits keep their initializers as stored); basic / noopt: graph optimization level
basic / disabled (less or no constant folding). AUDIO.npy: one utterance (bench/onnx_bench.py
--workdir writes audio.npy).
"""

import sys

import numpy as np
import onnxruntime as ort


def status_kb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM reset: the imports do not count
base = status_kb("VmRSS")
o = ort.SessionOptions()
o.intra_op_num_threads = 2
mode = sys.argv[2]
if mode == "noopt":
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
elif mode == "noarena":
    o.enable_cpu_mem_arena = False
elif mode == "noprepack":
    o.add_session_config_entry("session.disable_prepacking", "1")
elif mode == "basic":
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
elif mode != "default":
    sys.exit(f"mode {mode!r} is invalid; allowed: default, noarena, noprepack, basic, noopt")
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
after_init = status_kb("VmHWM") - base
cur_init = status_kb("VmRSS") - base
audio = np.load(sys.argv[3])
s.run(None, {"audio": audio[None], "audio_lens": np.array([audio.size], np.int64)})
print(sys.argv[1].split("/")[-1], mode, "peak_init", after_init // 1024, "rss_after_init",
      cur_init // 1024, "peak_total", (status_kb("VmHWM") - base) // 1024, "MB")
