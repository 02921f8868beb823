# On the seed: the schedule table (first idea), the pairs (round 2), then this change on top.
grep -q '_SCHEDULES' kernel.py || git apply "$D/../a1/patch.diff" || exit 1
grep -q '"pairs"' kernel.py || git apply "$D/../b2/pairs.diff" || exit 1
git apply "$D/c1.diff"
