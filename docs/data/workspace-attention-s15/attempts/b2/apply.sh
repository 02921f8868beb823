# On the seed: the schedule table first (the first idea's patch), then the pairs on top.
grep -q '_SCHEDULES' kernel.py || git apply "$D/../a1/patch.diff" || exit 1
git apply "$D/pairs.diff"
