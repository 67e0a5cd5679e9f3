# Shell helpers the study recipes share (sourced; needs BIN, the venv's bin folder).

# A stage whose members all failed stops the recipe; a partly failed sweep goes on (the
# report lists the failures).
check_stage() {
  $BIN/python - "$1" <<'PY'
import json, pathlib, sys
runs = [json.loads(p.read_text()) for p in pathlib.Path(sys.argv[1]).rglob("results.json")]
failed = [r for r in runs if r.get("status") != "ok"]
print(f"   {sys.argv[1]}: {len(runs) - len(failed)} ok, {len(failed)} failed")
for r in failed:
    print(f"   failed: {r.get('overrides')}: {r.get('error')}")
sys.exit(0 if runs and len(failed) < len(runs) else 1)
PY
}

# DIR KEY=VALUE...: the folder of the first finished run under DIR whose results.json has
# every dotted KEY equal to VALUE (read as JSON when it parses, else as a string), e.g.
#   find_run runs/x/qat recipe.name=int2_asym_g32     find_run runs/x/ptq mode=float
find_run() {
  $BIN/python - "$@" <<'PY'
import json, pathlib, sys

def value(text):
    try:
        return json.loads(text)
    except ValueError:
        return text

def field(d, key):
    for k in key.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    return d

want = [(k, value(v)) for k, v in (a.split("=", 1) for a in sys.argv[2:])]
for p in sorted(pathlib.Path(sys.argv[1]).rglob("results.json")):
    r = json.loads(p.read_text())
    if r.get("status") == "ok" and all(field(r, k) == v for k, v in want):
        print(p.parent)
        break
PY
}

# FAKE_RESULTS PACKED_RESULTS [TOL]: the packed model's WER on every test set equals the
# fake-quantized model's (within TOL; default 0, exactly), or the recipe stops.
same_wer() {
  $BIN/python - "$1" "$2" "${3:-0}" <<'PY'
import json, sys
fake, packed = (json.load(open(p))["test"] for p in sys.argv[1:3])
for name in fake:
    print(f"   {name}: fake-quant WER {fake[name]['wer']:.4f}, packed {packed[name]['wer']:.4f}")
    assert abs(fake[name]["wer"] - packed[name]["wer"]) <= float(sys.argv[3]), \
        "packed and fake-quant WER differ"
PY
}

# CORPUS [DATA_DIR]: sets DATA (the Hydra data overrides, the folder quoted: paths may hold
# '=' and ','), BASELINE (the float experiment) and TITLE (the report's) of a corpus; an
# unknown corpus, or fsdd/an4 without DATA_DIR, exits 2 with what is allowed.
corpus_data() {
  case $1 in
    synthetic) DATA=(); BASELINE=float_baseline; TITLE="synthetic corpus (eSpeak NG)" ;;
    fsdd)
      [[ -n "${2:-}" ]] || { echo "CORPUS=fsdd needs DATA_DIR (make_digit_strings.py DIR)"; exit 2; }
      DATA=(data=fsdd_digits data.dir="'$(realpath "$2")'")
      BASELINE=fsdd_baseline; TITLE="FSDD digit strings (human speech)" ;;
    an4)
      [[ -n "${2:-}" ]] || { echo "CORPUS=an4 needs DATA_DIR (recipes/an4/prepare.py OUT, or ../shared/data/an4)"; exit 2; }
      DATA=(data=an4 data.dir="'$(realpath "$2")'")
      BASELINE=an4_baseline; TITLE="AN4 (CMU census, speaker-independent)" ;;
    *) echo "CORPUS=$1 is invalid; allowed: synthetic, fsdd, an4"; exit 2 ;;
  esac
}
