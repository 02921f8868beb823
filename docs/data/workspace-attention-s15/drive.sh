#!/bin/bash
# Drive a workspace island: for each attempt folder (apply.sh run in the step folder with $D set, SUBMIT.md, NOTES.md),
# open a step on the island's current best, apply, submit. usage: drive.sh RUN AGENT DIR...
run=$1; agent=$2; shift 2
for d in "$@"; do
  d=$(cd "$d" && pwd)
  folder=$(python3 -m avo.cli workspace open "$run" --agent "$agent" 2>&1 | tail -1)
  echo "== $(basename "$d"): $(head -1 "$d/SUBMIT.md")"
  echo "   folder $folder"
  if (cd "$folder" && D="$d" bash "$d/apply.sh"); then
    cp "$d/SUBMIT.md" "$folder/"; [ -f "$d/NOTES.md" ] && cp "$d/NOTES.md" "$folder/"
  else
    echo "the edit did not apply to the current best" > "$folder/GIVEUP.md"
  fi
  t0=$(date +%s)
  python3 -m avo.cli workspace submit "$run" "$folder" 2>&1 | tail -12
  echo "   submit took $(( $(date +%s) - t0 )) s"
done
