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
