"""Markdown tables of bench/onnx_bench.py JSON: python recipes/onnx/bench_table.py A.json ..."""

import json
import sys


def mb(x):
    return "" if x is None else f"{x / 1e6:.2f}"


def main(paths):
    for path in paths:
        d = json.load(open(path))
        audio = d.get("audio") or {}
        print(f"### size `{d['size']}` ({path})\n")
        print(f"{audio.get('utterances')} utterances ({audio.get('seconds')} s of "
              f"{audio.get('source')}), one at a time, {d['rounds']} rounds, median; "
              f"{d['threads']} threads; onnxruntime {d['onnxruntime']}, torch {d['torch']}.\n")
        print("| model | file MB | file / float32 | latency ms | latency / float32 | "
              "peak RSS growth MB | RSS / float32 | top ops (kernel time share) |")
        print("|---|---|---|---|---|---|---|---|")
        for name, m in d["models"].items():
            if name.startswith("safetensors_"):
                continue
            if "error" in m:
                print(f"| {name} | failed: {m['error'][:80]} |  |  |  |  |  |  |")
                continue
            ops = ", ".join(f"{k} {100 * v:.0f}%" for k, v in
                            list((m.get("op_time_share") or {}).items())[:4])
            print(f"| {name} | {mb(m.get('file_bytes'))} | {m.get('file_vs_onnx_float32', '')} "
                  f"| {m.get('latency_ms_median', '')} | {m.get('latency_vs_onnx_float32', '')} "
                  f"| {mb(m.get('peak_rss_growth_bytes'))} | "
                  f"{m.get('peak_rss_vs_onnx_float32', '')} | {ops} |")
        st = {k[len('safetensors_'):]: v for k, v in d["models"].items()
              if k.startswith("safetensors_")}
        print("\nsafetensors files: " + ", ".join(
            f"{k} {mb(v['file_bytes'])} MB (ONNX export {v.get('onnx_export_s')} s)"
            for k, v in st.items()))
        print("\ntargets: " + "; ".join(f"{k}: {'met' if v['met'] else 'NOT met'} "
                                       f"({ {kk: vv for kk, vv in v.items() if kk != 'met'} })"
                                       for k, v in d["targets"].items()) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
